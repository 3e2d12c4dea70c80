"""The `colorize` CLI over a folder of small photos vs the graph's own throughput (issue 11).

    python -m bench.cli                      # starts `make demo`'s service itself (~3 min on 2 cores)
    python -m bench.cli --api http://127.0.0.1:8000 --key ck_live_...   # a running demo
    python -m bench.cli --photos 200 --levels 1 4 16 --rounds 2 --json cli.json

For each concurrency level, in turns: bench/load.py's closed loop (the graph's throughput: pre-built
bodies, no Idempotency-Key, nothing downloaded); a bare loop doing what any client of this API must
do per photo (POST a pre-built body with an Idempotency-Key, GET the result); then the real CLI as a
subprocess over N unique photos (derived Idempotency-Keys, each result downloaded and written
atomically, a manifest). Every CLI run
writes to a fresh folder with its own --seed, new to the service (ignored by the tiny model, but part
of each photo's key), so no run is served from an earlier run's replays. The CLI's CPU comes from wait4() on its
process; the service's from /proc over its process session; "others" is the rest of the machine.
A key for a running demo needs credits for every photo and a high rate limit
(`colorize-admin keys create --credits 5000 --rate 1000 --burst 1000`): the demo key's default of
1 request/s would measure the rate limit.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .load import closed_loop, colorize_target
from .profile import machine_busy_s, process_cpu_s

REPO = Path(__file__).resolve().parents[1]


def write_photos(folder: Path, count: int, size: int) -> None:
    """``count`` unique grey JPEGs (scikit-image's samples, shifted and re-lit per photo) in 10 folders."""
    from .photos import grey_square, SAMPLES

    import skimage.data

    bases = [np.asarray(grey_square(getattr(skimage.data, name)(), size + 16)) for name in SAMPLES]
    for index in range(count):
        base = bases[index % len(bases)]
        dx, dy = (index // len(bases)) % 16, (index // (len(bases) * 16)) % 16
        crop = np.clip(base[dy:dy + size, dx:dx + size].astype(np.int16) + index % 7 - 3, 0, 255).astype(np.uint8)
        target = folder / f"roll-{index % 10:02d}" / f"scan-{index:04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(crop).save(buffer, format="JPEG", quality=90)
        target.write_bytes(buffer.getvalue())


async def post_and_download(api: str, key: str, photos: Path, concurrency: int, seed: int) -> tuple[int, float, float]:
    """What any client of this API must do per photo, and nothing else: POST it (multipart body built
    beforehand, an Idempotency-Key) and GET the result. Returns (photos done, seconds, CPU seconds)."""
    import uuid

    import httpx

    from .photos import Photo, multipart_body

    bodies = [multipart_body(Photo(path.name, path.read_bytes(), "image/jpeg"), {"model": "tiny", "seed": str(seed)})
              for path in sorted(photos.rglob("*.jpg"))]
    queue, done = list(bodies), 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits, trust_env=False) as client:
        async def worker() -> None:
            nonlocal done
            while queue:
                body, content_type = queue.pop()
                answer = await client.post(f"{api}/api/v1/colorize", content=body, headers={
                    "X-Api-Key": key, "Content-Type": content_type, "Idempotency-Key": uuid.uuid4().hex})
                answer.raise_for_status()
                (await client.get(answer.json()["outputUrl"])).raise_for_status()
                done += 1

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done, time.perf_counter() - started, time.process_time() - cpu


class Meter:
    """CPU seconds of a set of processes and of the whole machine over a window."""

    def __init__(self, pids: list[int]):
        self.pids = pids

    def __enter__(self) -> Meter:
        self._service, self._machine, self._t = self._service_cpu(), machine_busy_s(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.service_s = self._service_cpu() - self._service
        self.machine_s = machine_busy_s() - self._machine
        self.wall_s = time.perf_counter() - self._t

    def _service_cpu(self) -> float:
        total = 0.0
        for pid in self.pids:
            try:
                total += process_cpu_s(pid)
            except (FileNotFoundError, ProcessLookupError):
                pass
        return total


def run_cli(api: str, key: str, photos: Path, out: Path, concurrency: int, seed: int, *extra: str) -> dict:
    command = [sys.executable, "-m", "colorize_client", str(photos), "--out", str(out), "--model", "tiny",
               "--concurrency", str(concurrency), "--seed", str(seed), "--quiet", "--api", api, *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLORIZE_API_KEY": key}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stdout, stderr = process.stdout.read().decode(), process.stderr.read().decode()
    process.stdout.close()
    process.stderr.close()
    exit_code = os.waitstatus_to_exitcode(status)
    manifest = out / "colorize-manifest.json"
    summary = json.loads(manifest.read_text())["summary"] if manifest.exists() else {}
    return {"exit": exit_code, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "run_s": summary.get("seconds"), "counts": summary.get("counts", {}),
            "output": (stdout + stderr)[-2000:] if exit_code else ""}


def bench(api: str, key: str, service_pids: list[int], workdir: Path, *, photos: int, size: int,
          levels: list[int], rounds: int) -> dict:
    folder = workdir / "photos"
    write_photos(folder, photos, size)
    target = colorize_target(api, api_key=key, size=size)
    # The CLI's fixed cost: interpreter, imports, the walk, pricing and balance; nothing sent.
    fixed = run_cli(api, key, folder, workdir / "dry", 1, 0, "--dry-run")
    results: dict = {"photos": photos, "size": size, "cli_fixed_cpu_s": fixed["cpu_s"],
                     "cli_fixed_wall_s": fixed["wall_s"], "levels": {}}
    # Seeds new to the service: a photo sent again with an earlier seed would be a replay (no model work).
    seed = random.SystemRandom().randrange(2**31)
    for concurrency in levels:
        rows = []
        for round_ in range(rounds):
            with Meter(service_pids) as graph_meter:
                graph = asyncio.run(closed_loop(target, concurrency, requests=photos, warmup=min(concurrency, 16)))
            seed += 1
            with Meter(service_pids) as raw_meter:
                raw_done, raw_s, raw_cpu = asyncio.run(post_and_download(api, key, folder, concurrency, seed))
            seed += 1
            with Meter(service_pids) as cli_meter:
                cli = run_cli(api, key, folder, workdir / f"out-c{concurrency}-r{round_}", concurrency, seed)
            if cli["exit"] != 0 or cli["counts"].get("done") != photos:
                raise RuntimeError(f"the CLI run failed at c={concurrency}: {cli}")
            summary = graph.summary()
            rows.append({
                "graph_rps": summary["throughput_rps"], "graph_p50_ms": summary["p50_ms"],
                "graph_statuses": summary["statuses"],
                "loadgen_cpu_ms": summary["client_cpu_ms_per_request"],
                "graph_service_cpu_ms": 1000 * graph_meter.service_s / photos,
                "graph_others_cores": _others(graph_meter, graph.client_cpu_s),
                "raw_rps": raw_done / raw_s, "raw_cpu_ms": 1000 * raw_cpu / photos,
                "raw_service_cpu_ms": 1000 * raw_meter.service_s / photos,
                "raw_others_cores": _others(raw_meter, raw_cpu),
                "cli_rps": photos / cli["run_s"], "cli_rps_wall": photos / cli["wall_s"],
                "cli_cpu_ms": 1000 * cli["cpu_s"] / photos,
                "cli_cpu_ms_marginal": 1000 * (cli["cpu_s"] - fixed["cpu_s"]) / photos,
                "cli_service_cpu_ms": 1000 * cli_meter.service_s / photos,
                "cli_others_cores": _others(cli_meter, cli["cpu_s"]),
            })
            print(f"c={concurrency} round {round_ + 1}: graph {rows[-1]['graph_rps']:.1f} photos/s, post+download "
                  f"{rows[-1]['raw_rps']:.1f}, CLI {rows[-1]['cli_rps']:.1f} ({rows[-1]['cli_cpu_ms']:.1f} CPU ms/photo)",
                  flush=True)
        results["levels"][concurrency] = {name: _mean([row[name] for row in rows]) if name != "graph_statuses"
                                          else [row[name] for row in rows] for name in rows[0]}
    return results


def _others(meter: Meter, client_cpu_s: float) -> float:
    """Cores busy with other work (not the service, not the client) on average over the window."""
    return max(meter.machine_s - meter.service_s - client_cpu_s, 0.0) / meter.wall_s


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def table(results: dict) -> str:
    lines = [f"{results['photos']} photos of {results['size']} px, tiny model; CLI fixed cost (start, walk, "
             f"pricing, balance): {1000 * results['cli_fixed_cpu_s']:.0f} CPU ms, {results['cli_fixed_wall_s']:.2f} s",
             "",
             "| concurrency | graph photos/s (load.py) | post + download photos/s | CLI photos/s (run / wall) "
             "| CLI / graph | CLI / post + download | client CPU ms/photo (load.py / post + download / CLI) "
             "| service CPU ms/photo (load.py / post + download / CLI) | others' cores (load.py / p+d / CLI) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c, r in results["levels"].items():
        lines.append(f"| {c} | {r['graph_rps']:.1f} | {r['raw_rps']:.1f} | {r['cli_rps']:.1f} / {r['cli_rps_wall']:.1f} "
                     f"| {r['cli_rps'] / r['graph_rps']:.2f} | {r['cli_rps'] / r['raw_rps']:.2f} "
                     f"| {r['loadgen_cpu_ms']:.1f} / {r['raw_cpu_ms']:.1f} / {r['cli_cpu_ms']:.1f} "
                     f"| {r['graph_service_cpu_ms']:.1f} / {r['raw_service_cpu_ms']:.1f} / {r['cli_service_cpu_ms']:.1f} "
                     f"| {r['graph_others_cores']:.2f} / {r['raw_others_cores']:.2f} / {r['cli_others_cores']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", help="a running demo (default: start one here)")
    parser.add_argument("--key", default=os.environ.get("COLORIZE_API_KEY"),
                        help="its API key (default $COLORIZE_API_KEY): enough credits, a high rate limit")
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--size", type=int, default=256, help="photo side in pixels (default 256)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=1, help="graph/CLI turns per level (default 1)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    photos = min(args.photos, 2000)  # every run stops by itself
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        workdir = Path(tmp)
        if args.api:
            if not args.key:
                parser.error("--api needs --key (or COLORIZE_API_KEY)")
            results = bench(args.api, args.key, [], workdir, photos=photos, size=args.size, levels=args.levels,
                            rounds=args.rounds)
        else:
            results = _with_own_demo(workdir, photos, args)
    results["machine"] = {"cpus": os.cpu_count(), "load_average_after": os.getloadavg()}
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _with_own_demo(workdir: Path, photos: int, args: argparse.Namespace) -> dict:
    from tools.build_demo import build

    from .demo_process import DemoService
    from .serve_graph import free_port

    models = workdir / "models"
    build(models)
    demo = DemoService(workdir / "service", models, free_port())
    print(f"demo service ready in {demo.start():.0f} s", flush=True)
    try:
        warmups = sum(min(c, 16) for c in args.levels) * args.rounds
        key = demo.create_key(credits=3 * photos * len(args.levels) * args.rounds + warmups + 100)
        return bench(demo.url, key, demo.service_pids(), workdir, photos=photos, size=args.size,
                     levels=args.levels, rounds=args.rounds)
    finally:
        demo.stop()


if __name__ == "__main__":
    raise SystemExit(main())
