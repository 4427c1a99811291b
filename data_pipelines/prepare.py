"""Prepare once: sources -> tokenizer -> train.bin / val.bin + index.json, cached by content hash.

The cache key covers the source bytes, the split settings and the tokenizer, so a second run reuses the shards and any
change rebuilds them. Results are written to a temporary dir and renamed into place under a file lock, so concurrent
ranks never see (or leave) half-written data.
"""

from __future__ import annotations

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


def cache_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def resolve_num_proc(num_proc: int) -> int:
    return num_proc if num_proc > 0 else max(1, min(8, os.cpu_count() or 1))


def prepare(
    data: DataConfig, tokenizer_cfg: TokenizerConfig, tokenizer: Tokenizer | None = None
) -> tuple[Tokenizer, PreparedData]:
    """Validate the source, build (or reuse) the tokenizer, and prepare (or reuse) the token shards."""
    corpus = open_corpus(data.path, data.format, data.text_column)
    splits = corpus.split(data.val_fraction, data.split_seed)
    cache_dir = Path(os.path.expanduser(data.cache_dir)).resolve()
    split_settings = {"val_fraction": data.val_fraction, "seed": data.split_seed}
    if tokenizer is None:
        tokenizer = build_tokenizer(tokenizer_cfg, corpus, splits, cache_dir, split_settings)
    prepared = prepare_dataset(corpus, splits, tokenizer, cache_dir, resolve_num_proc(data.num_proc), split_settings)
    return tokenizer, prepared


def build_tokenizer(
    cfg: TokenizerConfig, corpus: Corpus, splits: dict[str, Split], cache_dir: Path, split_settings: dict
) -> Tokenizer:
    """Load `cfg.path`, or train on the training split (char: on all text, as nanoGPT), cached by content hash."""
    if cfg.path:
        tokenizer = load_tokenizer(cfg.path, lowercase=cfg.lowercase)
        if tokenizer.kind != cfg.kind:
            raise TokenizerError(f"tokenizer.path {cfg.path} holds a {tokenizer.kind} tokenizer but tokenizer.kind={cfg.kind}")
        return tokenizer
    key = cache_key("tokenizer", FORMAT_VERSION, corpus.fingerprint, split_settings, asdict(cfg))
    target = cache_dir / "tokenizers" / key
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_dir():
            log.info("tokenizer: reusing %s", target)
            return load_tokenizer(target)
        t0 = time.perf_counter()
        if cfg.kind == "char":
            all_docs = Split(list(range(corpus.num_documents)))
            tokenizer: Tokenizer = CharTokenizer.train(
                (text for text, _ in corpus.pieces(all_docs)), with_eos=corpus.num_documents > 1
            )
        elif cfg.kind == "wordpiece":
            tokenizer = WordPieceTokenizer.train(
                lambda: corpus.lines(splits["train"]),
                vocab_size=cfg.vocab_size,
                lowercase=cfg.lowercase,
                max_training_lines=cfg.max_training_lines,
            )
        else:
            tokenizer = SentencePieceTokenizer.train(
                lambda: corpus.lines(splits["train"]),
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
) -> PreparedData:
    key = cache_key("dataset", FORMAT_VERSION, corpus.fingerprint, split_settings, tokenizer.fingerprint)
    target = cache_dir / "datasets" / key
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / INDEX_FILE).is_file():
            log.info("data: reusing prepared shards %s", target)
            return PreparedData.load(target)
        dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
        add_eos = corpus.num_documents > 1 and tokenizer.eos_id is not None
        if corpus.num_documents > 1 and tokenizer.eos_id is None:
            raise TokenizerError(
                f"{corpus.description} has {corpus.num_documents} documents but the {tokenizer.kind} tokenizer has no "
                "end-of-text id to separate them; use a tokenizer with an eos token"
            )

        def write(tmp: Path) -> None:
            t0 = time.perf_counter()
            counts: dict[str, int] = {}
            for split in SPLITS:
                counts[split] = _write_tokens(
                    corpus.pieces(splits[split]), tokenizer, tmp / f"{split}.bin", dtype, add_eos, num_proc,
                    total_chars=corpus.split_chars(splits[split]),
                )
                if counts[split] == 0:
                    raise DataError(f"{corpus.description}: the {split} split is empty after tokenization")
            seconds = time.perf_counter() - t0
            index = {
                "format_version": FORMAT_VERSION,
                "dtype": dtype.name,
                "num_tokens": counts,
                "num_documents": {s: len(splits[s].documents) for s in SPLITS},
                "tokenizer": tokenizer.identity(),
                "source": {
                    "path": corpus.description,
                    "format": corpus.format,
                    "fingerprint": corpus.fingerprint,
                    "num_documents": corpus.num_documents,
                },
                "split": split_settings,
                "eos_between_documents": add_eos,
                "prepare_seconds": round(seconds, 3),
            }
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=1))
            log.info("data: tokenized %s into %s tokens in %.1fs (%d processes)", corpus.description, counts, seconds, num_proc)

        publish_dir(target, write)
        return PreparedData.load(target)


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
    """Group pieces (long text chunks or short rows) into units of about TEXT_CHUNK_CHARS characters."""
    unit: list[tuple[str, bool]] = []
    size = 0
    for piece in pieces:
        unit.append(piece)
        size += len(piece[0])
        if size >= TEXT_CHUNK_CHARS:
            yield unit
            unit, size = [], 0
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
            parts.append(np.array([tok.eos_id], dtype=np.int64))
    if not parts:
        return np.empty(0, dtype=dtype)
    ids = np.concatenate(parts)
    if ids.size and ids.max() > np.iinfo(dtype).max:
        raise TokenizerError(f"token id {ids.max()} does not fit {dtype.name}")
    return ids.astype(dtype)


def _encoded_units(
    units: Iterator, tokenizer: Tokenizer, add_eos: bool, dtype: np.dtype, num_proc: int
) -> Iterator[tuple[list, np.ndarray]]:
    """Encode units in order; in parallel with a bounded window so memory stays flat in corpus size."""
    global _worker_tokenizer
    if num_proc <= 1:
        _worker_tokenizer = tokenizer
        for unit in units:
            yield unit, _encode_unit(unit, add_eos, dtype)
        return
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    with ctx.Pool(num_proc, initializer=_init_worker, initargs=(tokenizer.to_files(),)) as pool:
        pending: deque = deque()
        for unit in units:
            pending.append((unit, pool.apply_async(_encode_unit, (unit, add_eos, dtype))))
            if len(pending) >= 2 * num_proc:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()


PROGRESS_MIN_CHARS = 20_000_000  # show a progress bar for splits at least this large


def _write_tokens(
    pieces: Iterable[tuple[str, bool]],
    tokenizer: Tokenizer,
    path: Path,
    dtype: np.dtype,
    add_eos: bool,
    num_proc: int,
    total_chars: int | None = None,
) -> int:
    from tqdm.auto import tqdm

    n = 0
    show = total_chars is not None and total_chars >= PROGRESS_MIN_CHARS
    with open(path, "wb") as f, tqdm(total=total_chars, unit="char", unit_scale=True, desc=f"tokenize {path.stem}",
                                     disable=not show, mininterval=2.0) as bar:
        for unit, ids in _encoded_units(_work_units(pieces), tokenizer, add_eos, dtype, num_proc):
            ids.tofile(f)
            n += ids.size
            bar.update(sum(len(text) for text, _ in unit))
    return n
