"""Streaming generation for the CLI and the pipeline: `generate_tokens` (all decoding strategies live in
`gptframe.inference.decoding`) and `TextStreamer`, which turns streamed ids into printable text."""

from __future__ import annotations

from gptframe.inference.decoding import filter_logits, generate_tokens

__all__ = ["TextStreamer", "encode_prompt", "filter_logits", "generate_tokens"]


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """A prompt as the model reads a document's start (bos first for Llama's tokenizers); an empty prompt starts
    from a document boundary (end-of-text) where the tokenizer has one."""
    return tokenizer.encode_document(prompt) or [tokenizer.eos_id if tokenizer.eos_id is not None else 0]


class TextStreamer:
    """Turns a growing list of ids into printable text deltas; holds back incomplete UTF-8 (byte-fallback) tails."""

    def __init__(self, decode):
        self.decode = decode
        self.ids: list[int] = []
        self.printed = 0

    def put(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        delta = text[self.printed :]
        self.printed = len(text)
        return delta

    def end(self) -> str:
        text = self.decode(self.ids)
        delta = text[self.printed :]
        self.printed = len(text)
        return delta
