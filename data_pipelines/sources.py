"""Data sources -> validated, fingerprinted documents, split into train and val.

One streaming pass over the raw bytes validates them (exists, non-empty, UTF-8 / readable rows), counts documents and
characters, and computes a content hash. Nothing is written until that pass succeeded. Memory stays flat: text files are
read in chunks, tabular files are streamed row by row.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_pipelines.errors import DataError
from data_pipelines.hub import HubDataset, is_hub_path

TEXT_CHUNK_CHARS = 1 << 20  # tokenization work unit; cut at line ends so tokens never straddle a cut
_READ_BYTES = 4 << 20
_TABULAR_EXTENSIONS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}


@dataclass
class Split:
    """Which part of the corpus a split holds: whole documents, or a char range of a single document."""

    documents: list[int]
    char_range: tuple[int, int] | None = None  # only for a corpus of one document


@dataclass
class Corpus:
    """A validated data source. Iterate a split with `pieces(split)`."""

    description: str
    format: str
    files: list[Path]
    fingerprint: str
    doc_chars: list[int] = field(default_factory=list)  # text format: characters per document (file)
    num_documents: int = 0
    text_column: str = "text"
    hub: HubDataset | None = None  # format "hf": the hub dataset (split included) the rows come from
    streaming: bool = False

    @property
    def num_chars(self) -> int:
        return sum(self.doc_chars)

    def split(self, val_fraction: float, seed: int) -> dict[str, Split]:
        """Train/val split: by document (seeded), or contiguous 90/10-style for a single document (as nanoGPT)."""
        if self.num_documents == 1:
            n = self.doc_chars[0] if self.doc_chars else 0
            if self.format != "text":
                raise DataError(f"{self.description} holds a single row: need at least 2 rows to split train/val")
            cut = int(n * (1.0 - val_fraction))
            return {"train": Split([0], (0, cut)), "val": Split([0], (cut, n))}
        is_val = np.random.default_rng(seed).random(self.num_documents) < val_fraction
        if not is_val.any():
            is_val[-1] = True
        if is_val.all():
            is_val[0] = False
        docs = np.arange(self.num_documents)
        return {"train": Split(docs[~is_val].tolist()), "val": Split(docs[is_val].tolist())}

    def split_chars(self, split: Split) -> int | None:
        """Characters in a split (for progress bars); None where only a streaming pass could tell."""
        if self.format != "text":
            return None
        if split.char_range is not None:
            return split.char_range[1] - split.char_range[0]
        return sum(self.doc_chars[d] for d in split.documents)

    def pieces(self, split: Split) -> Iterator[tuple[str, bool]]:
        """Yield (text, ends_document) pieces of a split, in document order, in chunks of about 1M characters."""
        if self.format == "text":
            for doc in split.documents:
                yield from _text_file_pieces(self.files[doc], split.char_range)
        else:
            wanted = set(split.documents)
            for i, text in enumerate(_iter_rows(self)):
                if i in wanted and text:
                    yield text, True

    def lines(self, split: Split) -> Iterator[str]:
        """Non-empty lines of a split (what a tokenizer trains on)."""
        for text, _ in self.pieces(split):
            for line in text.split("\n"):
                if line.strip():
                    yield line


def open_corpus(
    path: str, format: str = "auto", text_column: str = "text", split: str = "train", streaming: bool = False
) -> Corpus:
    """Resolve `path`, validate every byte, and fingerprint the content. Raises DataError on bad input.
    `split` and `streaming` apply to hub datasets (hf://...) only."""
    if is_hub_path(path):
        return _open_hub(path, split, text_column, streaming)
    if split != "train":
        raise DataError(f"split={split!r} applies to hub datasets (hf://...) only; {path} is read whole and cut into "
                        "train/val by data.val_fraction")
    files, detected = _resolve(path, format)
    if detected == "text":
        return _open_text(path, files)
    return _open_tabular(path, files, detected, text_column)


def _resolve(path: str, format: str) -> tuple[list[Path], str]:
    p = Path(os.path.expanduser(path))
    if any(ch in path for ch in "*?["):
        files = sorted(Path(f) for f in glob.glob(os.path.expanduser(path), recursive=True) if Path(f).is_file())
        if not files:
            raise DataError(f"data.path: the glob {path!r} matches no files")
    elif p.is_dir():
        if format == "arrow" or (format == "auto" and ((p / "state.json").exists() or (p / "dataset_dict.json").exists())):
            return [p], "arrow"
        files = sorted(f for f in p.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if not files:
            raise DataError(f"data.path: the directory {path} holds no files")
    elif p.is_file():
        files = [p]
    else:
        raise DataError(f"data.path: no such file or directory: {path}")
    if format != "auto":
        return files, format
    kinds = {_TABULAR_EXTENSIONS.get(f.suffix.lower(), "text") for f in files}
    if len(kinds) > 1:
        raise DataError(f"data.path: {path} mixes file types ({', '.join(sorted(kinds))}); set data.format or narrow the path")
    return files, kinds.pop()


def _hash_file(h, path: Path) -> None:
    h.update(str(path.name).encode() + b"\0")
    with open(path, "rb") as f:
        while block := f.read(_READ_BYTES):
            h.update(block)


def _open_text(description: str, files: list[Path]) -> Corpus:
    h = hashlib.sha256(b"text\0")
    doc_chars: list[int] = []
    kept: list[Path] = []
    for path in files:
        h.update(str(path.name).encode() + b"\0")
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        n_chars, offset = 0, 0
        with open(path, "rb") as f:
            while True:
                block = f.read(_READ_BYTES)
                pending = decoder.getstate()[0]  # bytes of an unfinished character from the previous block
                try:
                    n_chars += len(decoder.decode(block, final=not block))
                except UnicodeDecodeError as e:
                    seen = pending + block
                    bad = seen[e.start]
                    raise DataError(
                        f"{path} is not UTF-8 text: invalid byte 0x{bad:02x} at byte offset "
                        f"{offset - len(pending) + e.start}; "
                        "convert it to UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or remove it from data.path"
                    ) from None
                if not block:
                    break
                h.update(block)
                offset += len(block)
        if n_chars > 0:
            kept.append(path)
            doc_chars.append(n_chars)
    if not kept:
        raise DataError(f"data.path: {description} is empty (no text in {len(files)} file(s))")
    return Corpus(description, "text", kept, h.hexdigest(), doc_chars, len(kept))


def _text_file_pieces(path: Path, char_range: tuple[int, int] | None) -> Iterator[tuple[str, bool]]:
    start, end = char_range if char_range is not None else (0, None)
    with open(path, encoding="utf-8", newline="") as f:  # newline="": keep \r\n as written
        pos = 0
        while pos < start:  # skip to the start of the range in bounded steps
            skipped = len(f.read(min(TEXT_CHUNK_CHARS, start - pos)))
            if not skipped:
                break
            pos += skipped
        while end is None or pos < end:
            text = f.read(TEXT_CHUNK_CHARS if end is None else min(TEXT_CHUNK_CHARS, end - pos))
            if not text:
                break
            pos += len(text)
            if not text.endswith("\n") and (end is None or pos < end):  # finish the line
                tail = f.readline(TEXT_CHUNK_CHARS if end is None else end - pos)
                text += tail
                pos += len(tail)
            yield text, False
    yield "", True  # the document ends here


def _load_tabular(corpus: Corpus):
    import datasets

    corpus_format, files = corpus.format, corpus.files
    if corpus.hub is not None:
        return corpus.hub.load(corpus.streaming)
    if corpus_format == "arrow":
        ds = datasets.load_from_disk(str(files[0]))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise DataError(f"{files[0]}: a DatasetDict without a 'train' split (has {list(ds)})")
            ds = ds["train"]
        return ds
    kwargs = {}
    if corpus_format == "csv" and all(f.suffix.lower() == ".tsv" for f in files):
        kwargs["sep"] = "\t"
    return datasets.load_dataset(
        corpus_format, data_files=[str(f) for f in files], split="train", streaming=True, **kwargs
    )


def _iter_rows(corpus: Corpus) -> Iterator[str]:
    try:
        ds = _load_tabular(corpus)
        for batch in ds.iter(batch_size=1000):
            if corpus.text_column not in batch:
                raise DataError(
                    f"{corpus.description}: no column {corpus.text_column!r} (columns: {sorted(batch)}); "
                    "set data.text_column"
                )
            for value in batch[corpus.text_column]:
                if value is not None and not isinstance(value, str):
                    raise DataError(
                        f"{corpus.description}: column {corpus.text_column!r} holds {type(value).__name__}, expected text"
                    )
                yield value or ""
    except DataError:
        raise
    except Exception as e:  # parse errors of json/csv/parquet readers, bad encodings
        raise DataError(f"{corpus.description}: cannot read as {corpus.format}: {type(e).__name__}: {e}") from None


def _open_tabular(description: str, files: list[Path], corpus_format: str, text_column: str) -> Corpus:
    h = hashlib.sha256(f"{corpus_format}\0{text_column}\0".encode())
    for path in files:
        if path.is_dir():
            for f in sorted(path.rglob("*")):
                if f.is_file():
                    _hash_file(h, f)
        else:
            _hash_file(h, path)
    corpus = Corpus(description, corpus_format, files, h.hexdigest(), text_column=text_column)
    n_docs, n_chars = 0, 0
    for text in _iter_rows(corpus):
        n_docs += 1
        n_chars += len(text)
    if n_docs == 0 or n_chars == 0:
        raise DataError(f"data.path: {description} is empty (no text in column {text_column!r})")
    corpus.num_documents = n_docs
    return corpus


def _open_hub(path: str, split: str, text_column: str, streaming: bool) -> Corpus:
    """A hub dataset's split: fingerprinted from its resolved files; rows counted from Arrow metadata, or by one pass
    over the text column when streaming."""
    hub = HubDataset.parse(path, split)
    corpus = Corpus(str(hub), "hf", [], hub.fingerprint(text_column), text_column=text_column, hub=hub,
                    streaming=streaming)
    ds = hub.load(streaming)
    columns = ds.column_names
    if columns is not None and text_column not in columns:
        raise DataError(f"{hub}: no column {text_column!r} (columns: {sorted(columns)}); set the source's text_column")
    corpus.num_documents = ds.num_rows if not streaming else sum(1 for _ in _iter_rows(corpus))
    if corpus.num_documents == 0:
        raise DataError(f"{hub}: the split {split!r} has no rows")
    return corpus
