import json
import os

import numpy as np
import pytest

from data_pipelines import sources
from data_pipelines.config import DataConfig, TokenizerConfig
from data_pipelines.errors import DataError, TokenizerError
from data_pipelines.prepare import prepare

CHAR = TokenizerConfig(kind="char")
SPM = TokenizerConfig(kind="sentencepiece", vocab_size=400)


def _cfg(path, cache, **kw) -> DataConfig:
    return DataConfig(path=str(path), cache_dir=str(cache), num_proc=1, **kw)


def test_single_file_contiguous_split_matches_nanogpt(shakespeare_text, cache_dir):
    from data_pipelines import TINY_SHAKESPEARE

    tok, data = prepare(_cfg(TINY_SHAKESPEARE, cache_dir), CHAR)
    n = len(shakespeare_text)
    assert data.index["num_tokens"] == {"train": int(n * 0.9), "val": n - int(n * 0.9)}
    assert data.dtype == np.uint16
    assert tok.decode(data.tokens("train")[:2000].tolist()) == shakespeare_text[:2000]
    assert tok.decode(data.tokens("val").tolist()) == shakespeare_text[int(n * 0.9) :]
    idx = data.index
    assert idx["tokenizer"]["fingerprint"] == tok.fingerprint and idx["tokenizer"]["kind"] == "char"
    assert len(idx["source"]["fingerprint"]) == 64 and idx["split"] == {"val_fraction": 0.1, "seed": 1337}


def test_cache_hit_then_rebuild_on_changed_input(small_corpus, tmp_path):
    cache = tmp_path / "cache"
    tok1, d1 = prepare(_cfg(small_corpus, cache), SPM)
    bin_mtime = os.stat(d1.directory / "train.bin").st_mtime_ns
    tok2, d2 = prepare(_cfg(small_corpus, cache), SPM)
    assert d2.directory == d1.directory and tok2.fingerprint == tok1.fingerprint
    assert os.stat(d2.directory / "train.bin").st_mtime_ns == bin_mtime  # reused, not rewritten
    small_corpus.write_text(small_corpus.read_text() + "\nA new line of verse.\n")
    _, d3 = prepare(_cfg(small_corpus, cache), SPM)
    assert d3.directory != d1.directory
    _, d4 = prepare(_cfg(small_corpus, cache, val_fraction=0.2), SPM)  # split settings are in the key too
    assert d4.directory not in (d1.directory, d3.directory)
    assert not list(cache.rglob("*.tmp-*"))  # nothing half-written left behind


def test_parallel_tokenization_equals_serial_and_whole_text(shakespeare_text, tmp_path, monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_text(shakespeare_text[:200_000])
    monkeypatch.setattr(sources, "TEXT_CHUNK_CHARS", 7_000)  # many chunks, cut at line ends
    tok, serial = prepare(_cfg(path, tmp_path / "a"), SPM)
    _, parallel = prepare(DataConfig(path=str(path), cache_dir=str(tmp_path / "b"), num_proc=2), SPM, tokenizer=tok)
    for split in ("train", "val"):
        assert np.array_equal(serial.tokens(split), parallel.tokens(split))
    cut = int(200_000 * 0.9)
    assert serial.tokens("train").tolist() == tok.encode(shakespeare_text[:cut])


def test_directory_of_documents_splits_by_document_with_eos(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(20):
        (docs / f"doc{i:02d}.txt").write_text(f"document number {i}\n" * 5)
    (docs / ".hidden").write_text("ignored")
    tok, data = prepare(_cfg(docs, tmp_path / "c"), CHAR)
    assert tok.eos_id is not None
    nd = data.index["num_documents"]
    assert nd["train"] + nd["val"] == 20 and nd["val"] >= 1
    for split in ("train", "val"):
        ids = data.tokens(split).tolist()
        assert ids.count(tok.eos_id) == nd[split] and ids[-1] == tok.eos_id
        texts = tok.decode(ids).split("<|endoftext|>")[:-1]
        assert all(t.startswith("document number") for t in texts)
    train_docs = set(tok.decode(data.tokens("train").tolist()).split("<|endoftext|>"))
    val_docs = set(tok.decode(data.tokens("val").tolist()).split("<|endoftext|>"))
    assert train_docs & val_docs == {""}  # no document in both splits


def test_glob_selects_the_same_documents_as_their_directory(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(12):
        (docs / f"doc{i:02d}.txt").write_text(f"verse {i}\n" * 4)
    (docs / "notes.md").write_text("not part of the glob\n")
    _, by_glob = prepare(_cfg(docs / "doc*.txt", tmp_path / "c"), CHAR)
    assert by_glob.index["source"]["num_documents"] == 12
    (docs / "notes.md").unlink()
    _, by_dir = prepare(_cfg(docs, tmp_path / "c"), CHAR)
    assert by_dir.index["source"]["fingerprint"] == by_glob.index["source"]["fingerprint"]
    assert by_dir.directory == by_glob.directory  # same content, same cache entry


def test_jsonl_csv_and_saved_dataset_sources(tmp_path):
    rows = [{"text": f"row {i}: to be or not to be", "id": i} for i in range(30)]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    _, d_json = prepare(_cfg(jsonl, tmp_path / "c1"), CHAR)
    assert d_json.index["source"]["format"] == "json" and d_json.index["source"]["num_documents"] == 30

    csv = tmp_path / "d.csv"
    csv.write_text("body,id\n" + "\n".join(f"\"row {i}, to be\",{i}" for i in range(30)))
    tok, d_csv = prepare(_cfg(csv, tmp_path / "c2", text_column="body"), CHAR)
    assert "row" in tok.decode(d_csv.tokens("train").tolist())

    import datasets

    parquet = tmp_path / "d.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    _, d_parquet = prepare(_cfg(parquet, tmp_path / "c4"), CHAR)
    assert d_parquet.index["source"]["format"] == "parquet"
    assert d_parquet.index["num_tokens"] == d_json.index["num_tokens"]

    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    _, d_arrow = prepare(_cfg(saved, tmp_path / "c3"), CHAR)
    assert d_arrow.index["source"]["format"] == "arrow"
    assert d_arrow.index["num_tokens"] == d_json.index["num_tokens"]


def _assert_nothing_written(cache):
    assert not (cache / "datasets").exists() or not any((cache / "datasets").iterdir())


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"no such file or directory: .*nope\.txt"):
        prepare(_cfg(tmp_path / "nope.txt", tmp_path / "c"), CHAR)
    with pytest.raises(DataError, match="matches no files"):
        prepare(_cfg(tmp_path / "*.txt", tmp_path / "c"), CHAR)
    _assert_nothing_written(tmp_path / "c")


def test_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match=r"empty\.txt is empty"):
        prepare(_cfg(tmp_path / "empty.txt", tmp_path / "c"), CHAR)
    _assert_nothing_written(tmp_path / "c")


def test_non_utf8_bytes_are_a_clear_error_naming_the_path(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"good text\n" * 100 + "café".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt is not UTF-8 text: invalid byte 0xe9 at byte offset 1003"):
        prepare(_cfg(bad, tmp_path / "c"), CHAR)
    _assert_nothing_written(tmp_path / "c")


def test_missing_text_column_is_a_clear_error(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": f"row {i}"}) for i in range(5)))
    with pytest.raises(DataError, match=r"no column 'text' \(columns: \['body'\]\)"):
        prepare(_cfg(jsonl, tmp_path / "c"), CHAR)


def test_tokenizer_kind_mismatch_with_path(tmp_path, small_corpus):
    tok, _ = prepare(_cfg(small_corpus, tmp_path / "c"), CHAR)
    tok.save(tmp_path / "tok")
    with pytest.raises(TokenizerError, match="holds a char tokenizer but tokenizer.kind=sentencepiece"):
        prepare(_cfg(small_corpus, tmp_path / "c"), TokenizerConfig(kind="sentencepiece", path=str(tmp_path / "tok")))


def test_documents_start_with_bos_where_the_tokenizer_model_expects_it(tmp_path):
    """An imported Llama-3-style tokenizer (BOS by its post-processor): each document after the first starts with
    BOS, as the model read its pretraining documents; the token stream is otherwise the plain encoding."""
    from data_pipelines.tokenizers import load_tokenizer
    from tests.unit.test_llama_tokenizers import byte_level_dir

    tok = load_tokenizer(byte_level_dir(tmp_path / "tok", bos_template=True, config={}))
    assert tok.add_bos and tok.eos_id is not None
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"doc{i}.txt").write_text(f"Hello world number {i}.\n")
    _, data = prepare(_cfg(docs, tmp_path / "c"), TokenizerConfig(path=str(tmp_path / "tok")), tok)
    ids = data.tokens("train").tolist()
    ends = [i for i, t in enumerate(ids) if t == tok.eos_id]
    assert ends and all(ids[i + 1] == tok.bos_id for i in ends if i + 1 < len(ids))
    first_doc = ids[: ends[0]]
    assert tok.bos_id not in first_doc and tok.decode(first_doc).startswith("Hello world number")
