"""Prepare once: sources -> tokenizer -> train.bin / val.bin + index.json, cached by content hash.

The cache key covers the source bytes, the split settings and the tokenizer, so a second run reuses the shards and any
change rebuilds them. Results are written to a temporary dir and renamed into place under a file lock, so concurrent
ranks never see (or leave) half-written data.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from data_pipelines.config import DataConfig, TokenizerConfig
from data_pipelines.errors import DataError, TokenizerError
from data_pipelines.sources import TEXT_CHUNK_CHARS, Corpus, Split, open_corpus
from data_pipelines.tokenizers import (
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    WordPieceTokenizer,
    load_tokenizer,
    tokenizer_from_files,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WORK_UNIT_RULE = 2  # bump when how pieces group into work units changes: shards of an older rule are never resumed
INDEX_FILE = "index.json"
SPLITS = ("train", "val")


@dataclass
class PreparedData:
    """Token shards of one prepared dataset: `<split>.bin` (flat token ids) described by `index.json`."""

    directory: Path
    index: dict

    @classmethod
    def load(cls, directory: str | Path) -> PreparedData:
        directory = Path(directory)
        return cls(directory, json.loads((directory / INDEX_FILE).read_text()))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.index["dtype"])

    def num_tokens(self, split: str) -> int:
        return self.index["num_tokens"][split]

    def tokens(self, split: str) -> np.memmap:
        return np.memmap(self.directory / f"{split}.bin", dtype=self.dtype, mode="r")

    def damage(self) -> str | None:
        """What is wrong with the files on disk (a truncated or grown split), or None if their sizes match the index."""
        for split in SPLITS:
            path = self.directory / f"{split}.bin"
            expected = self.num_tokens(split) * self.dtype.itemsize
            size = path.stat().st_size if path.exists() else None
            if size != expected:
                return f"{path} holds {size if size is not None else 'no'} bytes, its index says {expected}"
        return None


@dataclass
class PreparedSource:
    """One source of a mixture, prepared: its name and weight from the config, its token shards from the cache."""

    name: str
    weight: float
    data: PreparedData
    description: str


def cache_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def resolve_num_proc(num_proc: int) -> int:
    return num_proc if num_proc > 0 else max(1, min(8, os.cpu_count() or 1))


def prepare(
    data: DataConfig, tokenizer_cfg: TokenizerConfig, tokenizer: Tokenizer | None = None
) -> tuple[Tokenizer, PreparedData]:
    """One corpus (data.path, or data.sources with one source): the tokenizer and its prepared token shards."""
    tokenizer, sources = prepare_sources(data, tokenizer_cfg, tokenizer)
    if len(sources) != 1:
        raise DataError(f"this needs one corpus, data.sources has {len(sources)}: {[s.name for s in sources]}")
    return tokenizer, sources[0].data


def prepare_sources(
    data: DataConfig,
    tokenizer_cfg: TokenizerConfig,
    tokenizer: Tokenizer | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[Tokenizer, list[PreparedSource] | None]:
    """Validate every source, build (or reuse) one tokenizer over all of them, and prepare (or reuse) each source's
    token shards, each cached by its own content hash, so a weight change re-tokenizes nothing.

    rank/world_size > 1 (gptframe-prepare over a SLURM job, an array or torchrun): this process tokenizes only its
    share of the shards; the rank that finishes last writes the indexes. Returns None for the sources when another
    rank is still working (the prepared data is complete once every rank has returned)."""
    configs = data.resolved_sources()
    corpora = [_open_source(src) for src in configs]
    split_settings = {"val_fraction": data.val_fraction, "seed": data.split_seed}
    splits = [corpus.split(data.val_fraction, data.split_seed) for corpus in corpora]
    cache_dir = Path(os.path.expanduser(data.cache_dir)).resolve()
    if tokenizer is None:
        tokenizer = build_tokenizer(tokenizer_cfg, corpora, splits, cache_dir, split_settings)
    num_proc = resolve_num_proc(data.num_proc)
    prepared = [
        prepare_dataset(corpus, split, tokenizer, cache_dir, num_proc, split_settings, rank, world_size,
                        data.shard_units)
        for corpus, split in zip(corpora, splits, strict=True)
    ]
    if any(p is None for p in prepared):
        return tokenizer, None
    return tokenizer, [
        PreparedSource(src.name, src.weight, p, corpus.description) for src, p, corpus in zip(configs, prepared, corpora, strict=True)
    ]


def _open_source(src) -> Corpus:
    """Open and validate one source; errors name it, so a mixture says which of its sources is wrong."""
    try:
        return open_corpus(src.path, src.format, src.text_column, src.split, src.streaming)
    except DataError as e:
        raise DataError(f"data source {src.name!r}: {e}") from None


def build_tokenizer(
    cfg: TokenizerConfig,
    corpora: Corpus | list[Corpus],
    splits: dict[str, Split] | list[dict[str, Split]],
    cache_dir: Path,
    split_settings: dict,
) -> Tokenizer:
    """Load `cfg.path`, or train on the training splits of all sources (char: on all text, as nanoGPT), cached by
    content hash. The weights play no part: one tokenizer serves every mixture of the same sources."""
    if isinstance(corpora, Corpus):
        corpora, splits = [corpora], [splits]
    if cfg.path:
        tokenizer = load_tokenizer(cfg.path, lowercase=cfg.lowercase)
        if tokenizer.kind != cfg.kind:
            raise TokenizerError(f"tokenizer.path {cfg.path} holds a {tokenizer.kind} tokenizer but tokenizer.kind={cfg.kind}")
        return tokenizer
    fingerprints = corpora[0].fingerprint if len(corpora) == 1 else [c.fingerprint for c in corpora]
    key = cache_key("tokenizer", FORMAT_VERSION, fingerprints, split_settings, asdict(cfg))
    target = cache_dir / "tokenizers" / key
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_dir():
            log.info("tokenizer: reusing %s", target)
            return load_tokenizer(target)
        t0 = time.perf_counter()

        def train_lines():
            for corpus, split in zip(corpora, splits, strict=True):
                yield from corpus.lines(split["train"])

        if cfg.kind == "char":
            tokenizer: Tokenizer = CharTokenizer.train(
                (text for c in corpora for text, _ in c.pieces(Split(list(range(c.num_documents))))),
                with_eos=any(c.num_documents > 1 for c in corpora),
            )
        elif cfg.kind == "wordpiece":
            tokenizer = WordPieceTokenizer.train(
                train_lines,
                vocab_size=cfg.vocab_size,
                lowercase=cfg.lowercase,
                max_training_lines=cfg.max_training_lines,
            )
        else:
            tokenizer = SentencePieceTokenizer.train(
                train_lines,
                vocab_size=cfg.vocab_size,
                model_type=cfg.model_type,
                byte_fallback=cfg.byte_fallback,
                character_coverage=cfg.character_coverage,
                max_training_lines=cfg.max_training_lines,
                num_threads=max(1, os.cpu_count() or 1),
            )
        publish_dir(target, tokenizer.save)
        _release_freed_memory()
        log.info("tokenizer: trained %s in %.1fs -> %s", tokenizer, time.perf_counter() - t0, target)
        return tokenizer


def _release_freed_memory() -> None:
    """Hand the heap that tokenizer training freed back to the OS (glibc keeps it otherwise), so the tokenizing
    workers forked next do not start with hundreds of MB of dead pages."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def prepare_dataset(
    corpus: Corpus,
    splits: dict[str, Split],
    tokenizer: Tokenizer,
    cache_dir: Path,
    num_proc: int,
    split_settings: dict,
    rank: int = 0,
    world_size: int = 1,
    shard_units: int = 16,
) -> PreparedData | None:
    """The corpus's token shards, cached under a key of its content, the split and the tokenizer.

    The work is cut into shards of `shard_units` work units, numbered in stream order; rank r tokenizes shards
    r, r + world_size, ... into `<key>.<plan>.parts/`, keeping any a previous (interrupted) run of the same plan finished. The rank that finds
    every shard done concatenates them in order into `<split>.bin` and publishes the directory: the same bytes and the
    same index whatever the number of ranks. One process (world_size 1) holds the lock throughout, so the ranks of a
    training job that all call this wait for the first instead of repeating its work."""
    key = cache_key("dataset", FORMAT_VERSION, corpus.fingerprint, split_settings, tokenizer.fingerprint)
    target = cache_dir / "datasets" / key
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target) + ".lock")
    if tokenizer.eos_id is None and corpus.num_documents > 1:
        raise TokenizerError(
            f"{corpus.description} has {corpus.num_documents} documents but the {tokenizer.kind} tokenizer has no "
            "end-of-text id to separate them; use a tokenizer with an eos token"
        )
    plan = _ShardPlan(corpus, splits, tokenizer, _parts_dir(target, shard_units), shard_units)
    if world_size == 1:
        with lock:
            if (done := _reuse(target)) is not None:
                return done
            plan.tokenize(0, 1, num_proc)
            return plan.publish(target, split_settings)
    if (done := _reuse(target, lock)) is not None:
        return done
    plan.tokenize(rank, world_size, num_proc)
    with lock:
        if (done := _reuse(target)) is not None:
            return done
        if not plan.complete():
            log.info("data: rank %d/%d finished its shards of %s; the last rank to finish writes the index",
                     rank, world_size, corpus.description)
            return None
        return plan.publish(target, split_settings)


def _parts_dir(target: Path, shard_units: int) -> Path:
    """Where the shards of an unfinished preparation go, named by what decides their contents (units per shard and
    the rule that groups pieces into units): a rerun with another plan starts afresh instead of taking shards that
    hold other units."""
    return target.with_name(f"{target.name}.{shard_units}u{WORK_UNIT_RULE}.parts")


def _reuse(target: Path, lock: FileLock | None = None) -> PreparedData | None:
    """The published data at `target` if it is intact; a damaged copy (truncated on disk) is removed to be rebuilt."""
    with lock if lock is not None else contextlib.nullcontext():
        if not (target / INDEX_FILE).is_file():
            return None
        prepared = PreparedData.load(target)
        if (damage := prepared.damage()) is None:
            log.info("data: reusing prepared shards %s", target)
            return prepared
        log.warning("data: %s is damaged (%s): rebuilding it", target, damage)
        shutil.rmtree(target)
        return None


class _ShardPlan:
    """Shards of one corpus: work units in stream order, `shard_units` to a shard, each shard a file of its own in the
    parts dir with a small JSON of its token count, byte size and hash written after it (that JSON marks it done)."""

    def __init__(self, corpus: Corpus, splits: dict[str, Split], tokenizer: Tokenizer, parts: Path, shard_units: int):
        self.corpus, self.splits, self.tokenizer, self.parts, self.shard_units = corpus, splits, tokenizer, parts, shard_units
        self.dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
        self.add_eos = corpus.num_documents > 1 and tokenizer.eos_id is not None

    def _shard(self, split: str, i: int) -> Path:
        return self.parts / f"{split}-{i:06d}.bin"

    def _count_file(self, split: str) -> Path:
        return self.parts / f"{split}.shards"

    def _done(self, split: str, i: int) -> dict | None:
        """The shard's record if it is complete on disk; a truncated one is deleted so that it is redone."""
        path = self._shard(split, i)
        meta = path.with_suffix(".json")
        if not meta.is_file():
            return None
        record = json.loads(meta.read_text())
        size = path.stat().st_size if path.exists() else -1
        if size != record["bytes"]:
            log.warning("data: shard %s holds %d bytes, expected %d (truncated?): redoing it", path, size, record["bytes"])
            meta.unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            return None
        return record

    def tokenize(self, rank: int, world_size: int, num_proc: int) -> None:
        """Tokenize this rank's shards that are not done yet; every rank walks the units (cheap) to number them."""
        self.parts.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        written = 0
        with _encoder(self.tokenizer, num_proc) as pool:
            for split in SPLITS:
                counted = {"units": 0}
                writer = _ShardWriter(self)
                mine = self._assigned_units(split, rank, world_size, counted)
                with self._progress(split, world_size) as bar:
                    for shard, unit, ids in _encoded_units(mine, pool, self.add_eos, self.dtype, num_proc):
                        writer.add(split, shard, ids)
                        bar.update(sum(len(text) for text, _ in unit))
                writer.close()
                written += writer.shards_written
                shards = -(-counted["units"] // self.shard_units)
                if not self._write_count(split, shards):
                    return
        log.info("data: rank %d/%d tokenized %d shard(s) of %s in %.1fs (%d processes)", rank, world_size, written,
                 self.corpus.description, time.perf_counter() - t0, num_proc)

    def _write_count(self, split: str, shards: int) -> bool:
        """Record the split's shard count (every rank computes the same number). False when the parts are gone: a rank
        that found every shard done has published the data meanwhile (it removes the parts only after that), so
        this rank's remaining work is done too."""
        try:
            _write_atomic(self._count_file(split), str(shards))
            return True
        except FileNotFoundError:
            if self.parts.exists():
                raise
            log.info("data: another rank published %s while this one finished", self.corpus.description)
            return False

    def _progress(self, split: str, world_size: int):
        """A progress bar (characters) for splits of at least PROGRESS_MIN_CHARS; a rank's share has no known total."""
        from tqdm.auto import tqdm

        chars = self.corpus.split_chars(self.splits[split])
        return tqdm(total=chars if world_size == 1 else None, unit="char", unit_scale=True, desc=f"tokenize {split}",
                    disable=chars is None or chars < PROGRESS_MIN_CHARS, mininterval=2.0)

    def _assigned_units(self, split: str, rank: int, world_size: int, counted: dict) -> Iterator[tuple[int, list]]:
        """(shard, unit) for this rank's shards not done yet; counts all units of the split into `counted`."""
        done: dict[int, bool] = {}
        for i, unit in enumerate(_work_units(self.corpus.pieces(self.splits[split]))):
            counted["units"] = i + 1
            shard = i // self.shard_units
            if shard % world_size != rank:
                continue
            if shard not in done:
                done[shard] = self._done(split, shard) is not None
            if not done[shard]:
                yield shard, unit

    def complete(self) -> bool:
        for split in SPLITS:
            if not self._count_file(split).is_file():
                return False
            if any(self._done(split, i) is None for i in range(int(self._count_file(split).read_text()))):
                return False
        return True

    def publish(self, target: Path, split_settings: dict) -> PreparedData:
        """Concatenate the shards in order into `<split>.bin` (checking each against its recorded hash), write the
        index, publish the directory, and drop the parts."""

        def write(tmp: Path) -> None:
            counts, digests = {}, {}
            for split in SPLITS:
                counts[split], digests[split] = self._concatenate(split, tmp / f"{split}.bin")
                if counts[split] == 0:
                    raise DataError(f"{self.corpus.description}: the {split} split is empty after tokenization")
            index = {
                "format_version": FORMAT_VERSION,
                "dtype": self.dtype.name,
                "num_tokens": counts,
                "sha256": digests,
                "num_documents": {s: len(self.splits[s].documents) for s in SPLITS},
                "tokenizer": self.tokenizer.identity(),
                "source": {
                    "path": self.corpus.description,
                    "format": self.corpus.format,
                    "fingerprint": self.corpus.fingerprint,
                    "num_documents": self.corpus.num_documents,
                },
                "split": split_settings,
                "eos_between_documents": self.add_eos,
            }
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=1))
            log.info("data: prepared %s: %s tokens -> %s", self.corpus.description, counts, target)

        publish_dir(target, write)
        for parts in target.parent.glob(f"{target.name}.*.parts"):  # this plan's, and any other plan's left over
            shutil.rmtree(parts, ignore_errors=True)
        return PreparedData.load(target)

    def _concatenate(self, split: str, out: Path) -> tuple[int, str]:
        total = hashlib.sha256()
        n = 0
        with open(out, "wb") as f:
            for i in range(int(self._count_file(split).read_text())):
                record, path = self._done(split, i), self._shard(split, i)
                if record is None:
                    raise DataError(f"shard {path} went missing or was truncated while the index was written; "
                                    "run the preparation again to redo it")
                h = hashlib.sha256()
                with open(path, "rb") as shard:
                    while block := shard.read(_COPY_BYTES):
                        h.update(block)
                        total.update(block)
                        f.write(block)
                if h.hexdigest() != record["sha256"]:
                    path.with_suffix(".json").unlink(missing_ok=True)
                    raise DataError(f"shard {path} does not match its recorded hash (changed on disk); it was removed: "
                                    "run the preparation again to redo it")
                n += record["tokens"]
        return n, total.hexdigest()


_COPY_BYTES = 16 << 20
PROGRESS_MIN_CHARS = 20_000_000  # show a progress bar for splits at least this large


class _ShardWriter:
    """Streams a rank's encoded units into shard files: each written under a temporary name, renamed when complete,
    then marked done by its JSON record."""

    def __init__(self, plan: _ShardPlan):
        self.plan = plan
        self.key: tuple[str, int] | None = None
        self.file = None
        self.shards_written = 0

    def add(self, split: str, shard: int, ids: np.ndarray) -> None:
        if self.key != (split, shard):
            self.close()
            self.key = (split, shard)
            self.tmp = self.plan._shard(split, shard).with_suffix(f".tmp-{os.getpid()}")
            self.file = open(self.tmp, "wb")
            self.hash, self.tokens = hashlib.sha256(), 0
        data = ids.tobytes()
        self.file.write(data)
        self.hash.update(data)
        self.tokens += ids.size

    def close(self) -> None:
        if self.file is None:
            return
        self.file.close()
        self.file = None
        path = self.plan._shard(*self.key)
        self.tmp.replace(path)
        record = {"tokens": self.tokens, "bytes": path.stat().st_size, "sha256": self.hash.hexdigest()}
        _write_atomic(path.with_suffix(".json"), json.dumps(record))
        self.shards_written += 1


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def publish_dir(target: Path, fill, replace: bool = False) -> None:
    """Fill a temporary sibling dir, then rename it to `target`: readers see all of it or nothing, and a failure
    leaves nothing behind. replace: an existing `target` is removed just before the rename."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        if replace and target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _work_units(pieces: Iterable[tuple[str, bool]]) -> Iterator[list[tuple[str, bool]]]:
    """Group pieces (long text chunks or short rows) into units of at most TEXT_CHUNK_CHARS characters (or one piece
    when it alone is longer), so one task's Python lists of ids are bounded: grouping until a unit *reached* the size
    let the short last chunk of a file join the next file's full chunk (up to twice the size)."""
    unit: list[tuple[str, bool]] = []
    size = 0
    for piece in pieces:
        if unit and size + len(piece[0]) > TEXT_CHUNK_CHARS:
            yield unit
            unit, size = [], 0
        unit.append(piece)
        size += len(piece[0])
    if unit:
        yield unit


_worker_tokenizer: Tokenizer | None = None


def _init_worker(files: dict[str, bytes]) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer_from_files(files)


def _encode_unit(unit: list[tuple[str, bool]], add_eos: bool, dtype: np.dtype) -> np.ndarray:
    tok = _worker_tokenizer
    texts = [text for text, _ in unit if text]
    encoded = iter(tok.encode_batch(texts) if not isinstance(tok, CharTokenizer) else [tok.encode_array(t) for t in texts])
    parts: list = []
    for text, ends_document in unit:
        if text:
            parts.append(np.asarray(next(encoded), dtype=np.int64))
        if ends_document and add_eos:
            # tokenizers whose models read every document from BOS (Llama's) start the next document with it
            boundary = [tok.eos_id, tok.bos_id] if tok.add_bos and tok.bos_id is not None else [tok.eos_id]
            parts.append(np.array(boundary, dtype=np.int64))
    if not parts:
        return np.empty(0, dtype=dtype)
    ids = np.concatenate(parts)
    if ids.size and ids.max() > np.iinfo(dtype).max:
        raise TokenizerError(f"token id {ids.max()} does not fit {dtype.name}")
    return ids.astype(dtype)


@contextlib.contextmanager
def _encoder(tokenizer: Tokenizer, num_proc: int) -> Iterator[mp.pool.Pool | None]:
    """What encodes the work units of every split: this process (num_proc <= 1, None) or one pool of num_proc workers.
    Forked once, before any split is read: a forked worker's RSS counts the parent's pages it maps at the fork, so a
    pool forked again after a large split would start from whatever the parent had touched by then."""
    global _worker_tokenizer
    if num_proc <= 1:
        _worker_tokenizer = tokenizer
        yield None
        return
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(num_proc, initializer=_init_worker, initargs=(tokenizer.to_files(),)) as pool:
        yield pool


def _encoded_units(
    units: Iterator[tuple[object, list]], pool: mp.pool.Pool | None, add_eos: bool, dtype: np.dtype, num_proc: int
) -> Iterator[tuple[object, list, np.ndarray]]:
    """Encode (tag, unit) pairs in order; in parallel with a bounded window so memory stays flat in corpus size."""
    if pool is None:
        for tag, unit in units:
            yield tag, unit, _encode_unit(unit, add_eos, dtype)
        return
    pending: deque = deque()
    for tag, unit in units:
        pending.append((tag, unit, pool.apply_async(_encode_unit, (unit, add_eos, dtype))))
        if len(pending) >= 2 * num_proc:
            tag_done, done, result = pending.popleft()
            yield tag_done, done, result.get()
    while pending:
        tag_done, done, result = pending.popleft()
        yield tag_done, done, result.get()


def prepare_rank_from_env(env: dict | None = None) -> tuple[int, int]:
    """(rank, world_size) of this preparation process: torchrun's RANK/WORLD_SIZE; else the tasks of an srun step
    (SLURM_PROCID of SLURM_STEP_NUM_TASKS; not the batch shell's SLURM_NTASKS, which one process alone must not take
    a share of) times the tasks of a job array (SLURM_ARRAY_TASK_ID within MIN..MAX); else 0, 1."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    else:
        ntasks = int(env.get("SLURM_STEP_NUM_TASKS", "1"))
        procid = int(env.get("SLURM_PROCID", "0")) if ntasks > 1 else 0
        array_index, array_size = 0, 1
        if "SLURM_ARRAY_TASK_ID" in env:
            low = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            array_index = int(env["SLURM_ARRAY_TASK_ID"]) - low
            array_size = int(env.get("SLURM_ARRAY_TASK_COUNT", int(env.get("SLURM_ARRAY_TASK_MAX", low)) - low + 1))
        rank, world = array_index * ntasks + procid, array_size * ntasks
    if not 0 <= rank < world:
        raise DataError(f"preparation rank {rank} is not in [0, {world}) (from RANK/WORLD_SIZE or SLURM's variables)")
    return rank, world
