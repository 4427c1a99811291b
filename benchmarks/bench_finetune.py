"""Does pretraining help? Fine-tuned accuracy on the Shakespeare speaker task, pretrained vs from scratch.

For an architecture (gpt or bert):
1. run `launch/pipeline.sh ARCH` (skipped stages are reused): the speaker task, pretraining on Tiny Shakespeare
   without the validation passages, fine-tuning from that checkpoint;
2. fine-tune again from the same pretrained checkpoint with other seeds, and from a random initialisation of the
   same architecture with the same tokenizer, at the same fine-tuning budget: every task/trainer/data setting is read
   from the pipeline's fine-tuning config, so both arms run the identical recipe;
3. report accuracy and macro-F1 per seed, their mean, and the majority-class baseline (the most frequent training
   speaker predicted for every passage).

    python benchmarks/bench_finetune.py gpt [--seeds 1337 1 2]
    python benchmarks/bench_finetune.py bert pretrain.task.lr=5e-4 --seeds 1337   # overrides go to the pipeline

Writes benchmarks/results/finetune-ARCH.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# the fine-tuning settings copied from the pipeline's run so both arms share them
SHARED_KEYS = ("task.lr", "task.min_lr", "task.weight_decay", "task.warmup_steps", "task.max_seq_len",
               "trainer.max_epochs", "trainer.accumulate_grad_batches", "data.batch_size")
MODEL_GROUP = {"gpt": "gpt_micro", "bert": "bert_tiny"}


def run(cmd: list[str]) -> None:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)


def finetune(out: Path, task_dir: Path, shared: list[str], seed: int, init: list[str]) -> dict:
    summary = out / "summary.json"
    if not summary.is_file():
        run([str(BIN / "gptframe-train"), f"hydra.run.dir={out}", "resume=auto", "task=classification", f"seed={seed}",
             f"data.train_path={task_dir}/train.jsonl", f"data.val_path={task_dir}/val.jsonl",
             "trainer.enable_progress_bar=false", *init, *shared])
    return json.loads(summary.read_text())


def _hydra_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("arch", choices=["gpt", "bert"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    parser.add_argument("--dir", type=Path, default=None, help="pipeline dir (default outputs/pipeline-ARCH)")
    parser.add_argument("overrides", nargs="*", help="passed to launch/pipeline.sh (e.g. pretrain.task.lr=5e-4)")
    args = parser.parse_args()
    pipe = (args.dir or REPO / "outputs" / f"pipeline-{args.arch}").resolve()
    run(["bash", "launch/pipeline.sh", args.arch, f"pipeline.dir={pipe}", *args.overrides])

    task_dir, pretrain, tuned = pipe / "data", pipe / "pretrain", pipe / "finetune"
    stats = json.loads((task_dir / "stats.json").read_text())
    config = OmegaConf.load(tuned / "config.yaml")
    shared = [f"{key}={_hydra_value(OmegaConf.select(config, key))}" for key in SHARED_KEYS]
    pre_cfg = OmegaConf.load(pretrain / "config.yaml")
    tokenizer = [f"tokenizer.kind={pre_cfg.tokenizer.kind}", f"tokenizer.path={pretrain}/tokenizer"]
    scratch_model = [f"model={MODEL_GROUP[args.arch]}"] + [
        f"model.{k}={_hydra_value(v)}" for k, v in OmegaConf.to_container(pre_cfg.model).items() if k != "init_from"
    ]
    arms = {
        "pretrained": [f"model.init_from={pretrain}/checkpoints/last.ckpt"],
        "scratch": [*scratch_model, *tokenizer],
    }
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    bench_dir = pipe / "bench"
    for arm, init in arms.items():
        for seed in args.seeds:
            if arm == "pretrained" and seed == 1337:
                s = json.loads((tuned / "summary.json").read_text())  # the pipeline's own run
            else:
                s = finetune(bench_dir / f"{arm}-seed{seed}", task_dir, shared, seed, init)
            results[arm].append({"seed": seed, "val_accuracy": s["val_accuracy"], "val_f1": s["val_f1"],
                                 "steps": s["step"], "wall_s": s["wall_s"], "params": s["params"]})
    report = {
        "arch": args.arch,
        "pretrain": json.loads((pretrain / "summary.json").read_text()),
        "finetune_settings": shared,
        "majority_baseline_accuracy": stats["majority_baseline_accuracy"],
        "num_labels": len(stats["speakers"]),
        "num_val": stats["num_val"],
        "results": results,
        "mean": {arm: {m: statistics.mean(r[m] for r in rows) for m in ("val_accuracy", "val_f1")}
                 for arm, rows in results.items()},
    }
    out = REPO / "benchmarks" / "results" / f"finetune-{args.arch}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\n| {args.arch} | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean acc | mean macro-F1 |")
    print("|---|" + "---:|" * (len(args.seeds) + 2))
    for arm, rows in results.items():
        accs = " | ".join(f"{r['val_accuracy']:.3f}" for r in rows)
        print(f"| {arm} | {accs} | {report['mean'][arm]['val_accuracy']:.3f} | {report['mean'][arm]['val_f1']:.3f} |")
    print("| majority baseline |" + " |" * len(args.seeds) + f" {stats['majority_baseline_accuracy']:.3f} | |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
