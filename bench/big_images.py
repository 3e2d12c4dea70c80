"""Large photos against the real graph: what 8 concurrent 49 MP jobs cost, and what is left after.

    python -m bench.big_images [--jobs 8] [--side 7000] [--model large] [--after-s 60] [--env NAME=VALUE ...]

Runs the service as `make demo` does (``bench.demo_process``: ``deployments.launch`` on
serve_config.demo.yaml, CPU Ray settings, key API with a SQLite ledger) on loopback, sends
``--jobs`` concurrent key-API jobs of one ``--side`` x ``--side`` PNG (a smooth greyscale image: ~48 KB
on the wire for 147 MB of RGB pixels), and samples every process of the service's session every 0.25 s:

* memory: the sum of anonymous RSS (private memory) plus the object store's shared memory (the
  largest RssShmem of any one process: every process maps the same store), and the plain RSS sum
  (which counts shared pages once per process that touched them);
* CPU seconds of the service's processes (user + system) and of everything else on the machine;
* the Ingress replica's RSS at baseline (after a warm-up job), at its peak, and ``--after-s`` later.

Target (issue 14): peak growth <= 1.5 GB, and the Ingress within 10% of its baseline a minute
after the last answer. ``--env`` sets variables for the service's processes (allocator trials).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from .demo_process import DemoService
from .serve_graph import free_port

GIB = 1 << 30
SAMPLE_EVERY_S = 0.25


def smooth_png(side: int) -> bytes:
    """A side x side greyscale PNG, a gradient from top to bottom: ~48 KB at 7000 px (deflate's ~1000:1
    ceiling on one byte a pixel), 147 MB once decoded to RGB."""
    ramp = np.linspace(60, 200, side, dtype=np.float32).astype(np.uint8)
    grey = np.ascontiguousarray(np.broadcast_to(ramp[:, None], (side, side)))
    buffer = io.BytesIO()
    Image.fromarray(grey, "L").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _status(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssShmem"):
                fields[name] = int(value.split()[0]) * 1024
    return fields


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def _machine_busy_s() -> float:
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Meter:
    """Samples the service's processes in a background thread."""

    def __init__(self, service: DemoService):
        self.service = service
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict:
        total_rss = anon = shm = ingress = ingress_anon = ingress_shm = 0
        for pid in self.service.service_pids():
            try:
                status = _status(pid)
            except (OSError, KeyError):
                continue
            total_rss += status.get("VmRSS", 0)
            anon += status.get("RssAnon", 0)
            shm = max(shm, status.get("RssShmem", 0))
            if "Ingress" in _cmdline(pid):
                ingress, ingress_anon = status.get("VmRSS", 0), status.get("RssAnon", 0)
                ingress_shm = status.get("RssShmem", 0)
        return {"t": time.monotonic(), "rss_sum": total_rss, "anon_sum": anon, "object_store_shm": shm,
                "private_plus_shm": anon + shm, "ingress_rss": ingress,
                "ingress_anon": ingress_anon, "ingress_shm": ingress_shm}

    def cpu_s(self) -> float:
        total = 0.0
        for pid in self.service.service_pids():
            try:
                total += _cpu_s(pid)
            except OSError:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(SAMPLE_EVERY_S)

    def __enter__(self) -> Meter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, field: str) -> int:
        return max(sample[field] for sample in self.samples)


def _wait_loaded(url: str, model: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = httpx.get(f"{url}/health", timeout=10, trust_env=False).json()
        if health.get("models", {}).get(model, {}).get("loaded"):
            return
        time.sleep(1)
    raise TimeoutError(f"the {model} model did not load within {timeout_s:.0f} s")


def process_anon(service: DemoService) -> dict[str, int]:
    """Anonymous RSS per process, by a short name (the Ray actor's title, else the command)."""
    found: dict[str, int] = {}
    for pid in service.service_pids():
        try:
            anon = _status(pid).get("RssAnon", 0)
        except OSError:
            continue
        words = _cmdline(pid).split()
        name = next((word.split(":")[-1] for word in words if word.startswith("ray::")), None) or \
            " ".join(Path(word).name for word in words[:3])
        found[f"{name} ({pid})"] = anon
    return found


def colorize(url: str, key: str, photo: bytes, model: str) -> tuple[int, float, str]:
    started = time.monotonic()
    response = httpx.post(f"{url}/api/v1/colorize", headers={"X-Api-Key": key}, data={"model": model},
                          files={"image": ("big.png", photo, "image/png")}, timeout=600, trust_env=False)
    return response.status_code, time.monotonic() - started, response.text[:200]


def run(jobs: int, side: int, model: str, after_s: float, env: dict[str, str], workdir: Path) -> dict:
    from tools.build_demo import build

    models = workdir / "models"
    build(models)
    photo = smooth_png(side)
    small = smooth_png(512)
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # the service's processes inherit them
    service = DemoService(workdir / "service", models, free_port())
    try:
        service.start()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    try:
        key = service.create_key(credits=1000, rate_per_s=1000, burst=1000)
        _wait_loaded(service.url, model)
        status, warm_s, text = colorize(service.url, key, small, model)  # lazy initialisation out of the way
        assert status == 200, text
        time.sleep(5)
        meter = Meter(service)
        baseline, anon_before = meter.sample(), process_anon(service)
        cpu_before, busy_before, wall_before = meter.cpu_s(), _machine_busy_s(), time.monotonic()
        with meter:
            with ThreadPoolExecutor(jobs) as pool:
                answers = list(pool.map(lambda _: colorize(service.url, key, photo, model), range(jobs)))
            wall = time.monotonic() - wall_before
            cpu = meter.cpu_s() - cpu_before
            others = _machine_busy_s() - busy_before - cpu
            time.sleep(after_s)
        after, anon_after = meter.sample(), process_anon(service)
        load = os.getloadavg()
    finally:
        service.stop()
    statuses = Counter(status for status, _, _ in answers)
    growth = {field: meter.peak(field) - baseline[field]
              for field in ("private_plus_shm", "rss_sum", "anon_sum", "object_store_shm")}
    return {
        "photo": {"side": side, "megapixels": side * side / 1e6, "png_bytes": len(photo)}, "jobs": jobs,
        "model": model, "env": env, "statuses": dict(statuses),
        "answers_s": sorted(round(seconds, 1) for _, seconds, _ in answers),
        "refusals": sorted({text for status, _, text in answers if status != 200}),
        "wall_s": round(wall, 1), "service_cpu_s": round(cpu, 1), "other_processes_cpu_s": round(others, 1),
        "loadavg_1_5_15": [round(value, 1) for value in load],
        "peak_growth_gib": {field: round(value / GIB, 3) for field, value in growth.items()},
        "baseline_gib": {field: round(baseline[field] / GIB, 3) for field in growth},
        "ingress_rss_gib": {"baseline": round(baseline["ingress_rss"] / GIB, 3),
                            "peak": round(meter.peak("ingress_rss") / GIB, 3),
                            f"{after_s:g}_s_after": round(after["ingress_rss"] / GIB, 3)},
        "retained_after_gib": {field: round((after[field] - baseline[field]) / GIB, 3)
                               for field in ("anon_sum", "object_store_shm", "ingress_anon")},
        "retained_anon_by_process_mib": {name: round((anon_after[name] - anon_before.get(name, 0)) / 2**20)
                                         for name in anon_after if abs(anon_after[name] - anon_before.get(name, 0))
                                         > 8 * 2**20},
        "ingress_anon_shm_gib": {moment: [round(sample["ingress_anon"] / GIB, 3), round(sample["ingress_shm"] / GIB, 3)]
                                 for moment, sample in (("baseline", baseline), ("after", after))},
        "ingress_after_vs_baseline": round(after["ingress_rss"] / baseline["ingress_rss"] - 1, 3),
        "targets": {"peak_growth_le_1.5_gb": growth["private_plus_shm"] <= 1.5e9,
                    "ingress_within_10_percent": after["ingress_rss"] <= 1.1 * baseline["ingress_rss"]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--side", type=int, default=7000)
    parser.add_argument("--model", default="large", choices=("large", "tiny"))
    parser.add_argument("--after-s", type=float, default=60.0)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder")
    args = parser.parse_args(argv)
    if not 1 <= args.jobs <= 32 or not 64 <= args.side <= 8000:
        parser.error("--jobs 1..32 and --side 64..8000 (the pixel limit is 50 MP)")
    env = dict(item.split("=", 1) for item in args.env)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.workdir:
        result = run(args.jobs, args.side, args.model, args.after_s, env, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="big-images-") as workdir:
            result = run(args.jobs, args.side, args.model, args.after_s, env, Path(workdir))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
