"""The one tokenizer interface every kind implements.

A tokenizer is fully described by a few small files (`to_files`): they are saved into the run dir and embedded in every
checkpoint, so a checkpoint alone can encode prompts and decode samples.
"""

from __future__ import annotations

import hashlib
import json
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from data_pipelines.errors import TokenizerError

if TYPE_CHECKING:
    import tokenizers

META_FILE = "gptframe_tokenizer.json"
SAMPLE_SEED = 1337


def sample_lines(lines: Callable[[], Iterable[str]], max_lines: int, seed: int = SAMPLE_SEED) -> Iterator[str]:
    """About max_lines of the lines `lines()` yields, chosen by a seeded coin per line, in two streaming passes
    (count, then select): the same sample on every machine, and nothing held in memory.

    SentencePiece's own sampling (input_sentence_size) is not seeded, so the same corpus would otherwise give a
    different vocabulary on every machine.
    """
    total = sum(1 for _ in lines())
    if total <= max_lines:
        yield from lines()
        return
    keep = max_lines / total
    coin = random.Random(seed)
    for line in lines():
        if coin.random() < keep:
            yield line


@dataclass
class HFExport:
    """What a tokenizer kind hands `Tokenizer.to_hf_files`: a `tokenizers` pipeline with our ids, and the transformers
    class (and its settings) that AutoTokenizer should wrap it in."""

    backend: tokenizers.Tokenizer
    tokenizer_class: str = "PreTrainedTokenizerFast"  # loads tokenizer.json as is
    config: dict = field(default_factory=dict)  # extra tokenizer_config.json entries
    files: dict[str, bytes] = field(default_factory=dict)  # extra files (e.g. WordPiece's vocab.txt)


TOKENIZER_KINDS: dict[str, type[Tokenizer]] = {}  # kind -> class; each concrete tokenizer registers itself


class Tokenizer(ABC):
    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            TOKENIZER_KINDS[cls.kind] = cls

    @classmethod
    def from_path(cls, path: Path, lowercase: bool) -> Tokenizer | None:
        """This kind loaded from a file or directory it recognises (a SentencePiece .model, a vocab.txt, ...), or
        None when `path` is not one of its formats."""
        return None

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> int | None:
        return None

    @property
    def eos_id(self) -> int | None:
        return None

    @property
    def pad_id(self) -> int | None:
        return None

    @property
    def unk_id(self) -> int | None:
        return None

    @property
    def cls_id(self) -> int | None:
        return None

    @property
    def sep_id(self) -> int | None:
        return None

    @property
    def mask_id(self) -> int | None:
        return None

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template this tokenizer carries (see data_pipelines.tokenizers.chat), if any."""
        return None

    def special_tokens_text(self) -> dict[str, str]:
        """kind -> the special token's text as the Hugging Face export names it (chat templates see these as
        bos_token, eos_token, ..., as transformers passes its special_tokens_map)."""
        backend = self._hf_export().backend
        return {kind: backend.id_to_token(i) for kind, i in self.special_ids.items()}

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @property
    def add_bos(self) -> bool:
        """Whether this tokenizer's models see every text start with the bos token (Llama's tokenizers add it), as
        transformers' `tokenizer(text)` gives it. `encode` never adds it; `encode_document` does."""
        return False

    def encode_document(self, text: str) -> list[int]:
        """A whole text as its model reads it: bos first where `add_bos` says, then `encode(text)`."""
        return ([self.bos_id] if self.add_bos and self.bos_id is not None else []) + self.encode(text)

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    @abstractmethod
    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """The ids `encode(text)` gives and, for each, the (start, end) span of `text` (character indices) it stands
        for: transformers' `return_offsets_mapping`. Spans never go backwards; the tokens of one character's bytes
        (byte fallback, byte-level BPE) all span that character. Extractive QA maps answers through them, token
        classification maps tokens to words."""

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode_batch(self, batch: list[list[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]

    @abstractmethod
    def _state(self) -> tuple[dict, dict[str, bytes]]:
        """(json-able metadata, extra binary files) that fully describe this tokenizer."""

    @classmethod
    @abstractmethod
    def _from_state(cls, meta: dict, files: dict[str, bytes]) -> Tokenizer: ...

    @abstractmethod
    def _hf_export(self) -> HFExport: ...

    def to_hf_files(self, model_max_length: int | None = None) -> dict[str, bytes]:
        """tokenizer.json, tokenizer_config.json, special_tokens_map.json (and any extra files of the kind): written to
        a directory, `transformers.AutoTokenizer.from_pretrained(dir)` is a fast tokenizer with our ids, our decoding
        and our special tokens. model_max_length: the longest input the model takes, if known."""
        from data_pipelines.tokenizers.huggingface import hf_files

        return hf_files(self._hf_export(), self.special_ids, model_max_length)

    @property
    def special_ids(self) -> dict[str, int]:
        ids = {"bos": self.bos_id, "eos": self.eos_id, "pad": self.pad_id, "unk": self.unk_id,
               "cls": self.cls_id, "sep": self.sep_id, "mask": self.mask_id}
        return {k: v for k, v in ids.items() if v is not None}

    def to_files(self) -> dict[str, bytes]:
        # made once: a tokenizer never changes after construction, and serialising a 30k vocabulary takes ~0.2 s,
        # which a run would otherwise pay for its checkpoints' copy, its saved tokenizer and its fingerprint
        if "_files" not in self.__dict__:
            meta, files = self._state()
            meta = {"kind": self.kind, "vocab_size": self.vocab_size, "special_ids": self.special_ids, **meta}
            self._files = {META_FILE: json.dumps(meta, indent=1, sort_keys=True).encode(), **files}
        return dict(self._files)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for name, data in sorted(self.to_files().items()):
            h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return h.hexdigest()[:16]

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in self.to_files().items():
            tmp = directory / (name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(directory / name)
        return directory

    def identity(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "fingerprint": self.fingerprint}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, special_ids={self.special_ids})"


def tokenizer_from_files(files: dict[str, bytes]) -> Tokenizer:
    if META_FILE not in files:
        raise TokenizerError(f"not a gptframe tokenizer: {META_FILE} is missing")
    meta = json.loads(files[META_FILE])
    kind = meta.get("kind")
    if kind not in TOKENIZER_KINDS:
        raise TokenizerError(f"unknown tokenizer kind {kind!r} (known: {sorted(TOKENIZER_KINDS)})")
    return TOKENIZER_KINDS[kind]._from_state(meta, {k: v for k, v in files.items() if k != META_FILE})


def load_tokenizer(path: str | Path, lowercase: bool = True) -> Tokenizer:
    """Load a tokenizer saved by `Tokenizer.save` (a directory), a Hugging Face tokenizer directory (see
    `load_hf_tokenizer`), a SentencePiece `.model` file, or a WordPiece `vocab.txt` (lowercase: whether that
    vocabulary is uncased, unless the directory's tokenizer_config.json says)."""
    path = Path(path).expanduser()
    if not (path / META_FILE).is_file():
        for kind in TOKENIZER_KINDS.values():
            tokenizer = kind.from_path(path, lowercase)
            if tokenizer is not None:
                return tokenizer
    if not (path / META_FILE).is_file():
        raise TokenizerError(
            f"tokenizer.path: {path} is neither a saved gptframe tokenizer dir, a Hugging Face tokenizer dir, "
            "a SentencePiece .model, nor a WordPiece vocab.txt"
        )
    return tokenizer_from_files({f.name: f.read_bytes() for f in path.iterdir() if f.is_file()})
