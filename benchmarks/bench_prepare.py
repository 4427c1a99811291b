"""Data-preparation throughput and peak memory: SentencePiece (vocab 2048) on Tiny Shakespeare repeated to 10 / 100 MB.

For each corpus size the script writes `data_pipelines.TINY_SHAKESPEARE` repeated to at least that many MiB into a
temporary file (one document, so the split is nanoGPT's contiguous 90/10), then runs the real preparation,

    data_pipelines.prepare.prepare(DataConfig(path=<corpus>, cache_dir=<fresh tmp dir>, num_proc=2),
                                   TokenizerConfig(kind="sentencepiece", vocab_size=2048))

in a fresh subprocess (this script with `--worker`), so that peak RSS belongs to that run alone, with a fresh cache dir
so that nothing is reused. Then it runs the same preparation again in another fresh subprocess against the same cache
dir: that one must be a cache hit (the log says "reusing"); its time is the cost of re-validating and fingerprinting
the corpus, which every run pays.

Reported per size (first run):

* wall seconds of `prepare()` in total, and of its three steps (timed by wrapping the module-level functions that
  `prepare()` calls; the calls themselves are unchanged):
  - validate: `open_corpus`, the streaming pass that checks UTF-8 and hashes the corpus,
  - spm train: `build_tokenizer`, SentencePiece training + saving (it samples at most `tokenizer.max_training_lines`
    = 2M lines; the log's 'tokenizer: trained ... in X s' is kept in the JSON as `spm_train_s_logged`),
  - tokenize: `prepare_dataset`, encoding both splits with `num_proc` worker processes and writing the shards
    (index.json's `prepare_seconds` is the same minus the pool start-up and the index);
* MB/s of the whole preparation and of the tokenize step (corpus MB / seconds; 1 MB = 10^6 bytes);
* peak RSS in MB: `resource.getrusage(RUSAGE_SELF).ru_maxrss` of the preparing process and `RUSAGE_CHILDREN` (the
  largest of its tokenizer worker processes), and the process's own peak per step (VmHWM from /proc/self/status,
  reset with `echo 5 > /proc/self/clear_refs` before each step, Linux). A forked worker's RSS counts the pages it
  shares copy-on-write with the parent, so self + workers overstates the memory in use. The driver process stays
  small (no torch import) because Linux carries a parent's RSS at fork/exec into the child's ru_maxrss;
* tokens produced (train + val), and the cache-hit run's seconds.

Caveat of a repeated corpus: SentencePiece counts identical sentences once (with their frequency), so its training
cost on Tiny Shakespeare x95 is close to that on one copy plus reading the sampled lines; a real 100 MB corpus of
distinct text trains much more slowly. Validation and tokenization costs do scale with the bytes.

Tokenizing memory should stay flat in corpus size (pieces of ~1M characters, a bounded window of pending work units);
SentencePiece training memory grows with the number of sampled lines up to its 2M-line cap.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_prepare.py                           # 10 and 100 MiB corpora
    .venv/bin/python benchmarks/bench_prepare.py --sizes-mib 10 100 --num-proc 2 --out /tmp/prepare.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
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


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _proc_status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _vm_hwm_mb() -> float | None:
    """Peak RSS of this process's address space since start (or the last reset), from /proc/self/status."""
    return _proc_status_mb("VmHWM")


def _maxrss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


class _Phases:
    """Wraps the three steps prepare() calls (module globals of data_pipelines.prepare) to time them and take the peak
    RSS of each, resetting the high-water mark between them. Instrumentation only: the calls are unchanged."""

    def __init__(self, module):
        self.seconds: dict[str, float] = {}
        self.peak_mb: dict[str, float | None] = {}
        self.start_mb: dict[str, float | None] = {}
        self.ru_maxrss_mb = 0.0  # the process's lifetime ru_maxrss: the resets lower it, so take it before each
        self.reset_ok = True
        for phase, name in (("validate", "open_corpus"), ("tokenizer", "build_tokenizer"), ("tokenize", "prepare_dataset")):
            setattr(module, name, self._wrap(phase, getattr(module, name)))

    def _wrap(self, phase: str, fn):
        def timed(*args, **kwargs):
            self.ru_maxrss_mb = max(self.ru_maxrss_mb, _maxrss_mb(resource.RUSAGE_SELF))
            self.reset_ok &= _reset_peak_rss()
            self.start_mb[phase] = _proc_status_mb("VmRSS")
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] = time.perf_counter() - t0
                self.peak_mb[phase] = _vm_hwm_mb()
                self.ru_maxrss_mb = max(self.ru_maxrss_mb, _maxrss_mb(resource.RUSAGE_SELF))

        return timed


class _LogRecords(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def worker(corpus: str, cache_dir: str, num_proc: int, vocab_size: int) -> dict:
    import data_pipelines.prepare as prepare_module
    from data_pipelines.config import DataConfig, TokenizerConfig

    records = _LogRecords()
    pkg_log = logging.getLogger("data_pipelines")
    pkg_log.setLevel(logging.INFO)
    pkg_log.addHandler(records)
    phases = _Phases(prepare_module)
    rss_after_imports_mb = _vm_hwm_mb()

    t0 = time.perf_counter()
    tokenizer, prepared = prepare_module.prepare(
        DataConfig(path=corpus, cache_dir=cache_dir, num_proc=num_proc),
        TokenizerConfig(kind="sentencepiece", vocab_size=vocab_size),
    )
    total = time.perf_counter() - t0

    trained = next((m for m in records.messages if m.startswith("tokenizer: trained")), None)
    match = re.search(r" in ([0-9.]+)s -> ", trained or "")
    peaks = [v for v in phases.peak_mb.values() if v is not None]
    return {
        "corpus_bytes": os.path.getsize(corpus),
        "total_s": total,
        "validate_s": phases.seconds.get("validate"),
        "tokenizer_s": phases.seconds.get("tokenizer"),  # training + saving (or loading, on a cache hit)
        "spm_train_s_logged": float(match.group(1)) if match else None,
        "tokenize_s": phases.seconds.get("tokenize"),  # encode + write the shards (or load the index)
        "index_prepare_seconds": prepared.index.get("prepare_seconds"),
        "cache_hit": trained is None and any("reusing prepared shards" in m for m in records.messages),
        "num_proc": num_proc,
        "tokenizer": tokenizer.identity(),
        "num_tokens": prepared.index["num_tokens"],
        "tokens": sum(prepared.index["num_tokens"].values()),
        # what the brief asks for: getrusage high-water marks (KiB -> MiB)
        "ru_maxrss_self_mb": max(phases.ru_maxrss_mb, _maxrss_mb(resource.RUSAGE_SELF)),
        "ru_maxrss_children_mb": _maxrss_mb(resource.RUSAGE_CHILDREN),
        # per phase, from VmHWM with resets in between (exact for this process's own address space)
        "rss_after_imports_mb": rss_after_imports_mb,
        "peak_rss_phase_mb": phases.peak_mb if phases.reset_ok else None,
        "rss_phase_start_mb": phases.start_mb,
        "peak_rss_self_mb": max(peaks + [rss_after_imports_mb or 0]) if phases.reset_ok else _vm_hwm_mb(),
        "log": records.messages,
    }


def run_worker(corpus: Path, cache_dir: Path, num_proc: int, vocab_size: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--corpus", str(corpus), "--cache-dir", str(cache_dir)]
    cmd += ["--num-proc", str(num_proc), "--vocab-size", str(vocab_size)]
    t0 = time.perf_counter()
    with CpuWatch() as watch:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.perf_counter() - t0
    result.update(watch.summary())
    return result


def build_corpus(path: Path, min_mib: float) -> int:
    from data_pipelines import TINY_SHAKESPEARE

    text = TINY_SHAKESPEARE.read_bytes()
    copies = math.ceil(min_mib * 2**20 / len(text))
    with open(path, "wb") as f:
        for _ in range(copies):
            f.write(text)
    return copies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes-mib", type=float, nargs="+", default=[10, 100], help="corpus sizes, at least (MiB)")
    p.add_argument("--num-proc", type=int, default=2, help="tokenizer worker processes (data.num_proc, default 2)")
    p.add_argument("--vocab-size", type=int, default=2048, help="SentencePiece vocabulary (default 2048)")
    p.add_argument("--out", type=Path, default=None, help="write all figures as JSON here")
    p.add_argument("--wait-idle", type=float, default=600, help="wait up to this long for other busy processes")
    p.add_argument("--tmp", type=Path, default=None, help="parent dir for the corpora and caches (default: system tmp)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.corpus, args.cache_dir, args.num_proc, args.vocab_size)))
        return

    info = machine_info()
    print(
        f"machine: {info['cpu']} | {info['cores']} cores | {info['mem_gb']} GB | python {info['python']} | "
        f"torch {info.get('torch')}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="gptframe-bench-prepare-", dir=args.tmp))
    results = []
    t_start = time.perf_counter()
    try:
        for size in args.sizes_mib:
            corpus = tmp / f"tinyshakespeare_{size:g}MiB.txt"
            copies = build_corpus(corpus, size)
            cache_dir = tmp / f"cache_{size:g}MiB"  # fresh: nothing to reuse
            waited, busy = wait_until_idle(args.wait_idle)
            if busy:
                print("WARNING: measuring although other processes are busy:\n  " + "\n  ".join(busy), flush=True)
            first = run_worker(corpus, cache_dir, args.num_proc, args.vocab_size)
            if first["cache_hit"]:
                raise RuntimeError(f"the first run on a fresh cache dir reused something: {first['log']}")
            second = run_worker(corpus, cache_dir, args.num_proc, args.vocab_size)
            if not second["cache_hit"]:
                raise RuntimeError(f"the second run was not a cache hit: {second['log']}")
            mb = first["corpus_bytes"] / 1e6
            row = {
                "size_mib": size,
                "copies": copies,
                "corpus_mb": mb,
                "first": first,
                "cache_hit": second,
                "mb_per_s": mb / first["total_s"],
                "tokenize_mb_per_s": mb / first["tokenize_s"],
                "waited_for_idle_s": round(waited, 1),
            }
            results.append(row)
            ph = first["peak_rss_phase_mb"] or {}
            print(
                f"{mb:.1f} MB: {first['total_s']:.1f}s ({row['mb_per_s']:.2f} MB/s) | validate {first['validate_s']:.2f}s, "
                f"tokenizer {first['tokenizer_s']:.2f}s, tokenize {first['tokenize_s']:.2f}s | ru_maxrss self "
                f"{first['ru_maxrss_self_mb']:.0f} MB, children {first['ru_maxrss_children_mb']:.0f} MB | VmHWM by phase "
                f"{ph} | {first['tokens']:,} tokens | cache hit {second['total_s']:.2f}s | other CPU "
                f"{first['other_cpu_mean']:.2f}",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - t_start

    print()
    head = (
        f"{'corpus MB':>9} | {'total s':>7} | {'validate s':>10} | {'spm train s':>11} | {'tokenize s':>10} | "
        f"{'MB/s':>5} | {'tok. MB/s':>9} | {'RSS self MB':>11} | {'RSS workers MB':>14} | {'self by phase MB':>16} | "
        f"{'tokens':>11} | {'cache hit s':>11}"
    )
    print(head)
    print("-" * len(head))
    for row in results:
        f, c = row["first"], row["cache_hit"]
        ph = f["peak_rss_phase_mb"]
        phases = "/".join(f"{ph[k]:.0f}" for k in ("validate", "tokenizer", "tokenize")) if ph else "n/a"
        print(
            f"{row['corpus_mb']:>9.1f} | {f['total_s']:>7.1f} | {f['validate_s']:>10.2f} | {f['tokenizer_s']:>11.2f} | "
            f"{f['tokenize_s']:>10.2f} | {row['mb_per_s']:>5.2f} | {row['tokenize_mb_per_s']:>9.2f} | "
            f"{f['ru_maxrss_self_mb']:>11.0f} | {f['ru_maxrss_children_mb']:>14.0f} | {phases:>16} | {f['tokens']:>11,} | "
            f"{c['total_s']:>11.2f}"
        )
    print(
        "\nRSS self / workers: getrusage(RUSAGE_SELF / RUSAGE_CHILDREN).ru_maxrss of the preparing process (workers: the "
        "largest tokenizer worker);\nself by phase: its VmHWM during validate / tokenizer training / tokenizing, reset "
        "between phases."
    )
    print(f"\nnum_proc={args.num_proc}, vocab {args.vocab_size}; benchmark took {total:.0f}s")

    if args.out:
        report = {
            "machine": info,
            "args": {"sizes_mib": args.sizes_mib, "num_proc": args.num_proc, "vocab_size": args.vocab_size},
            "results": results,
            "total_seconds": total,
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_report(args.out, report)


if __name__ == "__main__":
    main()
