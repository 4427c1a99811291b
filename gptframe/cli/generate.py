"""gptframe-generate ckpt=PATH prompt="ROMEO:" max_new_tokens=200 temperature=0.8 top_k=200 do_sample=true ...

Arguments are key=value like Hydra overrides, checked against GenerateConfig (unknown keys and bad types fail),
but values are taken verbatim, so prompts may hold colons, spaces and quotes.
"""

from __future__ import annotations

import sys

import torch

from gptframe.cli.common import parse_key_values, user_errors_exit
from gptframe.config import GenerateConfig

PROGRAM = "gptframe-generate"


def parse_args(argv: list[str]) -> GenerateConfig:
    return parse_key_values(argv, GenerateConfig, verbatim=("prompt",))


def main(argv: list[str] | None = None) -> None:
    with user_errors_exit(PROGRAM):
        cfg = parse_args(sys.argv[1:] if argv is None else argv)
        from gptframe.inference.generate import TextStreamer, encode_prompt, generate_tokens
        from gptframe.inference.pipelines import resolve_device
        from gptframe.loading import load_model, require_task

        device = resolve_device(cfg.device)
        loaded = load_model(cfg.ckpt, device)
        require_task(loaded, "clm", "gptframe-generate", cfg.ckpt, causal=True)
        model, tokenizer = loaded.model, loaded.tokenizer
        ids = encode_prompt(tokenizer, cfg.prompt)
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
        for i in range(cfg.num_samples):
            if cfg.num_samples > 1:
                print(f"--- sample {i + 1}/{cfg.num_samples}")
            streamer = TextStreamer(tokenizer.decode)
            sys.stdout.write(cfg.prompt)
            for token in generate_tokens(
                model, ids, cfg.max_new_tokens, do_sample=cfg.do_sample, temperature=cfg.temperature,
                top_k=cfg.top_k, top_p=cfg.top_p, vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id,
                generator=generator,
            ):
                token = int(token[0])
                if token == tokenizer.eos_id:
                    break
                delta = streamer.put(token)
                if delta and cfg.stream:
                    sys.stdout.write(delta)
                    sys.stdout.flush()
            if not cfg.stream:
                sys.stdout.write(tokenizer.decode(streamer.ids))
            sys.stdout.write(streamer.end() + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
