"""`gptframe.pipeline(task, model=PATH)`: the shapes users know from transformers.pipeline."""

from __future__ import annotations

from pathlib import Path

import torch

from gptframe.inference.generate import generate_tokens
from gptframe.training.checkpoints import model_from_checkpoint


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TextGenerationPipeline:
    """pipe(prompt or [prompts], max_new_tokens=..., do_sample=..., ...) -> [{"generated_text": prompt + continuation}]"""

    def __init__(self, model_path: str | Path, device: str | None = None):
        self.device = resolve_device(device)
        self.model, self.tokenizer, self.meta = model_from_checkpoint(model_path, self.device)

    def __call__(
        self,
        text_inputs: str | list[str],
        max_new_tokens: int = 50,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float = 1.0,
        num_return_sequences: int = 1,
        seed: int | None = None,
        return_full_text: bool = True,
    ):
        prompts = [text_inputs] if isinstance(text_inputs, str) else list(text_inputs)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        outputs = []
        for prompt in prompts:
            ids = self.tokenizer.encode(prompt)
            if not ids:  # an empty prompt starts from a document boundary where the tokenizer has one
                ids = [self.tokenizer.eos_id if self.tokenizer.eos_id is not None else 0]
            steps = list(
                generate_tokens(
                    self.model, ids, max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k,
                    top_p=top_p, num_samples=num_return_sequences, vocab_size=self.tokenizer.vocab_size,
                    eos_id=self.tokenizer.eos_id, generator=generator,
                )
            )
            new = torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(num_return_sequences)]
            results = []
            for seq in new:
                if self.tokenizer.eos_id is not None and self.tokenizer.eos_id in seq:
                    seq = seq[: seq.index(self.tokenizer.eos_id)]
                continuation = self.tokenizer.decode(seq)
                results.append({"generated_text": (prompt if return_full_text else "") + continuation})
            outputs.append(results)
        return outputs[0] if isinstance(text_inputs, str) else outputs


PIPELINES = {"text-generation": TextGenerationPipeline}


def pipeline(task: str, model: str | Path, device: str | None = None):
    if task not in PIPELINES:
        raise ValueError(f"unknown pipeline task {task!r}; available: {sorted(PIPELINES)}")
    return PIPELINES[task](model, device=device)
