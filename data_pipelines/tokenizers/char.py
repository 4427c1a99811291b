"""One id per character, as nanoGPT's shakespeare_char: the vocabulary is the sorted set of characters in the corpus."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from data_pipelines.errors import TokenizerError
from data_pipelines.tokenizers.base import HFExport, Tokenizer

EOS_TOKEN = "<|endoftext|>"


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: list[str], with_eos: bool = False):
        self.chars = sorted(set(chars))
        self.with_eos = with_eos
        self._codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        self._itos = list(self.chars) + ([EOS_TOKEN] if with_eos else [])

    @classmethod
    def train(cls, texts: Iterable[str], with_eos: bool) -> CharTokenizer:
        """with_eos: the corpus has several documents, so an end-of-text id separates them."""
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        if not seen:
            raise TokenizerError("cannot build a char vocabulary from empty text")
        return cls(sorted(seen), with_eos)

    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    @property
    def eos_id(self) -> int | None:
        return len(self.chars) if self.with_eos else None

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """Vectorised lookup: about 100x faster than a dict per character on large chunks."""
        cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codepoints, cps)
        ids_clipped = np.minimum(ids, len(self._codepoints) - 1)
        unknown = self._codepoints[ids_clipped] != cps
        if unknown.any():
            bad = sorted({chr(c) for c in cps[unknown][:20]})
            raise TokenizerError(f"characters {bad} are not in the char vocabulary of {len(self.chars)} characters")
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        return self.encode(text), [(i, i + 1) for i in range(len(text))]  # one id per code point

    def decode(self, ids: Iterable[int]) -> str:
        try:
            return "".join(self._itos[i] for i in ids)
        except IndexError:
            raise TokenizerError(f"token id out of range for a char vocabulary of {self.vocab_size}") from None

    def _state(self) -> tuple[dict, dict[str, bytes]]:
        return {"chars": self.chars, "with_eos": self.with_eos}, {}

    def _hf_export(self) -> HFExport:
        from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as Backend

        # One piece per code point, looked up in a WordLevel vocabulary; with no unk token an unknown character is an
        # error there too. Fuse joins the pieces back without the spaces WordLevel's default decoding puts between them.
        backend = Backend(models.WordLevel({t: i for i, t in enumerate(self._itos)}, unk_token=None))
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        backend.decoder = decoders.Fuse()
        if self.with_eos:
            backend.add_special_tokens([AddedToken(EOS_TOKEN, special=True, normalized=False)])
        return HFExport(backend)

    @classmethod
    def _from_state(cls, meta: dict, files: dict[str, bytes]) -> CharTokenizer:
        return cls(meta["chars"], meta["with_eos"])
