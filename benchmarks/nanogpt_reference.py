"""nanoGPT's own training loop, call for call, driving gptframe's GPT module: the reference for
`experiment=shakespeare_char_cpu`.

Reproduces `python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
--dropout=0.0`: the same seed, the same order of RNG draws (model init, `torch.randint` batches, `estimate_loss` at
step 0 and every 250 steps), the same optimizer and schedule. gptframe's GPT creates and initialises its modules in
nanoGPT's order, so this run is nanoGPT's run.

It prints nanoGPT's val-loss estimate (20 random batches) at every evaluation, and finally the loss of the same final
model over the whole val split (all non-overlapping blocks), which is what gptframe's summary.json reports.

    .venv/bin/python benchmarks/nanogpt_reference.py [--seed 1337] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from data_pipelines import TINY_SHAKESPEARE
from data_pipelines.config import DataConfig, TokenizerConfig
from data_pipelines.prepare import prepare
from data_pipelines.sampling import EvalBlockSampler
from gptframe.models.gpt import GPT, GPTConfig
from gptframe.training.optim import decay_param_groups

BLOCK, BATCH, EVAL_ITERS, EVAL_INTERVAL, MAX_ITERS = 64, 12, 20, 250, 2000
LR, MIN_LR, WARMUP, DECAY = 1e-3, 1e-4, 100, 2000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    cache = args.cache_dir or tempfile.mkdtemp()
    tok, prepared = prepare(DataConfig(path=str(TINY_SHAKESPEARE), cache_dir=cache), TokenizerConfig(kind="char"))
    train_path, val_path = prepared.directory / "train.bin", prepared.directory / "val.bin"

    torch.manual_seed(args.seed)

    def get_batch(split):  # nanoGPT's get_batch (memmap recreated each call)
        data = np.memmap(train_path if split == "train" else val_path, dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - BLOCK, (BATCH,))
        x = torch.stack([torch.from_numpy((data[i : i + BLOCK]).astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy((data[i + 1 : i + 1 + BLOCK]).astype(np.int64)) for i in ix])
        return x, y

    cfg = GPTConfig(block_size=BLOCK, vocab_size=tok.vocab_size, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
                    bias=False, activation="gelu")
    model = GPT(cfg)
    optimizer = torch.optim.AdamW(decay_param_groups(model, 0.1), lr=LR, betas=(0.9, 0.99))

    def loss_of(x, y):
        logits = model(x)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1)

    @torch.no_grad()
    def estimate_loss():
        out = {}
        model.eval()
        for split in ("train", "val"):
            losses = torch.zeros(EVAL_ITERS)
            for k in range(EVAL_ITERS):
                losses[k] = loss_of(*get_batch(split)).item()
            out[split] = losses.mean().item()
        model.train()
        return out

    def get_lr(it):
        if it < WARMUP:
            return LR * (it + 1) / (WARMUP + 1)
        if it > DECAY:
            return MIN_LR
        ratio = (it - WARMUP) / (DECAY - WARMUP)
        return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)

    history = []
    t0 = time.perf_counter()
    x, y = get_batch("train")
    it = 0
    while True:
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it)
        if it % EVAL_INTERVAL == 0:
            losses = estimate_loss()
            history.append({"step": it, **losses})
            print(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
        if it == MAX_ITERS:
            break
        loss = loss_of(x, y)
        x, y = get_batch("train")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        it += 1

    # the same final model, evaluated over the whole val split as gptframe's summary.json does
    model.eval()
    val = prepared.tokens("val")
    total, count = 0.0, 0
    with torch.no_grad():
        for starts in EvalBlockSampler(len(val), BLOCK, BATCH):
            xb = torch.from_numpy(np.stack([val[s : s + BLOCK] for s in starts]).astype(np.int64))
            yb = torch.from_numpy(np.stack([val[s + 1 : s + 1 + BLOCK] for s in starts]).astype(np.int64))
            total += loss_of(xb, yb).item() * yb.numel()
            count += yb.numel()
    result = {
        "seed": args.seed,
        "val_loss_nanogpt_estimate_at_2000": history[-1]["val"],
        "val_loss_whole_split_at_2000": total / count,
        "seconds": time.perf_counter() - t0,
        "history": history,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
