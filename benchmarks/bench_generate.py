"""Generation speed: gptframe's decoding with and without the KV cache, and beam search, against transformers'
`generate` on the same exported model and the same prompts, side by side in one run.

The model is gpt_mini's shape (6 layers, 6 heads, 384 wide, context 256) with GPT-2's biases and tanh GELU, so that
transformers' GPT2LMHeadModel computes the same function; a SentencePiece tokenizer (vocab 2048) trained on Tiny
Shakespeare. Weights are a seeded random initialisation (speed does not depend on them; no end token is ever reached,
so every run produces exactly max_new_tokens per sequence). The gptframe model is exported with gptframe-export's code
path and both libraries load that directory. Each case checks that both produced the same tokens.

tokens/s = new tokens of the returned sequences (prompts x max_new_tokens; beam search: the best beam per prompt) /
wall time of the whole call, prompt processing included; the median of --rounds rounds after one warm-up call,
gptframe and transformers alternating every round.

    python benchmarks/bench_generate.py [--new-tokens 128] [--rounds 3]

Writes benchmarks/results/generate.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import CpuWatch, machine_info, wait_until_idle, write_report  # noqa: E402

PROMPTS = [
    "ROMEO:\nBut, soft! what light through yonder window breaks?",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "KING RICHARD III:\nNow is the winter of our discontent\nMade glorious summer by this sun of York;",
    "JULIET:\nO Romeo,",
]
# (case, prompts used, gptframe GenerationSettings fields); transformers gets the same
CASES = [
    ("greedy, 1 prompt", 1, dict()),
    ("greedy, batch of 4 (left-padded)", 4, dict()),
    ("beam search (4 beams), 1 prompt", 1, dict(num_beams=4)),
    ("beam search (4 beams), batch of 4", 4, dict(num_beams=4)),
]


def build_export(directory: Path) -> Path:
    from data_pipelines import TINY_SHAKESPEARE
    from data_pipelines.tokenizers import SentencePieceTokenizer
    from gptframe.interop.hf import export_model
    from gptframe.loading import LoadedModel
    from gptframe.models.gpt import GPT, GPTConfig

    lines = TINY_SHAKESPEARE.read_text(encoding="utf-8").splitlines()
    tokenizer = SentencePieceTokenizer.train(lambda: lines, vocab_size=2048)
    config = GPTConfig(block_size=256, vocab_size=tokenizer.vocab_size, n_layer=6, n_head=6, n_embd=384, bias=True,
                       activation="gelu_tanh")
    torch.manual_seed(1337)
    return export_model(LoadedModel(GPT(config).eval(), tokenizer, "clm", config), directory / "export")


def timed_pair(ours, theirs, rounds: int) -> tuple[float, float, object, object]:
    """Median seconds of each, alternating ours and theirs every round (after one warm-up call each), so that a
    change in what else runs on the machine hits both alike."""
    ours(), theirs()
    times = ([], [])
    outs = [None, None]
    for _ in range(rounds):
        for i, fn in enumerate((ours, theirs)):
            t0 = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1]), outs[0], outs[1]


def ours_fn(model, prompts, settings):
    from gptframe.inference.decoding import generate

    return lambda: [rows[0] for rows in generate(model, prompts, settings)]


def theirs_fn(hf, prompts, new_tokens, num_beams, use_cache, pad_id, eos_id):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    def run():
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              do_sample=False, num_beams=num_beams, use_cache=use_cache, pad_token_id=pad_id,
                              eos_token_id=eos_id)
        return out[:, width:].tolist()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--wait-idle", type=float, default=120.0, help="seconds to wait for other busy processes")
    args = parser.parse_args()

    import transformers

    from gptframe.inference.decoding import GenerationSettings
    from gptframe.loading import load_model

    torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        export = build_export(Path(tmp))
        loaded = load_model(export)
        hf = transformers.GPT2LMHeadModel.from_pretrained(export).eval()
    tokenizer = loaded.tokenizer
    pad = tokenizer.pad_id
    rows = []
    waited, busy = wait_until_idle(args.wait_idle)
    with CpuWatch() as watch:
        for name, n_prompts, options in CASES:
            prompts = [tokenizer.encode(p) for p in PROMPTS[:n_prompts]]
            new_tokens = n_prompts * args.new_tokens
            beams = options.get("num_beams", 1)
            row = {"case": name, "new_tokens": new_tokens}
            for cache in (True, False):
                # min_new_tokens = max_new_tokens: both generate the full length, whatever the random weights say
                settings = GenerationSettings(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                              eos_token_id=tokenizer.eos_id, use_cache=cache, pad_token_id=pad,
                                              **options)
                s_ours, s_theirs, got, expected = timed_pair(
                    ours_fn(loaded.model, prompts, settings),
                    theirs_fn(hf, prompts, args.new_tokens, beams, cache, pad, tokenizer.eos_id),
                    args.rounds,
                )
                key = "cache" if cache else "no_cache"
                row[f"gptframe_{key}"] = round(new_tokens / s_ours, 1)
                row[f"transformers_{key}"] = round(new_tokens / s_theirs, 1)
                row[f"same_tokens_{key}"] = got == expected
                print(name, key, row, flush=True)
            rows.append(row)
    report = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
              "new_tokens_per_prompt": args.new_tokens, "rounds": args.rounds, "waited_s": round(waited, 1),
              "busy_at_start": busy, "other_cpu": watch.summary(), "rows": rows}
    write_report(Path(__file__).resolve().parent / "results" / "generate.json", report)
    print("\n| case | gptframe, KV cache | gptframe, no cache | transformers, KV cache | transformers, no cache | "
          "same tokens |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        same = "yes" if r["same_tokens_cache"] and r["same_tokens_no_cache"] else "NO"
        print(f"| {r['case']} | {r['gptframe_cache']:,} | {r['gptframe_no_cache']:,} | {r['transformers_cache']:,} | "
              f"{r['transformers_no_cache']:,} | {same} |")


if __name__ == "__main__":
    main()
