"""Llama against GPT-2 at equal size, and continuing a SmolLM-135M-shaped import on CPU.

compare: gpt_micro and llama_micro (2.19M vs 2.16M parameters at vocab 2048) pretrained on the bundled Tiny
    Shakespeare with the same SentencePiece tokenizer, data, steps and optimiser settings, for each seed, interleaved
    (gpt, llama, gpt, ...) so both arms share the machine's load. Reports the final val loss over the whole val split
    and ms per optimizer step (from tokens/s excluding validation).

    python benchmarks/bench_llama.py compare [--steps 1000] [--seeds 1337 1 2]

smollm: a random-init transformers LlamaForCausalLM of SmolLM-135M's published shape (134.5M parameters) saved with
    save_pretrained, then (1) gptframe.loading.load_model of that directory and (2) `gptframe-train
    model.init_from=DIR task=clm` for a few steps on Tiny Shakespeare: wall time and peak RSS of each, measured in
    fresh processes (GNU time).

    python benchmarks/bench_llama.py smollm [--steps 5] [--block-size 256] [--batch-size 4]

Writes benchmarks/results/llama-{compare,smollm}.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info, other_busy, write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = REPO / "benchmarks" / "results"
SMOLLM_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                   num_key_value_heads=3, max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                   tie_word_embeddings=True)


def _env() -> dict:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HYDRA_FULL_ERROR": "0"}


def train(run_dir: Path, *overrides: str) -> dict:
    summary = run_dir / "summary.json"
    if not summary.is_file():
        cmd = [str(BIN / "gptframe-train"), f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false", *overrides]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL)
    return json.loads(summary.read_text())


def compare(args) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="gptframe-bench-llama-"))
    rows = {"gpt_micro": [], "llama_micro": []}
    busy = other_busy()
    for seed in args.seeds:
        for model in rows:
            summary = train(
                work / f"{model}-{seed}", f"model={model}", "tokenizer=sentencepiece", "data=shakespeare",
                f"data.cache_dir={work / 'cache'}", f"trainer.max_steps={args.steps}", f"seed={seed}",
            )
            tokens_per_step = summary["tokens_seen"] / summary["step"]
            rows[model].append({"seed": seed, "val_loss": summary["val_loss"], "params": summary["params"],
                                "ms_per_step": 1000 * tokens_per_step / summary["tokens_per_s"]})
    report = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d"), "steps": args.steps,
              "other_processes_busy_at_start": busy, "runs": rows}
    write_report(RESULTS / "llama-compare.json", report)
    print(f"\n| model | params | val loss ({' / '.join(map(str, args.seeds))}) | mean | ms/step (mean) |")
    print("|---|---:|---|---:|---:|")
    for model, runs in rows.items():
        losses = [r["val_loss"] for r in runs]
        print(f"| {model} | {runs[0]['params']:,} | {' / '.join(f'{v:.4f}' for v in losses)} | "
              f"{statistics.mean(losses):.4f} | {statistics.mean(r['ms_per_step'] for r in runs):.1f} |")


def _timed(cmd: list[str], log: Path) -> dict:
    """Wall seconds and peak RSS (GiB) of a fresh process, from GNU time."""
    timing = log.with_suffix(".time")
    with log.open("w") as out:
        subprocess.run(["/usr/bin/time", "-v", "-o", str(timing), *cmd], check=True, cwd=REPO, env=_env(),
                       stdout=out, stderr=subprocess.STDOUT)
    text = timing.read_text()
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text).group(1)
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
    return {"wall_s": round(seconds, 1), "peak_rss_gib": round(peak_kib / 2**20, 2)}


def _smollm_dir(path: Path) -> Path:
    import torch
    import transformers

    sys.path.insert(0, str(REPO))
    from tests.unit.test_llama_tokenizers import byte_level_dir

    byte_level_dir(path, bos_template=True, config={})
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMOLLM_135M, bos_token_id=0, eos_token_id=1))
    model.save_pretrained(path)
    return path


def smollm(args) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="gptframe-bench-smollm-"))
    source = work / "smollm_135m"
    if not (source / "config.json").is_file():
        _smollm_dir(source)
    load = [str(BIN / "python"), "-c",
            f"from gptframe.loading import load_model; m = load_model({str(source)!r}).model; "
            "print(sum(p.numel() for p in m.parameters()))"]
    busy = other_busy()
    imported = _timed(load, work / "import.log")
    params = int((work / "import.log").read_text().split()[-1])
    run_dir = work / "continued"
    train_cmd = [str(BIN / "gptframe-train"), f"hydra.run.dir={run_dir}", f"model.init_from={source}", "task=clm",
                 "data=shakespeare", f"data.cache_dir={work / 'cache'}", f"data.block_size={args.block_size}",
                 f"data.batch_size={args.batch_size}", f"trainer.max_steps={args.steps}",
                 f"trainer.val_check_interval={args.steps}", "trainer.final_eval_batches=4",
                 "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "resume=null"]
    continued = _timed(train_cmd, work / "train.log")
    summary = json.loads((run_dir / "summary.json").read_text())
    tokens_per_step = summary["tokens_seen"] / summary["step"]
    report = {
        "machine": machine_info(), "date": time.strftime("%Y-%m-%d"), "other_processes_busy_at_start": busy,
        "params": params, "import": imported,
        "continue": {**continued, "steps": summary["step"], "block_size": args.block_size, "batch_size": args.batch_size,
                     "s_per_step": round(tokens_per_step / summary["tokens_per_s"], 2), "val_loss": summary["val_loss"]},
    }
    write_report(RESULTS / "llama-smollm.json", report)
    print(f"\n| SmolLM-135M shape ({params:,} params) | wall | peak RSS |\n|---|---:|---:|")
    print(f"| import (load_model) | {imported['wall_s']} s | {imported['peak_rss_gib']} GiB |")
    print(f"| gptframe-train init_from, {summary['step']} steps of {args.batch_size} x {args.block_size} | "
          f"{continued['wall_s']} s ({report['continue']['s_per_step']} s/step) | {continued['peak_rss_gib']} GiB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compare")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    p.add_argument("--work")
    p = sub.add_parser("smollm")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--work")
    args = parser.parse_args()
    {"compare": compare, "smollm": smollm}[args.command](args)


if __name__ == "__main__":
    main()
