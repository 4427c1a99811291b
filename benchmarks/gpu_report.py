"""Steady-state throughput and MFU of benchmark runs (gpu.sh): one markdown row per run dir, and a JSON file.

Steady state: the median over the second half of the logged windows (each window spans log_every_n_steps
optimizer steps), so compilation and warm-up in the first steps do not count.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path

import torch

COLUMNS = ("train/tokens_per_s", "train/tokens_per_s_per_device", "train/tflops_per_device", "train/mfu")


def steady(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = []
    for metrics in sorted((run_dir / "logs").glob("version_*/metrics.csv")):
        with metrics.open() as f:
            rows += [r for r in csv.DictReader(f) if r.get("train/tokens_per_s")]
    if not rows:
        raise SystemExit(f"{run_dir}: no train/tokens_per_s rows in logs/*/metrics.csv")
    late = rows[len(rows) // 2 :]
    figures = {}
    for column in COLUMNS:
        values = [float(r[column]) for r in late if r.get(column)]
        figures[column.split("/")[1]] = statistics.median(values) if values else None
    return {
        "run": run_dir.name,
        "params": summary["params"],
        "world_size": summary["world_size"],
        "precision": summary["precision"],
        "steps": summary["step"],
        "windows": len(late),
        **figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or 'cpu'})"
    results = [steady(d) for d in args.run_dirs]
    print(f"device: {device} | torch {torch.__version__} | {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n")
    print("| model | params | GPUs | precision | tokens/s (all) | tokens/s per GPU | TFLOP/s per GPU | MFU |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for r in results:
        tflops = f"{r['tflops_per_device']:.1f}" if r["tflops_per_device"] is not None else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (no peak figure)"
        print(f"| {r['run']} | {r['params'] / 1e6:.1f}M | {r['world_size']} | {r['precision']} | "
              f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_device']:,.0f} | {tflops} | {mfu} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"device": device, "torch": torch.__version__, "date": datetime.now(timezone.utc).isoformat(),
                   "results": results}
        args.json.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
