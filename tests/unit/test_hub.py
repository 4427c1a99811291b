"""hf:// sources: a dataset repository layout (parquet files + a README with `configs:`) loaded through `datasets`,
mapped from its hub name with GPTFRAME_HF_LOCAL_REPOS, since these machines have no internet."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from data_pipelines.config import DataConfig, SourceConfig, TokenizerConfig
from data_pipelines.errors import DataError
from data_pipelines.hub import LOCAL_REPOS_ENV, HubDataset
from data_pipelines.prepare import prepare, prepare_sources
from data_pipelines.sources import open_corpus
from tests.conftest import BIN, REPO

CHAR = TokenizerConfig(kind="char")
README = """---
configs:
- config_name: en
  data_files:
  - split: train
    path: data/en/train-*.parquet
  - split: validation
    path: data/en/validation-*.parquet
  default: true
- config_name: fr
  data_files:
  - split: train
    path: data/fr/*.parquet
---
# A demo corpus
"""


def _rows(shakespeare_text: str, start: int, n: int) -> list[str]:
    lines = [line for line in shakespeare_text.splitlines() if line.strip()]
    return [" ".join(lines[i : i + 5]) for i in range(start, start + 5 * n, 5)]


@pytest.fixture()
def hub_repos(tmp_path, shakespeare_text, monkeypatch):
    """<root>/acme/corpus: two parquet shards of `en` train rows, a validation split, and a second config."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    repo = tmp_path / "repos" / "acme" / "corpus"
    (repo / "data" / "en").mkdir(parents=True)
    (repo / "data" / "fr").mkdir(parents=True)
    rows = _rows(shakespeare_text, 0, 400)
    pq.write_table(pa.table({"content": rows[:250], "id": list(range(250))}), repo / "data/en/train-00000.parquet")
    pq.write_table(pa.table({"content": rows[250:], "id": list(range(250, 400))}), repo / "data/en/train-00001.parquet")
    pq.write_table(pa.table({"content": _rows(shakespeare_text, 3000, 20)}), repo / "data/en/validation-00000.parquet")
    pq.write_table(pa.table({"content": _rows(shakespeare_text, 4000, 30)}), repo / "data/fr/train-00000.parquet")
    (repo / "README.md").write_text(README)
    monkeypatch.setenv(LOCAL_REPOS_ENV, str(tmp_path / "repos"))
    return repo, rows


def test_hub_name_reads_the_config_split_and_column_like_the_same_rows_in_jsonl(hub_repos, tmp_path):
    repo, rows = hub_repos
    jsonl = tmp_path / "same.jsonl"
    jsonl.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    tok, reference = prepare(DataConfig(path=str(jsonl), cache_dir=str(tmp_path / "c1"), num_proc=1), CHAR)
    hub = DataConfig(path="hf://acme/corpus/en", text_column="content", streaming=True, cache_dir=str(tmp_path / "c2"),
                     num_proc=1)
    _, prepared = prepare(hub, CHAR, tok)
    for split in ("train", "val"):
        assert prepared.tokens(split).tobytes() == reference.tokens(split).tobytes()
    assert prepared.index["source"]["format"] == "hf" and prepared.index["num_documents"]["train"] > 300


def test_arrow_cached_and_streamed_loads_agree(hub_repos, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))  # the Arrow copy stays in the test's tmp dir
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    streamed = open_corpus("hf://acme/corpus/en", text_column="content", streaming=True)
    cached = open_corpus("hf://acme/corpus/en", text_column="content", streaming=False)
    assert streamed.num_documents == cached.num_documents == 400
    assert streamed.fingerprint == cached.fingerprint  # from the resolved files, not from how they are read
    split = streamed.split(0.1, 1)
    assert list(streamed.pieces(split["val"])) == list(cached.pieces(split["val"]))
    other_split = open_corpus("hf://acme/corpus/en", text_column="content", split="validation", streaming=True)
    assert other_split.num_documents == 20 and other_split.fingerprint != streamed.fingerprint


def test_fingerprint_follows_the_files_without_reading_rows(hub_repos, monkeypatch):
    repo, _ = hub_repos
    ref = HubDataset.parse("hf://acme/corpus/en", "train")
    first = ref.fingerprint("content")
    import data_pipelines.sources as sources

    monkeypatch.setattr(sources, "_iter_rows", lambda corpus: pytest.fail("the fingerprint read the rows"))
    assert ref.fingerprint("content") == first  # stable, and no row was read for it
    assert HubDataset.parse("hf://acme/corpus/fr", "train").fingerprint("content") != first
    shard = repo / "data/en/train-00001.parquet"
    shard.write_bytes(shard.read_bytes() + b"")  # rewritten: a new modification time
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    assert ref.fingerprint("content") != first


def test_hub_names_parse_owner_name_config_and_revision(monkeypatch):
    monkeypatch.delenv(LOCAL_REPOS_ENV, raising=False)
    ref = HubDataset.parse("hf://HuggingFaceFW/fineweb-edu/sample-10BT@v1.2.0", "train")
    assert (ref.repo, ref.config, ref.revision, ref.location) == ("HuggingFaceFW/fineweb-edu", "sample-10BT", "v1.2.0",
                                                                 "HuggingFaceFW/fineweb-edu")
    assert HubDataset.parse("hf://roneneldan/TinyStories", "validation").config is None
    with pytest.raises(DataError, match="expected hf://<owner>/<name>"):
        HubDataset.parse("hf://just-a-name", "train")


def test_a_missing_split_column_or_config_is_one_error_naming_the_source(hub_repos, tmp_path):
    cache = tmp_path / "cache"

    def data(**kw):
        source = {"name": "web", "path": "hf://acme/corpus/en", "text_column": "content", "streaming": True, **kw}
        return DataConfig(sources=[SourceConfig(**source)], cache_dir=str(cache))

    with pytest.raises(DataError, match=r"data source 'web': hf://acme/corpus/en .*no split 'test' \(available"):
        prepare_sources(data(split="test"), CHAR)
    with pytest.raises(DataError, match=r"data source 'web': .*no column 'text'"):
        prepare_sources(data(text_column="text"), CHAR)
    with pytest.raises(DataError, match=r"data source 'web': cannot resolve hf://acme/corpus/de.*'de' not found"):
        prepare_sources(data(path="hf://acme/corpus/de"), CHAR)
    assert not cache.exists()  # nothing written


def _prepare_cli(tmp_path, *overrides, env_extra=None):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", **(env_extra or {})}
    return subprocess.run([str(BIN / "gptframe-prepare"), "tokenizer=char", f"data.cache_dir={tmp_path / 'cache'}",
                           *overrides], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


def test_offline_cli_prepares_a_local_repository_and_rejects_an_unknown_hub_name(hub_repos, tmp_path):
    ok = _prepare_cli(tmp_path, "data.path=hf://acme/corpus/en", "data.text_column=content")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert json.loads(ok.stdout)["source"]["format"] == "hf"
    missing = _prepare_cli(tmp_path, "data.sources=[{name: web, path: 'hf://nobody/not-cached'}]", "data.path=null")
    assert missing.returncode == 2, missing.stderr[-3000:]
    err = missing.stderr.strip().splitlines()[-1]
    assert err.startswith("gptframe-prepare: error: data source 'web': cannot resolve hf://nobody/not-cached offline")


@pytest.mark.slow
def test_offline_with_a_populated_cache_needs_no_local_repository(hub_repos, tmp_path):
    """What a connected machine leaves behind: `datasets`' Arrow cache of acme/corpus (here written from the local
    repository, under the folder name datasets gives a hub dataset, `acme___corpus`). Offline, with no mapping to the
    repository, hf://acme/corpus/en loads from that cache alone and gives the same tokens."""
    import datasets

    repo, _ = hub_repos
    cache = tmp_path / "hf_datasets"
    datasets.load_dataset(str(repo), "en", split="train", cache_dir=str(cache))
    (cache / repo.name).rename(cache / "acme___corpus")
    args = ["data.path=hf://acme/corpus/en", "data.text_column=content"]
    env = {"HF_DATASETS_CACHE": str(cache), LOCAL_REPOS_ENV: str(tmp_path / "nowhere")}
    res = _prepare_cli(tmp_path, *args, env_extra=env)
    assert res.returncode == 0, res.stderr[-3000:]
    offline = json.loads(res.stdout)
    online = _prepare_cli(tmp_path / "online", *args, env_extra={"HF_DATASETS_CACHE": str(tmp_path / "other")})
    assert online.returncode == 0, online.stderr[-3000:]
    reference = json.loads(online.stdout)
    assert offline["num_tokens"] == reference["num_tokens"] and offline["num_documents"]["train"] > 300
    for split in ("train", "val"):
        assert (Path(offline["data"]) / f"{split}.bin").read_bytes() == (Path(reference["data"]) / f"{split}.bin").read_bytes()
