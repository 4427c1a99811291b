"""SentencePiece BPE / unigram, trained with the sentencepiece library.

Settings keep text exact: identity normalisation, no dummy prefix, whitespace kept, "\n" its own piece (so pieces never
cross lines and line-chunked tokenisation equals whole-text tokenisation), byte fallback for unseen characters.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable

import sentencepiece as spm

from data_pipelines.errors import TokenizerError
from data_pipelines.tokenizers.base import HFExport, Tokenizer, sample_lines

MODEL_FILE = "tokenizer.model"
# sentencepiece_model.proto's piece types and model types
NORMAL, USER_DEFINED = 1, 4
UNIGRAM, BPE = 1, 2


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    @classmethod
    def from_path(cls, path, lowercase: bool) -> SentencePieceTokenizer | None:
        return cls.from_model_proto(path.read_bytes()) if path.is_file() and path.suffix == ".model" else None

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @classmethod
    def from_model_proto(cls, model_proto: bytes) -> SentencePieceTokenizer:
        try:
            return cls(model_proto)
        except Exception as e:
            raise TokenizerError(f"not a valid SentencePiece model: {e}") from None

    @classmethod
    def train(
        cls,
        lines: Callable[[], Iterable[str]],
        vocab_size: int,
        model_type: str = "bpe",
        byte_fallback: bool = True,
        character_coverage: float = 1.0,
        max_training_lines: int = 2_000_000,
        num_threads: int = 2,
    ) -> SentencePieceTokenizer:
        """Train on the lines `lines()` yields (called twice: to count them, then to stream a sample)."""
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sample_lines(lines, max_training_lines),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                allow_whitespace_only_pieces=True,
                split_digits=True,
                byte_fallback=byte_fallback,
                character_coverage=character_coverage,
                user_defined_symbols=["\n"],
                unk_id=0,
                bos_id=1,
                eos_id=2,
                pad_id=3,
                input_sentence_size=0,  # all of the lines sample_lines picked
                shuffle_input_sentence=False,
                num_threads=num_threads,
                minloglevel=2,
            )
        except RuntimeError as e:  # e.g. "Vocabulary size is too high" on a tiny corpus
            raise TokenizerError(f"SentencePiece training failed: {e}") from None
        return cls(model.getvalue())

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def bos_id(self) -> int | None:
        return _id_or_none(self.sp.bos_id())

    @property
    def eos_id(self) -> int | None:
        return _id_or_none(self.sp.eos_id())

    @property
    def pad_id(self) -> int | None:
        return _id_or_none(self.sp.pad_id())

    @property
    def unk_id(self) -> int | None:
        return _id_or_none(self.sp.unk_id())

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        encoded = self.sp.encode(text, return_type="offset_mapping")
        ids, offsets = encoded["ids"], list(encoded["offsets"])
        # SentencePiece gives a character's span to the last of its byte-fallback pieces and empty spans to the
        # others; transformers (and byte-level BPE) give it to every one, so no piece points between characters.
        for i in range(len(ids) - 2, -1, -1):
            start, end = offsets[i]
            if start == end and self.sp.is_byte(ids[i]) and offsets[i + 1][0] == start:
                offsets[i] = offsets[i + 1]
        return ids, offsets

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        if any(i < 0 or i >= self.vocab_size for i in ids):
            raise TokenizerError(f"token id out of range for a SentencePiece vocabulary of {self.vocab_size}")
        return self.sp.decode(ids)

    def _state(self) -> tuple[dict, dict[str, bytes]]:
        return {}, {MODEL_FILE: self.model_proto}

    def _hf_export(self) -> HFExport:
        """The model as a `tokenizers` pipeline, as transformers' SpmConverter.build_tokenizer_from_spm_proto builds it:
        " " -> "▁" and nothing else (identity normalisation, no dummy prefix, no pre-tokenizer), the same BPE or
        unigram model with byte fallback, and a decoder that undoes both; user-defined pieces (the newline) are added
        tokens, matched before the model as SentencePiece matches them before segmenting."""
        from sentencepiece import sentencepiece_model_pb2
        from tokenizers import AddedToken, decoders, models, normalizers
        from tokenizers import Tokenizer as Backend

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(self.model_proto)
        spec, norm = proto.trainer_spec, proto.normalizer_spec
        exact = norm.escape_whitespaces and not spec.treat_whitespace_as_suffix
        if norm.name != "identity" or norm.add_dummy_prefix or norm.remove_extra_whitespaces or not exact:
            raise TokenizerError(
                "only SentencePiece models trained as gptframe trains them (identity normalisation, no dummy prefix, "
                f"whitespace kept as a '▁' prefix) convert to Hugging Face files; this one has {norm.name} "
                f"normalisation, add_dummy_prefix={norm.add_dummy_prefix}, "
                f"remove_extra_whitespaces={norm.remove_extra_whitespaces}"
            )
        pieces = list(proto.pieces)
        if spec.model_type == BPE:
            vocab = {p.piece: i for i, p in enumerate(pieces)}
            model = models.BPE(
                vocab, _bpe_merges(pieces), unk_token=spec.unk_piece, fuse_unk=True, byte_fallback=spec.byte_fallback
            )
        elif spec.model_type == UNIGRAM:
            # SentencePiece never matches control, unknown, byte or unused pieces in text; the Unigram model would (a
            # literal "<0x41>" in text as byte 0x41), unless their score is too low to win against the characters.
            floor = min((p.score for p in pieces if p.type == NORMAL), default=0.0) - 1e6
            vocab = [(p.piece, p.score if p.type in (NORMAL, USER_DEFINED) else floor) for p in pieces]
            model = models.Unigram(vocab, unk_id=spec.unk_id, byte_fallback=spec.byte_fallback)
        else:
            raise TokenizerError(f"SentencePiece model type {spec.model_type} has no Hugging Face equivalent")
        backend = Backend(model)
        backend.normalizer = normalizers.Replace(" ", "▁")
        backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        backend.add_tokens(
            [AddedToken(p.piece, normalized=False, special=False) for p in pieces if p.type == USER_DEFINED]
        )
        return HFExport(backend)

    @classmethod
    def _from_state(cls, meta: dict, files: dict[str, bytes]) -> SentencePieceTokenizer:
        if MODEL_FILE not in files:
            raise TokenizerError(f"saved SentencePiece tokenizer lacks {MODEL_FILE}")
        return cls.from_model_proto(files[MODEL_FILE])


def _id_or_none(i: int) -> int | None:
    return i if i >= 0 else None


def _bpe_merges(pieces) -> list[tuple[str, str]]:
    """Merges that make `tokenizers`' BPE segment as SentencePiece's: SentencePiece joins the adjacent pair whose
    concatenation is the best-scored piece, and BPE pieces are stored best first, so every split of every normal piece
    into two normal pieces, ranked by the piece's id (as transformers' generate_merges ranks them)."""
    ids = {p.piece: i for i, p in enumerate(pieces) if p.type == NORMAL}
    merges = []
    for piece, i in ids.items():
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in ids and piece[k:] in ids]
        merges.extend((i, len(left), left, right) for left, right in splits)
    return [(left, right) for _, _, left, right in sorted(merges)]
