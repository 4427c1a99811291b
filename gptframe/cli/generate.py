"""gptframe-generate ckpt=PATH prompt="ROMEO:" max_new_tokens=200 temperature=0.8 top_k=200 do_sample=true ...

Arguments are key=value like Hydra overrides, checked against GenerateConfig (unknown keys and bad types fail),
but values are taken verbatim, so prompts may hold colons, spaces and quotes. `chat=true` sends the prompt as a user
message through the model's chat template and prints the assistant's reply; num_beams, repetition_penalty,
no_repeat_ngram_size, min_new_tokens, eos_token_id and stop_strings pick the decoding strategy (beam search prints
its result at the end; the others stream).
"""

from __future__ import annotations

import sys
from dataclasses import replace

import torch

from gptframe.cli.common import parse_key_values, user_errors_exit
from gptframe.config import GenerateConfig

PROGRAM = "gptframe-generate"


def parse_args(argv: list[str]) -> GenerateConfig:
    return parse_key_values(argv, GenerateConfig, verbatim=("prompt", "system"))


def main(argv: list[str] | None = None) -> None:
    with user_errors_exit(PROGRAM):
        cfg = parse_args(sys.argv[1:] if argv is None else argv)
        from gptframe.inference.pipelines import resolve_device
        from gptframe.loading import load_model, require_task

        device = resolve_device(cfg.device)
        loaded = load_model(cfg.ckpt, device)
        require_task(loaded, "clm", "gptframe-generate", cfg.ckpt, causal=True)
        model, tokenizer = loaded.model, loaded.tokenizer
        ids, echo, settings = _prompt(cfg, tokenizer)
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        for i in range(cfg.num_samples):
            if cfg.num_samples > 1:
                print(f"--- sample {i + 1}/{cfg.num_samples}")
            sys.stdout.write(echo)
            _write_continuation(model, tokenizer, ids, settings, generator, cfg.stream)
            sys.stdout.flush()


def _prompt(cfg: GenerateConfig, tokenizer):
    """(prompt ids, the text echoed before the continuation, GenerationSettings)."""
    from data_pipelines.sft import ChatTemplate
    from data_pipelines.tokenizers.chat import end_of_turn_ids
    from gptframe.errors import ConfigError
    from gptframe.inference.decoding import GenerationSettings
    from gptframe.inference.generate import encode_prompt

    settings = GenerationSettings(
        max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample, temperature=cfg.temperature, top_k=cfg.top_k,
        top_p=cfg.top_p, num_beams=cfg.num_beams, length_penalty=cfg.length_penalty,
        early_stopping=cfg.early_stopping, repetition_penalty=cfg.repetition_penalty,
        no_repeat_ngram_size=cfg.no_repeat_ngram_size, min_new_tokens=cfg.min_new_tokens,
        eos_token_id=cfg.eos_token_id, stop_strings=list(cfg.stop_strings), vocab_size=tokenizer.vocab_size,
    )
    if not cfg.chat:
        if settings.eos_token_id is None and tokenizer.eos_id is not None:
            settings = replace(settings, eos_token_id=tokenizer.eos_id)
        return encode_prompt(tokenizer, cfg.prompt), cfg.prompt, settings
    if tokenizer.chat_template is None:
        raise ConfigError(f"chat=true: {cfg.ckpt} has no chat template (fine-tune it with task=sft, which adds one)")
    messages = [{"role": "system", "content": cfg.system}] if cfg.system else []
    messages.append({"role": "user", "content": cfg.prompt})
    if settings.eos_token_id is None:
        settings = replace(settings, eos_token_id=end_of_turn_ids(tokenizer) or None)
    return ChatTemplate(tokenizer).prompt_ids(messages), "", settings


def _write_continuation(model, tokenizer, ids, settings, generator, stream: bool) -> None:
    from gptframe.inference.decoding import generate, stream_tokens
    from gptframe.inference.generate import TextStreamer

    ends = set(settings.eos_ids)
    if settings.num_beams > 1:  # beam search ranks whole sequences: nothing is final before the end
        seq = generate(model, [ids], settings, decode=tokenizer.decode)[0][0]
        sys.stdout.write(tokenizer.decode(seq[:-1] if seq and seq[-1] in ends else seq) + "\n")
        return
    streamer = TextStreamer(tokenizer.decode)
    for step in stream_tokens(model, [ids], settings, generator=generator, decode=tokenizer.decode):
        token = int(step[0])
        if token in ends:
            break
        delta = streamer.put(token)
        if delta and stream:
            sys.stdout.write(delta)
            sys.stdout.flush()
    if not stream:
        sys.stdout.write(tokenizer.decode(streamer.ids))
    sys.stdout.write(streamer.end() + "\n")


if __name__ == "__main__":
    main()
