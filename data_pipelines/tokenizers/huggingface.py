"""Hugging Face interop.

- `hf_files`: the files that make `transformers.AutoTokenizer.from_pretrained(dir)` a fast tokenizer with a gptframe
  tokenizer's ids (`Tokenizer.to_hf_files`).
- `HFTokenizer`: any `tokenizers` tokenizer.json (GPT-2's byte-level BPE, ...) as a gptframe tokenizer.
- `load_hf_tokenizer`: a Hugging Face tokenizer directory as the closest gptframe kind.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

from data_pipelines.errors import TokenizerError
from data_pipelines.tokenizers.base import META_FILE, HFExport, Tokenizer, tokenizer_from_files
from data_pipelines.tokenizers.sentencepiece import SentencePieceTokenizer
from data_pipelines.tokenizers.wordpiece import WordPieceTokenizer

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
VOCAB_TXT = "vocab.txt"
GPT2_VOCAB, GPT2_MERGES = "vocab.json", "merges.txt"
SPECIAL_KINDS = ("bos", "eos", "unk", "pad", "cls", "sep", "mask")
GPT2_SPECIAL = "<|endoftext|>"
# transformers' GPT2Tokenizer defaults when a directory does not name its special tokens
GPT2_DEFAULTS = {"bos": GPT2_SPECIAL, "eos": GPT2_SPECIAL, "unk": GPT2_SPECIAL}
# transformers' PreTrainedTokenizerBase.clean_up_tokenization, in order
CLEAN_UP_REPLACEMENTS = [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't")]
CLEAN_UP_REPLACEMENTS += [(" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")]
# tokenizer_config.json classes whose pipeline transformers builds itself rather than reading tokenizer.json as it is
# (transformers 5's LlamaTokenizer replaces a Llama-2 tokenizer.json's normaliser, which changes the ids of texts that
# start with a space; a SentencePiece tokenizer.model alone is converted, and literal "<s>" becomes the bos token):
# gptframe takes that pipeline from transformers, so its ids are AutoTokenizer's.
BUILT_BY_TRANSFORMERS = frozenset({"LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer",
                                   "CodeLlamaTokenizerFast", "Qwen2Tokenizer", "Qwen2TokenizerFast"})
LOOKED_FOR = (
    f"{META_FILE} (gptframe), {TOKENIZER_FILE}, {VOCAB_TXT} (WordPiece), {GPT2_VOCAB} + {GPT2_MERGES} (GPT-2 BPE) "
    "or a SentencePiece *.model"
)


def hf_files(export: HFExport, special_ids: dict[str, int], model_max_length: int | None = None) -> dict[str, bytes]:
    """The Hugging Face files of a tokenizer whose `tokenizers` pipeline and special ids are given."""
    backend = Backend.from_str(export.backend.to_str())  # a copy: registering special tokens below changes it
    special = {kind: backend.id_to_token(i) for kind, i in special_ids.items()}
    # transformers registers its special tokens as added tokens when it loads them; doing it here keeps tokenizer.json
    # alone (tokenizers.Tokenizer.from_file) the same tokenizer. Tokens already in the vocabulary keep their ids.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in dict.fromkeys(special.values())])
    special_map = {f"{kind}_token": token for kind, token in special.items()}
    config = {
        "tokenizer_class": export.tokenizer_class,
        "clean_up_tokenization_spaces": False,  # decode exactly as the pipeline's decoder does
        **special_map,
        **export.config,
    }
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    return {
        # compact, as in `to_files`: an export that writes both sets of files into one directory writes one
        # tokenizer.json, whichever comes last
        TOKENIZER_FILE: backend.to_str().encode(),
        CONFIG_FILE: _json_bytes(config),
        SPECIAL_TOKENS_FILE: _json_bytes(special_map),
        **export.files,
    }


def _json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode()


class HFTokenizer(Tokenizer):
    """A `tokenizers` pipeline (tokenizer.json) with named special tokens. `encode` adds no special tokens, as the
    other kinds' don't; `decode` is transformers' (special tokens kept)."""

    kind = "huggingface"

    @classmethod
    def from_path(cls, path: Path, lowercase: bool) -> Tokenizer | None:
        """Any Hugging Face tokenizer directory, as the closest gptframe kind (load_hf_tokenizer)."""
        return load_hf_tokenizer(path, lowercase) if path.is_dir() and is_hf_tokenizer_dir(path) else None

    def __init__(self, backend: Backend, special_tokens: dict[str, str], clean_up_tokenization_spaces: bool = False):
        self.backend = backend
        self.special_tokens = {k: v for k, v in special_tokens.items() if k in SPECIAL_KINDS}
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        # As transformers does on load: special tokens are added tokens, never split (new ones get new ids).
        backend.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t in self.special_tokens.values()]
        )
        self._ids = {k: backend.token_to_id(t) for k, t in self.special_tokens.items()}
        self._add_bos = _post_processor_adds_bos(backend, self._ids.get("bos"))

    @classmethod
    def from_str(
        cls, tokenizer_json: str, special_tokens: dict[str, str], clean_up_tokenization_spaces: bool = False
    ) -> HFTokenizer:
        try:
            backend = Backend.from_str(tokenizer_json)
        except Exception as e:
            raise TokenizerError(f"not a valid Hugging Face tokenizer.json: {e}") from None
        return cls(backend, special_tokens, clean_up_tokenization_spaces)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int | None:
        return self._ids.get("bos")

    @property
    def eos_id(self) -> int | None:
        return self._ids.get("eos")

    @property
    def add_bos(self) -> bool:
        """Whether the pipeline's post-processor starts a text with bos (Llama-2/3's TemplateProcessing)."""
        return self._add_bos

    @property
    def pad_id(self) -> int | None:
        return self._ids.get("pad")

    @property
    def unk_id(self) -> int | None:
        return self._ids.get("unk")

    @property
    def cls_id(self) -> int | None:
        return self._ids.get("cls")

    @property
    def sep_id(self) -> int | None:
        return self._ids.get("sep")

    @property
    def mask_id(self) -> int | None:
        return self._ids.get("mask")

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.backend.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        if any(i < 0 or i >= self.vocab_size for i in ids):
            raise TokenizerError(f"token id out of range for a vocabulary of {self.vocab_size}")
        text = self.backend.decode(ids, skip_special_tokens=False)
        # transformers 5 skips this clean-up for BPE models (it would eat real spaces before punctuation)
        if self.clean_up_tokenization_spaces and not isinstance(self.backend.model, models.BPE):
            text = _clean_up_tokenization(text)
        return text

    def _state(self) -> tuple[dict, dict[str, bytes]]:
        meta = {
            "special_tokens": self.special_tokens,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
        }
        return meta, {TOKENIZER_FILE: self.backend.to_str().encode()}

    @classmethod
    def _from_state(cls, meta: dict, files: dict[str, bytes]) -> HFTokenizer:
        if TOKENIZER_FILE not in files:
            raise TokenizerError(f"saved Hugging Face tokenizer lacks {TOKENIZER_FILE}")
        return cls.from_str(
            files[TOKENIZER_FILE].decode(), meta["special_tokens"], meta.get("clean_up_tokenization_spaces", False)
        )

    def _hf_export(self) -> HFExport:
        config = {"clean_up_tokenization_spaces": self.clean_up_tokenization_spaces}
        return HFExport(self.backend, config=config)


def _post_processor_adds_bos(backend: Backend, bos_id: int | None) -> bool:
    """Whether encoding with the post-processor (as transformers does by default) puts bos before a text."""
    if bos_id is None:
        return False
    plain = backend.encode("a", add_special_tokens=False).ids
    full = backend.encode("a", add_special_tokens=True).ids
    return full[:1] == [bos_id] and full[1 : 1 + len(plain)] == plain


def _clean_up_tokenization(text: str) -> str:
    for old, new in CLEAN_UP_REPLACEMENTS:
        text = text.replace(old, new)
    return text


def is_hf_tokenizer_dir(directory: str | Path) -> bool:
    """Whether `load_hf_tokenizer` finds a tokenizer in this directory."""
    d = Path(directory)
    return (
        (d / TOKENIZER_FILE).is_file()
        or (d / VOCAB_TXT).is_file()
        or ((d / GPT2_VOCAB).is_file() and (d / GPT2_MERGES).is_file())
        or _sentencepiece_model(d) is not None
    )


def load_hf_tokenizer(directory: str | Path, lowercase: bool = True) -> Tokenizer:
    """The tokenizer in a Hugging Face tokenizer directory (a `save_pretrained` dir, a model snapshot):

    - gptframe's own files (our exports hold both): exactly that tokenizer;
    - a WordPiece tokenizer.json, or a vocab.txt: WordPieceTokenizer, uncased as tokenizer_config.json's
      do_lower_case says (else as the tokenizer.json's normaliser, else `lowercase`);
    - any other tokenizer.json: HFTokenizer;
    - vocab.json + merges.txt: GPT-2's byte-level BPE, as GPT2TokenizerFast builds it, as an HFTokenizer;
    - a SentencePiece *.model: SentencePieceTokenizer.

    Special tokens come from tokenizer_config.json and special_tokens_map.json.
    """
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise TokenizerError(f"{d} is not a directory")
    if (d / META_FILE).is_file():
        return tokenizer_from_files({f.name: f.read_bytes() for f in d.iterdir() if f.is_file()})
    config = _read_json(d / CONFIG_FILE)
    if config.get("tokenizer_class") in BUILT_BY_TRANSFORMERS:
        return _built_by_transformers(d)
    special = _special_tokens(config, _read_json(d / SPECIAL_TOKENS_FILE))
    clean_up = bool(config.get("clean_up_tokenization_spaces", False))
    is_gpt2 = str(config.get("tokenizer_class", "")).startswith("GPT2Tokenizer")
    if (d / TOKENIZER_FILE).is_file():
        text = (d / TOKENIZER_FILE).read_text(encoding="utf-8")
        try:
            tokenizer_json = json.loads(text)
        except json.JSONDecodeError as e:
            raise TokenizerError(f"{d / TOKENIZER_FILE} is not valid JSON: {e}") from None
        model = tokenizer_json.get("model") or {}
        if model.get("type") == "WordPiece" or (model.get("type") is None and "max_input_chars_per_word" in model):
            return WordPieceTokenizer.from_vocab_dict(model["vocab"], _lowercase(config, tokenizer_json, lowercase, d))
        return HFTokenizer.from_str(text, {**GPT2_DEFAULTS, **special} if is_gpt2 else special, clean_up)
    if (d / VOCAB_TXT).is_file():
        return WordPieceTokenizer.from_vocab(d / VOCAB_TXT, _lowercase(config, {}, lowercase, d))
    if (d / GPT2_VOCAB).is_file() and (d / GPT2_MERGES).is_file():
        return HFTokenizer(_gpt2_backend(d, bool(config.get("add_prefix_space", False))), {**GPT2_DEFAULTS, **special})
    if (model_file := _sentencepiece_model(d)) is not None:
        return SentencePieceTokenizer.from_model_proto(model_file.read_bytes())
    raise TokenizerError(f"no tokenizer in {d}: looked for {LOOKED_FOR}")


def _built_by_transformers(d: Path) -> HFTokenizer:
    """The pipeline `transformers.AutoTokenizer.from_pretrained(d)` encodes with, as an HFTokenizer: its ids are
    transformers' by construction (bos included, see `HFTokenizer.add_bos`)."""
    try:
        from transformers import AutoTokenizer

        built = AutoTokenizer.from_pretrained(str(d))
    except Exception as e:  # a missing or corrupt file, or a transformers without this class
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TokenizerError(f"{d}: transformers cannot build its tokenizer: {first}") from None
    backend = getattr(built, "backend_tokenizer", None)
    if not isinstance(backend, Backend):
        raise TokenizerError(f"{d}: transformers built a {type(built).__name__}, which has no tokenizers pipeline")
    special = _special_tokens(dict(built.special_tokens_map), {})
    clean_up = bool(getattr(built, "clean_up_tokenization_spaces", False))
    return HFTokenizer(Backend.from_str(backend.to_str()), special, clean_up)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path} is not valid JSON: {e}") from None
    return data if isinstance(data, dict) else {}


def _special_tokens(config: dict, special_map: dict) -> dict[str, str]:
    """kind -> token from tokenizer_config.json, else special_tokens_map.json. A token is a string or a serialised
    AddedToken ({"content": ...})."""
    out = {}
    for kind in SPECIAL_KINDS:
        value = config.get(f"{kind}_token") or special_map.get(f"{kind}_token")
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value:
            out[kind] = value
    return out


def _lowercase(config: dict, tokenizer_json: dict, default: bool, where: Path) -> bool:
    """Whether the BERT vocabulary is uncased; refuses settings WordPieceTokenizer's pipeline does not have (accents
    stripped only when lowercasing, CJK characters split), which would silently change the ids."""
    normalizer = tokenizer_json.get("normalizer") or {}
    if normalizer.get("type") != "BertNormalizer":
        normalizer = {}
    lowercase = _first(config.get("do_lower_case"), normalizer.get("lowercase"), default)
    strip_accents = _first(config.get("strip_accents"), normalizer.get("strip_accents"))
    chinese = _first(config.get("tokenize_chinese_chars"), normalizer.get("handle_chinese_chars"), True)
    if not isinstance(lowercase, bool) or strip_accents not in (None, lowercase) or chinese is not True:
        raise TokenizerError(
            f"{where}: WordPiece settings do_lower_case={lowercase}, strip_accents={strip_accents}, "
            f"tokenize_chinese_chars={chinese} are not supported (gptframe's WordPiece strips accents exactly when it "
            "lowercases and always splits CJK characters)"
        )
    return lowercase


def _first(*values):
    return next((v for v in values if v is not None), None)


def _gpt2_backend(d: Path, add_prefix_space: bool) -> Backend:
    """GPT-2's byte-level BPE from vocab.json + merges.txt, as transformers' GPT2Tokenizer(Fast) assembles it."""
    try:
        model = models.BPE.from_file(str(d / GPT2_VOCAB), str(d / GPT2_MERGES), dropout=None, fuse_unk=False)
    except Exception as e:
        raise TokenizerError(f"cannot read the GPT-2 BPE files in {d}: {e}") from None
    backend = Backend(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece_model(d: Path) -> Path | None:
    models_found = sorted(d.glob("*.model"))
    return models_found[0] if models_found else None
