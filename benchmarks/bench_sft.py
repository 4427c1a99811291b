"""Instruction tuning after pretraining: response val loss before and after task=sft, and a few generated answers.

    .venv/bin/python benchmarks/bench_sft.py [--sft-data ../shared/data/sft/alpaca_en_demo.json] [--dir outputs/bench-sft]
        [--model llama_micro] [--pretrain-ckpt PATH] [--pretrain-steps 600] [--sft-epochs 2] [KEY=VALUE ...]

1. Splits the Alpaca-style file (seeded): 10% validation, the rest training (JSON arrays in --dir).
2. Pretrains --model (conf/model/, default llama_micro; SentencePiece 2048, context --block-size) on the bundled Tiny Shakespeare, unless --pretrain-ckpt.
3. "Before": the pretrained model's mean cross-entropy per response token on the val split, rendered with the ChatML
   template it gets for SFT (the two new embedding rows at the mean of the old ones, as init_from sets them).
4. gptframe-train task=sft model.init_from=<pretrained> on the split; "after" is its summary's val loss (the same
   quantity, computed by the task), checked against step 3's function on the fine-tuned checkpoint.
5. Greedy answers of the fine-tuned model to the first val prompts. Writes results.json in --dir.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def split(path: Path, out: Path, val_fraction: float, seed: int) -> tuple[Path, Path]:
    records = json.loads(path.read_text())
    order = np.random.default_rng(seed).permutation(len(records))
    n_val = round(len(records) * val_fraction)
    out.mkdir(parents=True, exist_ok=True)
    files = out / "train.json", out / "val.json"
    files[0].write_text(json.dumps([records[i] for i in sorted(order[n_val:])]))
    files[1].write_text(json.dumps([records[i] for i in sorted(order[:n_val])]))
    return files


def train(*args: str) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([str(BIN / "gptframe-train"), *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    run_dir = next(a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir="))
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    summary["bench_wall_s"] = time.perf_counter() - t
    return summary


@torch.no_grad()
def response_loss(ckpt: str, val: Path, block_size: int) -> float:
    """Mean cross-entropy per response token of `ckpt` on `val` (chat-templated, as task=sft validates)."""
    from data_pipelines.sft import build_sft_data
    from data_pipelines.tokenizers.chat import with_chat_template
    from gptframe.loading import load_model
    from gptframe.models.factory import build_model, transfer_weights
    from gptframe.tasks.sft import chat_model_config

    loaded = load_model(ckpt)
    tokenizer = with_chat_template(loaded.tokenizer)
    model = build_model("clm", chat_model_config(loaded.config, tokenizer))
    transfer_weights(loaded.model, model)  # what init_from does: old rows kept, ChatML rows at their mean
    model.eval()
    rows = build_sft_data(val, tokenizer, block_size).rows
    total, count = 0.0, 0
    for start in range(0, len(rows), 16):
        batch = rows[list(range(start, min(start + 16, len(rows))))]
        logits = model(batch["input_ids"], position_ids=batch["position_ids"])
        total += F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="sum").item()
        count += int(batch["num_loss_tokens"])
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft-data", default=str(REPO.parent / "shared" / "data" / "sft" / "alpaca_en_demo.json"))
    parser.add_argument("--dir", default="outputs/bench-sft")
    parser.add_argument("--model", default="llama_micro", help="a decoder preset of conf/model/")
    parser.add_argument("--pretrain-ckpt", default=None)
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--block-size", type=int, default=128, help="the pretrained model's context")
    parser.add_argument("--sft-epochs", type=int, default=2)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--answers", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="extra gptframe-train overrides of the SFT stage")
    args = parser.parse_args()
    out = (REPO / args.dir).resolve()
    train_file, val_file = split(Path(args.sft_data), out / "data", args.val_fraction, seed=0)
    quiet = ["trainer.enable_progress_bar=false", "trainer.accelerator=cpu"]
    pretrain = None
    ckpt = args.pretrain_ckpt
    if ckpt is None:
        pretrain = train("task=clm", f"model={args.model}", f"model.block_size={args.block_size}",
                         "tokenizer=sentencepiece", f"trainer.max_steps={args.pretrain_steps}",
                         f"trainer.val_check_interval={args.pretrain_steps}",
                         f"hydra.run.dir={out / 'pretrain'}", "resume=auto", *quiet)
        ckpt = pretrain["checkpoint"]
    from gptframe.loading import load_model

    block_size = load_model(ckpt).spec.context_length(load_model(ckpt).config)
    before = response_loss(ckpt, val_file, block_size)
    sft = train("task=sft", f"model.init_from={ckpt}", f"data.train_path={train_file}", f"data.val_path={val_file}",
                f"trainer.max_epochs={args.sft_epochs}", "data.batch_size=8", f"hydra.run.dir={out / 'sft'}",
                "resume=auto", *quiet, *args.overrides)
    after_check = response_loss(sft["checkpoint"], val_file, block_size)

    import gptframe
    from data_pipelines.sft import read_conversations

    chat = gptframe.pipeline("text-generation", model=sft["checkpoint"], device="cpu")
    prompts = [c.messages[:-1] for c in read_conversations(val_file)[: args.answers]]
    answers = [o[0]["generated_text"] for o in chat(prompts, max_new_tokens=64, return_full_text=False,
                                                    repetition_penalty=1.2)]
    results = {
        "model": args.model if pretrain else None, "pretrain_checkpoint": ckpt, "pretrain_steps": pretrain["step"] if pretrain else None,
        "pretrain_val_loss": pretrain["val_loss"] if pretrain else None,
        "pretrain_wall_s": pretrain["bench_wall_s"] if pretrain else None,
        "sft_examples": sft["sft_examples"], "sft_steps": sft["step"], "sft_wall_s": sft["bench_wall_s"],
        "response_val_loss_before": before, "response_val_loss_after": sft["val_loss"],
        "response_val_loss_after_recomputed": after_check,
        "answers": [{"prompt": p[-1]["content"], "answer": a} for p, a in zip(prompts, answers, strict=True)],
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
