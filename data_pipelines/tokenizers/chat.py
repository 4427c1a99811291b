"""A tokenizer with a chat template: any tokenizer kind plus the template's special tokens, appended after its vocabulary.

Tokenizers imported with their own Jinja `chat_template` (a Hugging Face directory) keep it (`Tokenizer.chat_template`);
any other gets gptframe's default, ChatML (as Qwen and many fine-tuned models use it):

    <|im_start|>system
    You are helpful.<|im_end|>
    <|im_start|>user
    Hi!<|im_end|>
    <|im_start|>assistant
    Hello.<|im_end|>

`<|im_start|>` and `<|im_end|>` become new special tokens (ids vocab_size and vocab_size + 1, so the model's embedding
grows by two rows); `<|im_end|>` ends an assistant turn, so generation stops on it (`end_of_turn_id`). The template and
the tokens travel in the tokenizer's files (`to_files`) and in its Hugging Face export (`to_hf_files`: tokenizer.json's
added tokens, tokenizer_config.json's `chat_template`), so `transformers`' `apply_chat_template` on the export renders
and encodes a conversation exactly as gptframe does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from tokenizers import AddedToken
from tokenizers import Tokenizer as Backend

from data_pipelines.errors import TokenizerError
from data_pipelines.tokenizers.base import META_FILE, HFExport, Tokenizer, tokenizer_from_files

CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BASE_META = "base_tokenizer"
# the base's own files, renamed: a Hugging Face base's tokenizer.json must not clash with the export's, which holds the
# chat tokens too (both sets of files go into one export directory)
BASE_PREFIX = "chat_base."


class ChatTokenizer(Tokenizer):
    """`base` plus special `added_tokens` (ids from base.vocab_size on, matched in text before `base` encodes the rest)
    and a Jinja `chat_template`. Special ids (eos, pad, ...) are the base's."""

    kind = "chat"

    def __init__(self, base: Tokenizer, chat_template: str, added_tokens: list[str], end_of_turn: str | None):
        if isinstance(base, ChatTokenizer):
            raise TokenizerError("the tokenizer already has chat tokens")
        if end_of_turn is not None and end_of_turn not in added_tokens:
            raise TokenizerError(f"end_of_turn {end_of_turn!r} must be one of the added tokens {added_tokens}")
        self.base = base
        self._chat_template = chat_template
        self.added_tokens = list(added_tokens)
        self.end_of_turn = end_of_turn
        self._added_ids = {t: base.vocab_size + i for i, t in enumerate(self.added_tokens)}
        longest_first = sorted(self.added_tokens, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")")

    @classmethod
    def chatml(cls, base: Tokenizer) -> ChatTokenizer:
        return cls(base, CHATML_TEMPLATE, [CHATML_START, CHATML_END], CHATML_END)

    @property
    def chat_template(self) -> str:
        return self._chat_template

    @property
    def end_of_turn_id(self) -> int | None:
        return None if self.end_of_turn is None else self._added_ids[self.end_of_turn]

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size + len(self.added_tokens)

    @property
    def bos_id(self) -> int | None:
        return self.base.bos_id

    @property
    def eos_id(self) -> int | None:
        return self.base.eos_id

    @property
    def pad_id(self) -> int | None:
        return self.base.pad_id

    @property
    def unk_id(self) -> int | None:
        return self.base.unk_id

    @property
    def cls_id(self) -> int | None:
        return self.base.cls_id

    @property
    def sep_id(self) -> int | None:
        return self.base.sep_id

    @property
    def mask_id(self) -> int | None:
        return self.base.mask_id

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, piece in enumerate(self._split.split(text)):
            if i % 2:  # the split's odd pieces are the added tokens
                ids.append(self._added_ids[piece])
            elif piece:
                ids.extend(self.base.encode(piece))
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """As `encode`, with each id's character span: an added token spans its text, the rest are the base's spans
        shifted to where their piece starts."""
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        start = 0
        for i, piece in enumerate(self._split.split(text)):
            if i % 2:
                ids.append(self._added_ids[piece])
                offsets.append((start, start + len(piece)))
            elif piece:
                piece_ids, piece_offsets = self.base.encode_with_offsets(piece)
                ids.extend(piece_ids)
                offsets.extend((start + a, start + b) for a, b in piece_offsets)
            start += len(piece)
        return ids, offsets

    def decode(self, ids: Iterable[int]) -> str:
        out, run = [], []
        for i in ids:
            if i < self.base.vocab_size:
                run.append(i)
                continue
            if i >= self.vocab_size or i < 0:
                raise TokenizerError(f"token id {i} out of range for a vocabulary of {self.vocab_size}")
            out.append(self.base.decode(run) if run else "")
            out.append(self.added_tokens[i - self.base.vocab_size])
            run = []
        out.append(self.base.decode(run) if run else "")
        return "".join(out)

    def _state(self) -> tuple[dict, dict[str, bytes]]:
        base_files = self.base.to_files()
        meta = {
            BASE_META: json.loads(base_files.pop(META_FILE)),
            "chat_template": self._chat_template,
            "added_tokens": self.added_tokens,
            "end_of_turn": self.end_of_turn,
        }
        return meta, {BASE_PREFIX + name: data for name, data in base_files.items()}

    @classmethod
    def _from_state(cls, meta: dict, files: dict[str, bytes]) -> ChatTokenizer:
        base_files = {n[len(BASE_PREFIX) :]: data for n, data in files.items() if n.startswith(BASE_PREFIX)}
        base = tokenizer_from_files({META_FILE: json.dumps(meta[BASE_META]).encode(), **base_files})
        return cls(base, meta["chat_template"], meta["added_tokens"], meta.get("end_of_turn"))

    def _hf_export(self) -> HFExport:
        export = self.base._hf_export()
        backend = Backend.from_str(export.backend.to_str())
        if backend.get_vocab_size(with_added_tokens=True) != self.base.vocab_size:
            raise TokenizerError(
                f"cannot export chat tokens: the {self.base.kind} tokenizer's Hugging Face pipeline has "
                f"{backend.get_vocab_size(with_added_tokens=True)} tokens, not {self.base.vocab_size}"
            )
        # appended in order, so they get the ids encode() gives them
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in self.added_tokens])
        if any(backend.token_to_id(t) != i for t, i in self._added_ids.items()):
            raise TokenizerError(f"cannot export chat tokens {self.added_tokens}: the vocabulary already holds some")
        config = {**export.config, "chat_template": self._chat_template}
        return HFExport(backend, export.tokenizer_class, config, export.files)


def with_chat_template(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer itself when it has a chat template (its own, e.g. imported from Hugging Face), else the tokenizer
    with gptframe's default ChatML template and its two special tokens (`ChatTokenizer.chatml`)."""
    if tokenizer.chat_template is not None:
        return tokenizer
    return ChatTokenizer.chatml(tokenizer)


def end_of_turn_ids(tokenizer: Tokenizer) -> list[int]:
    """The ids that end an assistant turn in generation: the template's end-of-turn token and eos (where they exist)."""
    ids = [getattr(tokenizer, "end_of_turn_id", None), tokenizer.eos_id]
    return list(dict.fromkeys(i for i in ids if i is not None))
