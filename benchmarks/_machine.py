"""What the benchmarks share: a description of the machine, and a watch on other processes' CPU use.

On a small CPU machine a second PyTorch process running at the same time does not just halve the speed: both processes'
intra-op thread pools oversubscribe the cores and steps become up to ~100x slower. So the benchmarks wait until nothing
else is busy before each measurement, and record how much CPU other processes used while it ran.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import threading
import time
from pathlib import Path

_CLK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_info() -> dict:
    cpu = "unknown"
    mem_gb = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "mem_gb": mem_gb, "python": platform.python_version()}
    try:  # without importing torch: a big parent process would inflate its children's ru_maxrss (see bench_prepare)
        info["torch"] = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        info["torch"] = None
    return info


def _snapshot() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, cpu ticks so far, command name) for every process."""
    procs = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        procs[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), name)
    return procs


def _ours(procs: dict[int, tuple[int, int, str]]) -> set[int]:
    """This process, its ancestors and all its descendants."""
    ours = {os.getpid()}
    pid = os.getpid()
    while pid in procs and procs[pid][0] > 1:
        pid = procs[pid][0]
        ours.add(pid)
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _, _) in procs.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                changed = True
    return ours


def _cmdline(pid: int) -> str:
    try:
        return " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split())[:120]
    except OSError:
        return ""


def other_busy(interval: float = 1.0, threshold: float = 0.2) -> list[str]:
    """Processes outside this benchmark using more than `threshold` of a core over the next `interval` seconds."""
    before = _snapshot()
    time.sleep(interval)
    after = _snapshot()
    ours = _ours(after)
    busy = []
    for pid, (_, ticks, name) in after.items():
        if pid in ours:
            continue
        share = (ticks - before.get(pid, (0, 0, ""))[1]) / _CLK / interval
        if share > threshold:
            busy.append(f"pid {pid} {share:.0%} {_cmdline(pid) or name}")
    return busy


def wait_until_idle(max_wait_s: float, poll_s: float = 5.0) -> tuple[float, list[str]]:
    """Wait (up to max_wait_s) until no other process is busy. Returns (seconds waited, still busy)."""
    t0 = time.perf_counter()
    busy = other_busy()
    announced = False
    while busy and time.perf_counter() - t0 < max_wait_s:
        if not announced:
            print("waiting for other busy processes to finish:\n  " + "\n  ".join(busy), flush=True)
            announced = True
        time.sleep(poll_s)
        busy = other_busy()
    return time.perf_counter() - t0, busy


class CpuWatch:
    """Background sampler: CPU used by processes outside this benchmark's process tree while a measurement runs."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.samples: list[float] = []  # cores used by others, per interval
        self.culprits: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        before = _snapshot()
        while not self._stop.wait(self.interval):
            after = _snapshot()
            ours = _ours(after)
            total = 0.0
            for pid, (_, ticks, name) in after.items():
                if pid in ours:
                    continue
                share = (ticks - before.get(pid, (0, 0, ""))[1]) / _CLK / self.interval
                total += share
                if share > 0.2:
                    self.culprits.add(_cmdline(pid) or name)
            self.samples.append(total)
            before = after

    def disturbed(self, cores: float = 0.5, seconds: int = 3) -> bool:
        """Other processes used more than `cores` in each of the last `seconds` samples."""
        recent = self.samples[-seconds:]
        return len(recent) == seconds and min(recent) > cores

    def summary(self) -> dict:
        if not self.samples:
            return {"other_cpu_mean": 0.0, "other_cpu_max": 0.0, "others": []}
        return {
            "other_cpu_mean": round(sum(self.samples) / len(self.samples), 3),
            "other_cpu_max": round(max(self.samples), 3),
            "others": sorted(self.culprits),
        }


def write_report(path: Path, report: dict) -> None:
    """Write a benchmark's JSON report (creating its folder) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")
