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

# Each sample goes to the category of its innermost frame that matches one (leaf-only ones look at
# the leaf alone). Needles are substrings of py-spy's "function (file:line)" frames.
CATEGORIES: tuple[tuple[str, bool, tuple[str, ...]], ...] = (
    ("multipart parse (read_form)", False, ("read_form (",)),
    ("decode (decode_image)", False, ("decode_image (",)),
    ("PNG encode (encode_image)", False, ("encode_image (",)),
    ("store write (LocalStore.put)", False, ("storage/local.py",)),
    # Innermost first: lightness() inside predict_ab (the model's input L) counts as Lab, not forward.
    ("Lab conversions (lightness x2, merge)", False, ("merge_lightness_ab (", "lightness (")),
    ("model forward (rest of predict_ab)", False, ("predict_ab (",)),
    ("Ray (de)serialization", False, ("serialization.py", "cloudpickle", "pickle5")),
    ("HTTP (uvicorn/starlette/h11)", False, ("uvicorn/", "starlette/", "h11/", "httptools")),
    # With --nonblocking, py-spy cannot see native frames, and a thread waiting in C (epoll, condition
    # variables: Ray's core worker, gRPC, Serve's extra event loops) looks busy. Checked with --native:
    # these leaves were ~90% epoll_wait/pthread_cond_wait. They are left out of the shares.
    (WAITING := "waiting in native code (left out)", True,
     ("Thread.run (", "Worker.main_loop (", "_WorkItem.run (", "_worker (concurrent", "select (selectors.py",
      "_run_user_code_event_loop", "_run_router_event_loop")),
    ("asyncio event loop", True, ("asyncio/",)),
    ("Serve proxy/router/replica Python", False, ("ray/serve/",)),
    ("Ray core Python (actor calls, object refs)", False, ("ray/",)),
)


def category_of(frames: list[str]) -> str:
    for depth, frame in enumerate(reversed(frames)):
        for name, leaf_only, needles in CATEGORIES:
            if (not leaf_only or depth == 0) and any(needle in frame for needle in needles):
                return name
    return "other"


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
    """Share of working on-CPU samples per category, plus the share of all samples that only looked busy."""
    shares: Counter = Counter()
    for stack, count in stacks.items():
        shares[category_of(stack.split(";"))] += count
    waiting = shares.pop(WAITING, 0)
    working = sum(shares.values()) or 1
    return {**{category: n / working for category, n in shares.most_common()},
            WAITING: waiting / ((working + waiting) or 1)}


def top_leaves(stacks: Counter, n: int = 8) -> list[tuple[str, float]]:
    """The functions working samples were *in* (self time), as shares of working samples."""
    leaves: Counter = Counter()
    for stack, count in stacks.items():
        frames = stack.split(";")
        if category_of(frames) != WAITING:
            leaves[_short(frames[-1])] += count
    total = sum(leaves.values()) or 1
    return [(frame, count / total) for frame, count in leaves.most_common(n)]


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/work/main/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})"
