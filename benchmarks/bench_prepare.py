"""Data preparation at scale: peak memory per process as the corpus grows, throughput against the raw tokenizer, and
the share of training step time spent waiting on batches.

Corpus: distinct text synthesised from the shared corpora (`/work/shared/data`: Tiny Shakespeare, the C4 and Wikipedia
samples, the Alpaca records): their sentences, shuffled into paragraphs of 6-18 random sentences, one paragraph per
line, written as 100 MB files (`part-NNNN.txt`). With ~40k distinct sentences a paragraph repeats with negligible
probability. A corpus of size S is the first S/100MB files (a directory of symlinks), so the 0.2 GB corpus is a prefix
of the 2 GB one. The files are written under --tmp and removed at the end (never commit them).

For each size, in a fresh subprocess (its peak RSS its own; the driver imports no torch) with a fresh cache dir:

* **gptframe**: `data_pipelines.prepare.prepare(DataConfig(path=<dir>, num_proc=P), TokenizerConfig(path=<spm>))`:
  validation (UTF-8 + content hash), tokenization into shards by P worker processes, concatenation and index.
  SentencePiece (BPE, vocab 2048) is trained once beforehand on the 0.2 GB corpus and loaded by path, so every size
  measures the same work per byte (training samples at most 2M lines whatever the corpus size).
* **raw**: the same SentencePiece model's `encode` on the same text with the same P worker processes: the parent reads
  the files in ~1M-character pieces cut at line ends and a `multiprocessing.Pool(P)` encodes them (`imap`, in order),
  returning only the token count. Nothing is validated, hashed or written.
* peak RSS: `getrusage(RUSAGE_SELF)` of the preparing process and `getrusage(RUSAGE_CHILDREN)` (the largest worker).

Dataloader wait (`--loader-steps`, default 200): `gptframe-train`'s code path (`run_training`) on `conf/data/mix_demo`'s
three sources, the default model (gpt_micro) and data.num_workers at its default (0), timing every fetch of a training
batch (sampler + dataset) against the wall time of `trainer.fit`.

Usage (from the repository root; the CPU is shared, so run it when the machine is quiet and say so in RESULTS.md)::

    .venv/bin/python benchmarks/bench_prepare.py --sizes-gb 0.2 2 --num-proc 2 --out benchmarks/results/prepare_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import CpuWatch, machine_info, wait_until_idle, write_report  # noqa: E402

SHARED = Path(os.environ.get("GPTFRAME_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
FILE_BYTES = 100_000_000
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


# ---- corpus -------------------------------------------------------------------------------------------------------
def shared_sentences() -> list[str]:
    texts = [(SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8")]
    mix = SHARED / "pretrain_mix"
    texts.append((mix / "wiki_demo.txt").read_text(encoding="utf-8"))
    texts += [json.loads(line)["text"] for line in (mix / "c4_demo.jsonl").read_text(encoding="utf-8").splitlines()]
    alpaca = SHARED / "sft" / "alpaca_en_demo.json"
    if alpaca.exists():
        texts += [" ".join(r.values()) for r in json.loads(alpaca.read_text(encoding="utf-8"))]
    sentences = {s.strip() for t in texts for s in _SENTENCE_END.split(t.replace("\n", " ")) if len(s.strip()) > 15}
    return sorted(sentences)


def write_corpus(directory: Path, total_bytes: int, seed: int = 0) -> list[Path]:
    import numpy as np

    sentences = shared_sentences()
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(-(-total_bytes // FILE_BYTES)):
        path = directory / f"part-{i:04d}.txt"
        written = 0
        with open(path, "w", encoding="utf-8") as f:
            while written < FILE_BYTES:
                lengths = rng.integers(6, 19, size=2000)
                picks = rng.integers(0, len(sentences), size=int(lengths.sum()))
                lines, start = [], 0
                for n in lengths:
                    lines.append(" ".join(sentences[j] for j in picks[start : start + n]))
                    start += n
                block = "\n".join(lines) + "\n"
                f.write(block)
                written += len(block.encode("utf-8"))
        files.append(path)
    return files


def corpus_of(files: list[Path], size_bytes: int, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for f in files[: max(1, round(size_bytes / FILE_BYTES))]:
        (directory / f.name).symlink_to(f)
    return directory


# ---- workers (fresh subprocesses) ---------------------------------------------------------------------------------
def _maxrss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def worker_train_tokenizer(corpus: str, out: str, vocab_size: int) -> dict:
    from data_pipelines.config import TokenizerConfig
    from data_pipelines.prepare import build_tokenizer
    from data_pipelines.sources import open_corpus

    c = open_corpus(corpus)
    t0 = time.perf_counter()
    tok = build_tokenizer(TokenizerConfig(kind="sentencepiece", vocab_size=vocab_size), c, c.split(0.1, 1337),
                          Path(out), {"val_fraction": 0.1, "seed": 1337})
    shutil.copytree(next(d for d in Path(out, "tokenizers").iterdir() if d.is_dir()), Path(out, "spm"))
    return {"train_s": time.perf_counter() - t0, "tokenizer": tok.identity()}


def worker_prepare(corpus: str, cache_dir: str, num_proc: int, tokenizer: str) -> dict:
    import data_pipelines.prepare as prep
    from data_pipelines.config import DataConfig, TokenizerConfig

    seconds: dict[str, float] = {}
    for phase, name in (("validate", "open_corpus"), ("tokenize", "prepare_dataset")):
        fn = getattr(prep, name)

        def timed(*a, _fn=fn, _phase=phase, **kw):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **kw)
            finally:
                seconds[_phase] = seconds.get(_phase, 0.0) + time.perf_counter() - t0

        setattr(prep, name, timed)
    t0 = time.perf_counter()
    _, prepared = prep.prepare(DataConfig(path=corpus, cache_dir=cache_dir, num_proc=num_proc),
                               TokenizerConfig(kind="sentencepiece", path=tokenizer))
    return {
        "total_s": time.perf_counter() - t0,
        **{f"{k}_s": v for k, v in seconds.items()},
        "tokens": sum(prepared.index["num_tokens"].values()),
        "rss_self_mb": _maxrss_mb(resource.RUSAGE_SELF),
        "rss_largest_worker_mb": _maxrss_mb(resource.RUSAGE_CHILDREN),
    }


_sp = None


def _raw_init(model: str) -> None:
    global _sp
    import sentencepiece as spm

    _sp = spm.SentencePieceProcessor(model_file=model)


def _raw_encode(text: str) -> int:
    return len(_sp.encode(text))  # one ~1M-character piece per call, as gptframe's workers encode them


def _pieces(files: list[Path], chars: int = 1 << 20):
    for path in files:
        with open(path, encoding="utf-8") as f:
            while text := f.read(chars):
                yield text + f.readline()


def worker_raw(corpus: str, num_proc: int, tokenizer: str) -> dict:
    import multiprocessing as mp

    model = next(Path(tokenizer).glob("*.model"))
    files = sorted(Path(corpus).iterdir())
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(num_proc, initializer=_raw_init, initargs=(str(model),)) as pool:
        tokens = sum(pool.imap(_raw_encode, _pieces(files)))
    return {"total_s": time.perf_counter() - t0, "tokens": tokens, "rss_self_mb": _maxrss_mb(resource.RUSAGE_SELF),
            "rss_largest_worker_mb": _maxrss_mb(resource.RUSAGE_CHILDREN)}


def worker_loader(steps: int, cache_dir: str) -> dict:
    """Share of `trainer.fit` wall time spent fetching training batches (num_workers at its default)."""
    import lightning as L
    from hydra import compose, initialize_config_dir

    from data_pipelines.datasets import MixtureBlockDataset
    from data_pipelines.mixture import MixtureBlockSampler
    from gptframe.cli.common import config_dir
    from gptframe.config import register_configs, to_typed
    from gptframe.training.run import run_training

    waits: list[float] = []
    fit_s: list[float] = []
    get, it = MixtureBlockDataset.__getitem__, MixtureBlockSampler.__iter__

    def timed_get(self, batch):
        t0 = time.perf_counter()
        try:
            return get(self, batch)
        finally:
            if len(batch) == 2:  # training batches (evaluation ones carry a source index too)
                waits.append(time.perf_counter() - t0)

    def timed_iter(self):
        inner = it(self)
        while True:
            t0 = time.perf_counter()
            item = next(inner)
            waits.append(time.perf_counter() - t0)
            yield item

    fit = L.Trainer.fit

    def timed_fit(self, *a, **kw):
        t0 = time.perf_counter()
        try:
            return fit(self, *a, **kw)
        finally:
            fit_s.append(time.perf_counter() - t0)

    MixtureBlockDataset.__getitem__, MixtureBlockSampler.__iter__, L.Trainer.fit = timed_get, timed_iter, timed_fit
    mix = Path(__file__).resolve().parents[1] / "conf" / "data" / "mix_demo.yaml"
    overrides = ["data=mix_demo", f"data.cache_dir={cache_dir}", f"trainer.max_steps={steps}",
                 f"trainer.val_check_interval={steps}", "trainer.eval_batches=1", "trainer.final_eval_batches=1",
                 "trainer.enable_progress_bar=false", "logger=csv", "trainer.accelerator=cpu"]
    register_configs()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    typed = to_typed(cfg)
    with tempfile.TemporaryDirectory() as run_dir:
        summary = run_training(typed, Path(run_dir), cfg)
    return {
        "steps": steps, "fit_s": fit_s[0], "wait_s": sum(waits), "wait_share": sum(waits) / fit_s[0],
        "num_workers": typed.data.num_workers, "batch_size": typed.data.batch_size, "block_size": 128,
        "model": "gpt_micro", "tokens_per_s": summary["tokens_per_s"], "config": str(mix),
        "data_sources": {k: {"weight": v["weight"], "epochs": v["epochs"]} for k, v in summary["data_sources"].items()},
    }


def run_worker(*args: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", *args]
    with CpuWatch() as watch:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(watch.summary())
    return result


# ---- driver -------------------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes-gb", type=float, nargs="+", default=[0.2, 2.0])
    p.add_argument("--num-proc", type=int, default=2)
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--loader-steps", type=int, default=200, help="0: skip the dataloader measurement")
    p.add_argument("--tmp", type=Path, default=None, help="where the corpus and caches go (default: system tmp)")
    p.add_argument("--wait-idle", type=float, default=120)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        kind, *rest = args.worker
        fn = {"tokenizer": worker_train_tokenizer, "prepare": worker_prepare, "raw": worker_raw,
              "loader": worker_loader}[kind]
        typed = [int(r) if r.isdigit() else r for r in rest]
        print(json.dumps(fn(*typed)))
        return

    info = machine_info()
    print(f"machine: {info['cpu']} | {info['cores']} cores | {info['mem_gb']} GB | python {info['python']}", flush=True)
    if args.tmp is not None:
        args.tmp.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="gptframe-bench-prepare-", dir=args.tmp))
    rows, t_start = [], time.perf_counter()
    try:
        t0 = time.perf_counter()
        files = write_corpus(tmp / "files", int(max(args.sizes_gb) * 1e9))
        print(f"corpus: {len(files)} files of {FILE_BYTES / 1e6:.0f} MB in {time.perf_counter() - t0:.0f}s", flush=True)
        smallest = corpus_of(files, int(min(args.sizes_gb) * 1e9), tmp / "tok_corpus")
        tok = run_worker("tokenizer", str(smallest), str(tmp / "tok"), str(args.vocab_size))
        print(f"tokenizer: trained in {tok['train_s']:.0f}s on {smallest}", flush=True)
        spm_dir = str(tmp / "tok" / "spm")
        for size in sorted(args.sizes_gb):
            corpus = corpus_of(files, int(size * 1e9), tmp / f"corpus_{size:g}GB")
            nbytes = sum(f.stat().st_size for f in corpus.iterdir())
            row = {"size_gb": size, "bytes": nbytes}
            for kind in ("raw", "gptframe"):  # side by side, each on a quiet machine if it can be had
                waited, busy = wait_until_idle(args.wait_idle)
                if kind == "raw":
                    res = run_worker("raw", str(corpus), str(args.num_proc), spm_dir)
                else:
                    res = run_worker("prepare", str(corpus), str(tmp / f"cache_{size:g}"), str(args.num_proc), spm_dir)
                    shutil.rmtree(tmp / f"cache_{size:g}", ignore_errors=True)
                res["mb_per_s"] = nbytes / 1e6 / (res.get("tokenize_s") or res["total_s"])
                res["busy_before"] = busy
                row[kind] = res
                print(f"{size:g} GB {kind}: {json.dumps(res)}", flush=True)
            row["ratio"] = row["gptframe"]["mb_per_s"] / row["raw"]["mb_per_s"]
            row["ratio_total"] = nbytes / row["gptframe"]["total_s"] / (nbytes / row["raw"]["total_s"])
            rows.append(row)
        loader = run_worker("loader", str(args.loader_steps), str(tmp / "loader_cache")) if args.loader_steps else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("\n| corpus GB | raw encode MB/s | gptframe tokenize MB/s | ratio | gptframe total MB/s (validate+tokenize+index) "
          "| ratio total | peak RSS MB: preparing process / largest worker | raw: parent / worker | tokens |")
    print("|---:|---:|---:|---:|---:|---:|---|---|---:|")
    for r in rows:
        g, raw = r["gptframe"], r["raw"]
        print(f"| {r['bytes'] / 1e9:.2f} | {raw['mb_per_s']:.2f} | {g['mb_per_s']:.2f} | {r['ratio']:.2f} | "
              f"{r['bytes'] / 1e6 / g['total_s']:.2f} | {r['ratio_total']:.2f} | {g['rss_self_mb']:.0f} / "
              f"{g['rss_largest_worker_mb']:.0f} | {raw['rss_self_mb']:.0f} / {raw['rss_largest_worker_mb']:.0f} | "
              f"{g['tokens']:,} |")
    if loader:
        print(f"\ndataloader wait: {loader['wait_share']:.2%} of fit time ({loader['wait_s']:.2f}s of "
              f"{loader['fit_s']:.1f}s, {loader['steps']} steps, num_workers={loader['num_workers']})")
    total = time.perf_counter() - t_start
    print(f"benchmark took {total:.0f}s")
    if args.out:
        write_report(args.out, {"machine": info, "args": vars(args) | {"out": str(args.out), "tmp": str(args.tmp)},
                                "results": rows, "loader": loader, "total_seconds": total,
                                "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


if __name__ == "__main__":
    main()
