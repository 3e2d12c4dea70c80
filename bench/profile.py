"""Where the time goes: CPU per process (from /proc) and py-spy stack samples per replica.

On 2 cores the graph is CPU-bound, so "CPU ms per request, per process" is the budget:
whatever the proxy, the ingress, or Ray's own daemons burn is taken from the model.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")

# Substrings of "function (file:line)" frames, to say which part of the work a sample is in.
CATEGORIES = {
    "multipart parse (read_form)": ("read_form (",),
    "decode (decode_image)": ("decode_image (",),
    "PNG encode (encode_image)": ("encode_image (",),
    "store write (LocalStore.put)": ("storage/local.py",),
    "model forward (predict_ab)": ("predict_ab (",),
    "Lab merge (merge_lightness_ab)": ("merge_lightness_ab (",),
    "Ray (de)serialization": ("serialization.py", "cloudpickle", "pickle5"),
    "Serve proxy/router/replica code": ("ray/serve/",),
    "uvicorn/starlette HTTP": ("uvicorn/", "starlette/", "h11/", "httptools"),
}


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all threads."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def machine_busy_s() -> float:
    """CPU seconds every core spent not idle, since boot (all processes on the machine)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) * TICK_S


class CpuMeter:
    """CPU seconds each named group of processes (and the whole machine) used between start() and stop()."""

    def __init__(self, groups: dict[str, list[int]]):
        self.groups = groups

    def start(self) -> CpuMeter:
        self._before = {name: sum(map(_safe_cpu, pids)) for name, pids in self.groups.items()}
        self._machine = machine_busy_s()
        return self

    def stop(self) -> dict[str, float]:
        used = {name: sum(map(_safe_cpu, pids)) - self._before[name] for name, pids in self.groups.items()}
        used["whole machine"] = machine_busy_s() - self._machine
        return used


def children(pid: int) -> dict[int, list[int]]:
    """{parent pid: [child pids]} of every process on the machine, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            tree.setdefault(parent, []).append(int(entry))
    return tree


def descendants(pid: int) -> list[int]:
    tree, found, todo = children(pid), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def process_name(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        argv = cmdline.read().split(b"\0")
    return os.path.basename(argv[0].decode(errors="replace").split()[0]) if argv and argv[0] else "?"


def _safe_cpu(pid: int) -> float:
    try:
        return process_cpu_s(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def py_spy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def start_recording(pids: dict[str, int], seconds: float, out_dir: Path) -> list[tuple[str, Path, subprocess.Popen]]:
    """py-spy record (on-CPU samples only, collapsed stacks) of each process, in the background."""
    binary = py_spy()
    if binary is None:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for name, pid in pids.items():
        path = out_dir / f"{name.split('#')[0]}.txt"
        command = [binary, "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "50", "-f", "raw",
                   "-o", str(path), "--nonblocking"]
        runs.append((name, path, subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
    return runs


def finish_recording(runs, timeout_s: float = 60) -> dict[str, Counter]:
    stacks = {}
    for name, path, process in runs:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
        stacks[name.split("#")[0]] = read_collapsed(path) if path.exists() else Counter()
    return stacks


def read_collapsed(path: Path) -> Counter:
    stacks: Counter = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def categorize(stacks: Counter) -> dict[str, float]:
    """Share of on-CPU samples per category (a sample counts in the first category it matches)."""
    total = sum(stacks.values()) or 1
    shares: Counter = Counter()
    for stack, count in stacks.items():
        frames = stack.split(";")
        for category, needles in CATEGORIES.items():
            if any(needle in frame for frame in frames for needle in needles):
                shares[category] += count
                break
        else:
            shares["other"] += count
    return {category: n / total for category, n in shares.most_common()}


def top_leaves(stacks: Counter, n: int = 8) -> list[tuple[str, float]]:
    """The functions samples were *in* (self time), as shares of on-CPU samples."""
    total = sum(stacks.values()) or 1
    leaves: Counter = Counter()
    for stack, count in stacks.items():
        leaves[_short(stack.split(";")[-1])] += count
    return [(frame, count / total) for frame, count in leaves.most_common(n)]


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/work/main/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})"
