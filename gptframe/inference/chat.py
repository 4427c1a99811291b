"""Chat at inference: a conversation's next assistant turn, rendered and encoded exactly as SFT trained on it
(`data_pipelines.sft.ChatTemplate`), generated with any decoding strategy until the end of the turn."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from data_pipelines.sft import ChatTemplate
from data_pipelines.tokenizers import Tokenizer
from data_pipelines.tokenizers.chat import end_of_turn_ids
from gptframe.inference.decoding import GenerationSettings, generate


def chat_replies(
    model,
    tokenizer: Tokenizer,
    conversations: Sequence[Sequence[dict]],
    settings: GenerationSettings,
    *,
    generator: torch.Generator | None = None,
) -> list[list[str]]:
    """Per conversation ([{role, content}, ...], ending with a user turn), num_return_sequences assistant replies.

    The tokenizer must carry a chat template (`data_pipelines.tokenizers.with_chat_template`, as SFT used it). Unless
    the settings name end tokens, a reply ends at the template's end-of-turn token or eos (`end_of_turn_ids`); the end
    token is not part of the returned text. vocab_size defaults to the tokenizer's.
    """
    template = ChatTemplate(tokenizer)
    if settings.eos_token_id is None:
        settings = replace(settings, eos_token_id=end_of_turn_ids(tokenizer) or None)
    if settings.vocab_size is None:
        settings = replace(settings, vocab_size=tokenizer.vocab_size)
    prompts = [template.prompt_ids(messages) for messages in conversations]
    outputs = generate(model, prompts, settings, generator=generator, decode=tokenizer.decode)
    ends = set(settings.eos_ids)
    return [[tokenizer.decode(seq[:-1] if seq and seq[-1] in ends else seq) for seq in rows] for rows in outputs]
