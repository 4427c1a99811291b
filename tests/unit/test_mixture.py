"""Weighted mixtures: the source schedule, the sampler, the datamodule's batches, and one-source equivalence."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines import TINY_SHAKESPEARE
from data_pipelines.config import DataConfig, SourceConfig, TokenizerConfig
from data_pipelines.datamodule import CausalLMDataModule
from data_pipelines.datasets import BlockDataset
from data_pipelines.errors import DataError
from data_pipelines.mixture import MixtureBlockSampler, SourceSchedule
from data_pipelines.prepare import prepare, prepare_sources
from data_pipelines.sampling import RandomBlockSampler

CHAR = TokenizerConfig(kind="char")


def _take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_one_source_of_weight_one_is_the_plain_block_sampler():
    for rank, world, start in ((0, 1, 0), (1, 3, 7)):
        plain = _take(RandomBlockSampler(50_000, 32, 6, seed=5, rank=rank, world_size=world, start_batch=start), 25)
        mixed = _take(MixtureBlockSampler([50_000], 32, 6, 5, [1.0], rank, world, start), 25)
        assert [offsets for _, offsets in mixed] == plain
        assert all(sources == [0] * 6 for sources, _ in mixed)


def test_source_shares_follow_the_weights_over_any_stretch_of_the_stream():
    weights = [5.0, 3.0, 1.5, 0.5]
    schedule = SourceSchedule(weights, seed=11)
    share = np.asarray(weights) / sum(weights)
    for start, length in ((0, 10_000), (123_457, 2_000), (10**12, 5_000)):  # late keys too: exact integer arithmetic
        counts = np.bincount(schedule.sources(np.arange(start, start + length, dtype=np.uint64)), minlength=4)
        assert np.abs(counts - share * length).max() <= 4, (start, counts, share * length)
    # counts() agrees with enumerating the keys one batch at a time through the sampler
    sampler = MixtureBlockSampler([10_000] * 4, 16, 7, 11, weights, rank=0, world_size=3)
    drawn = np.zeros(4, dtype=np.int64)
    for b in range(40):
        drawn += np.bincount(sampler.global_batch(b)[0], minlength=4)
    assert drawn.tolist() == schedule.counts(40 * 7 * 3).tolist()


def test_zero_weight_sources_are_never_drawn_and_bad_weights_are_refused():
    sources, _ = MixtureBlockSampler([1000, 1000, 1000], 8, 64, 0, [1.0, 0.0, 2.0]).global_batch(3)
    assert set(sources.tolist()) == {0, 2}
    for bad in ([0.0, 0.0], [1.0, -1.0], []):
        with pytest.raises(ValueError, match="weights"):
            SourceSchedule(bad, seed=0)


def test_ranks_split_the_global_batch_and_resume_continues_it():
    args = ([20_000, 9_000], 16, 4)
    single = _take(MixtureBlockSampler(*args[:2], 4 * 3, 9, [2.0, 1.0]), 12)
    ranks = [_take(MixtureBlockSampler(*args, 9, [2.0, 1.0], rank=r, world_size=3), 12) for r in range(3)]
    for step in range(12):
        assert sum((ranks[r][step][0] for r in range(3)), []) == single[step][0]
        assert sum((ranks[r][step][1] for r in range(3)), []) == single[step][1]
    resumed = _take(MixtureBlockSampler(*args, 9, [2.0, 1.0], rank=2, world_size=3, start_batch=5), 7)
    assert resumed == ranks[2][5:]


def _letters_corpus(path, letters: str, n_lines: int, seed: int):
    """Lines drawn from `letters` only, so a character token tells which corpus it came from."""
    rng = np.random.default_rng(seed)
    alphabet = np.array(list(letters))
    lines = ["".join(rng.choice(alphabet, size=40)) for _ in range(n_lines)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_training_tokens_per_source_follow_the_weights_and_epochs_are_counted(tmp_path):
    a = _letters_corpus(tmp_path / "a.txt", "abcdefghij", 800, 1)
    b = _letters_corpus(tmp_path / "b.txt", "klmnopqrst", 300, 2)
    data = DataConfig(sources=[SourceConfig(name="a", path=str(a), weight=3.0),
                               SourceConfig(name="b", path=str(b), weight=1.0)],
                      cache_dir=str(tmp_path / "cache"), num_proc=1)
    tok, sources = prepare_sources(data, CHAR)
    dm = CausalLMDataModule(sources, block_size=16, batch_size=8, seed=3, eval_batches=2)
    letters_a, letters_b = tok.encode("abcdefghij"), tok.encode("klmnopqrst")
    counts = {"a": 0, "b": 0}
    steps = 400
    for _, (x, _y) in zip(range(steps), dm.train_dataloader(), strict=False):
        has_a, has_b = np.isin(x.numpy(), letters_a).any(1), np.isin(x.numpy(), letters_b).any(1)
        assert not (has_a & has_b).any() and (has_a | has_b).all()  # a block comes from one source
        counts["a"] += int(has_a.sum()) * 16
        counts["b"] += int(has_b.sum()) * 16
    total = steps * 8 * 16
    assert counts["a"] + counts["b"] == total
    assert counts["a"] / total == pytest.approx(0.75, abs=0.005)
    summary = dm.source_summary(steps)
    assert {name: summary[name]["tokens"] for name in counts} == counts  # the summary counts what was drawn
    for name in ("a", "b"):
        expected = summary[name]["tokens"] / sources[[s.name for s in sources].index(name)].data.num_tokens("train")
        assert summary[name]["epochs"] == pytest.approx(expected)
    assert summary["b"]["epochs"] > 1.0  # the small source repeats
    # changing a weight re-tokenizes nothing: the same prepared dirs
    data.sources[1].weight = 5.0
    _, again = prepare_sources(data, CHAR)
    assert [s.data.directory for s in again] == [s.data.directory for s in sources]
    # validation: batches of one source each, tagged with it, every source evaluated
    tags = [int(batch[2][0]) for batch in dm.val_dataloader()]
    assert sorted(set(tags)) == [0, 1] and all(len(set(batch[2].tolist())) == 1 for batch in dm.val_dataloader())


def test_one_source_gives_the_tokens_of_data_path(tmp_path):
    cache = str(tmp_path / "cache")
    tok_a, by_path = prepare(DataConfig(path=str(TINY_SHAKESPEARE), cache_dir=cache), CHAR)
    tok_b, [source] = prepare_sources(DataConfig(
        sources=[SourceConfig(name="shakespeare", path=str(TINY_SHAKESPEARE))], cache_dir=cache), CHAR)
    assert tok_a.fingerprint == tok_b.fingerprint and source.data.directory == by_path.directory
    dm = CausalLMDataModule([source], block_size=32, batch_size=4, seed=1337)
    # the reference: the single-corpus sampler and dataset (nanoGPT's get_batch)
    reference = BlockDataset(by_path.tokens("train"), 32)
    expected = [reference[o] for o in _take(RandomBlockSampler(by_path.num_tokens("train"), 32, 4, seed=1337), 10)]
    for (x, y), (ex, ey) in zip(dm.train_dataloader(), expected, strict=False):
        assert x.equal(ex) and y.equal(ey)


def test_config_rejects_bad_mixtures_naming_the_source():
    a, b = SourceConfig(name="web", path="x"), SourceConfig(name="web", path="y")
    with pytest.raises(ValueError, match="'web' appears more than once"):
        DataConfig(sources=[a, b])
    with pytest.raises(ValueError, match=r"data.sources\[books\].weight must be >= 0"):
        DataConfig(sources=[SourceConfig(name="books", path="x", weight=-1.0)])
    with pytest.raises(ValueError, match="all zero"):
        DataConfig(sources=[SourceConfig(name="a", path="x", weight=0.0), SourceConfig(name="b", path="y", weight=0)])
    with pytest.raises(ValueError, match="not both"):
        DataConfig(path="z", sources=[SourceConfig(name="a", path="x")])
    with pytest.raises(DataError, match="data.path is not set"):
        DataConfig().resolved_sources()


def test_a_missing_text_column_names_its_source(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(f'{{"text": "line {i}"}}\n' for i in range(20)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(f'{{"body": "line {i}"}}\n' for i in range(20)))
    data = DataConfig(sources=[SourceConfig(name="good", path=str(good)), SourceConfig(name="forum", path=str(bad))],
                      cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"data source 'forum': .*no column 'text'"):
        prepare_sources(data, CHAR)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.bin"))


def test_a_split_on_a_local_source_is_refused_naming_it(tmp_path, small_corpus):
    data = DataConfig(sources=[SourceConfig(name="books", path=str(small_corpus), split="validation")],
                      cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"data source 'books': split='validation' applies to hub datasets"):
        prepare_sources(data, CHAR)
    assert not (tmp_path / "cache").exists()
