"""The `colorize` CLI (python -m colorize_client) against the running service: a folder of 30
photos, too few credits, Ctrl-C mid-run, and the service killed and restarted mid-run. The
ledger is read directly: every photo charged exactly once, and no result file cut short."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.helpers import encode, free_port, photo
from tests.integration.conftest import balance, create_key

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PHOTO_SIZE = (96, 64)
# 30 photos in nested folders, some PNG, names as people give them (spaces, quotes, accents), plus a
# text file and a cut-off JPEG.
LAYOUT = (["Großmutter.jpg", 'Oma "Lise" am See.jpg'] + [f"p{i}.jpg" for i in range(4)]
          + [f"1962/p{i}.jpg" for i in range(8)] + [f"1962/summer/p{i}.jpg" for i in range(8)]
          + [f"1970/p{i}.png" for i in range(8)])


def shoebox(root: Path, names: list[str] = LAYOUT, *, extras: bool = True) -> Path:
    for index, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(encode(photo(*PHOTO_SIZE, seed=index), "PNG" if name.endswith(".png") else "JPEG"))
    if extras:
        (root / "notes.txt").write_text("Aunt Mary, 1962\n")
        whole = encode(photo(*PHOTO_SIZE, seed=99), "JPEG")
        (root / "1970" / "corrupt.jpg").write_bytes(whole[: len(whole) // 2])
    return root


def cli(api: str, key: str, *args: str | Path) -> list[str]:
    return [sys.executable, "-m", "colorize_client", *map(str, args), "--api", api, "--model", "tiny"]


def env(key: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "COLORIZE_API_KEY": key}


def run_cli(api: str, key: str, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cli(api, key, *args), env=env(key), capture_output=True, text=True, timeout=timeout)


def usage_rows(database_url: str, key: str) -> list:
    from sqlalchemy import select

    from auth.db import make_engine, usage
    from auth.keys import parse_key

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(usage).where(usage.c.key_id == parse_key(key).key_id)).all()
    finally:
        engine.dispose()


def assert_charged_exactly_once(rows: list, manifest: dict, photos: int) -> None:
    """One succeeded (charged) job per photo, under that photo's Idempotency-Key."""
    charged = [row.idempotency_key for row in rows if row.status == "succeeded"]
    assert len(charged) == len(set(charged)) == photos, f"{len(charged)} charged jobs for {photos} photos"
    done_keys = {row["idempotency_key"] for row in manifest["photos"] if row["status"] == "done"}
    assert done_keys <= set(charged)
    assert not [row for row in rows if row.status == "reserved"], "a reservation was never settled"


def assert_results_whole(src: Path, out: Path, names: list[str]) -> None:
    for name in names:
        result = out / Path(name).with_suffix(".colorized.png")
        with Image.open(result) as image:
            image.load()  # raises on a truncated file
            assert image.size == PHOTO_SIZE, result
    assert not list(out.rglob("*.part")), "a temporary file was left behind"


def test_a_folder_of_30_photos_is_colorized_once_and_a_rerun_sends_nothing(service, tmp_path):
    key = create_key(service["args"], credits=100, rate_per_s=1000, burst=1000)
    src, out = shoebox(tmp_path / "shoebox"), tmp_path / "out"
    first = run_cli(service["url"], key, src, "--out", out, "--concurrency", "4")
    assert first.returncode == 1, first.stderr  # the cut-off JPEG failed
    assert "30 done, 1 skipped, 1 failed; 30 credits spent" in first.stdout
    assert "corrupt.jpg: " in first.stdout and "(HTTP 400, request id " in first.stdout
    assert "notes.txt: not an image" in first.stdout
    assert_results_whole(src, out, LAYOUT)
    assert {p.relative_to(out).as_posix() for p in out.rglob("*.png")} == {
        Path(name).with_suffix(".colorized.png").as_posix() for name in LAYOUT}
    manifest = json.loads((out / "colorize-manifest.json").read_text())
    statuses = {Path(row["input"]).relative_to(src).as_posix(): row["status"] for row in manifest["photos"]}
    assert statuses == {**{name: "done" for name in LAYOUT}, "notes.txt": "skipped", "1970/corrupt.jpg": "failed"}
    assert all(row["request_id"] for row in manifest["photos"] if row["status"] != "skipped")
    assert_charged_exactly_once(usage_rows(service["args"]["auth"]["database_url"], key), manifest, 30)
    assert balance(service["args"], key) == 70

    again = run_cli(service["url"], key, src, "--out", out, "--concurrency", "4")
    assert again.returncode == 1 and "0 done, 31 skipped, 1 failed; 0 credits spent" in again.stdout
    assert balance(service["args"], key) == 70
    assert len([r for r in usage_rows(service["args"]["auth"]["database_url"], key) if r.status == "succeeded"]) == 30


def test_a_key_with_too_few_credits_gets_as_far_as_it_goes_with_partial(service, tmp_path):
    key = create_key(service["args"], credits=5, rate_per_s=1000, burst=1000)
    src, out = shoebox(tmp_path / "shoebox", LAYOUT[:8], extras=False), tmp_path / "out"
    result = run_cli(service["url"], key, src, "--out", out, "--concurrency", "2", "--partial")
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("5 done,") and "no credits: not enough credits" in result.stdout
    assert len(list(out.rglob("*.colorized.png"))) == 5 and balance(service["args"], key) == 0
    rows = usage_rows(service["args"]["auth"]["database_url"], key)
    assert len([r for r in rows if r.status == "succeeded"]) == 5
    # Refused jobs are recorded and cost nothing; none is left reserved.
    assert {r.status for r in rows} <= {"succeeded", "refused"}


def test_dry_run_and_a_run_the_balance_cannot_pay_for_are_refused(service, tmp_path):
    key = create_key(service["args"], credits=5, rate_per_s=1000, burst=1000)
    if httpx.get(f"{service['url']}/api/v1/account", headers={"X-Api-Key": key}, timeout=30).status_code == 404:
        pytest.skip("GET /api/v1/account is not on this service yet (404): the balance check needs it")
    src, out = shoebox(tmp_path / "shoebox", LAYOUT[:8], extras=False), tmp_path / "out"
    dry = run_cli(service["url"], key, src, "--out", out, "--dry-run")
    assert dry.returncode == 3 and "8 to colorize x 1 credit each" in dry.stderr
    assert "balance 5 credits" in dry.stderr and "not starting" in dry.stderr
    assert run_cli(service["url"], key, src, "--out", out, "--dry-run", "--partial").returncode == 0
    refused = run_cli(service["url"], key, src, "--out", out)
    assert refused.returncode == 3 and not out.exists()
    assert balance(service["args"], key) == 5 and usage_rows(service["args"]["auth"]["database_url"], key) == []


def wait_for_results(out: Path, count: int, process: subprocess.Popen, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        found = len(list(out.rglob("*.colorized.png")))
        if found >= count:
            return found
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} results in {timeout_s} s (exit status {process.poll()})")


def test_ctrl_c_stops_sending_finishes_in_flight_and_a_rerun_completes(service, tmp_path):
    # A rate-limited key keeps the run slow (about 2 photos/s), so Ctrl-C lands in the middle.
    key = create_key(service["args"], credits=100, rate_per_s=2, burst=1)
    names = LAYOUT[:12]
    src, out = shoebox(tmp_path / "shoebox", names, extras=False), tmp_path / "out"
    process = subprocess.Popen(cli(service["url"], key, src, "--out", out, "--concurrency", "2"), env=env(key),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_results(out, 2, process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "stopping: nothing new is sent" in stderr and stdout.startswith("interrupted: ")
    manifest = json.loads((out / "colorize-manifest.json").read_text())
    done = [row for row in manifest["photos"] if row["status"] == "done"]
    assert 2 <= len(done) < len(names) and manifest["summary"]["interrupted"]
    assert {row["status"] for row in manifest["photos"]} <= {"done", "not sent", "interrupted"}
    assert len(list(out.rglob("*.colorized.png"))) == len(done)
    assert not list(out.rglob("*.part"))
    charged_before = len([r for r in usage_rows(service["args"]["auth"]["database_url"], key)
                          if r.status == "succeeded"])
    assert charged_before == len(done)  # in-flight photos were finished and saved, not dropped

    rerun = run_cli(service["url"], key, src, "--out", out, "--concurrency", "2")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(names) - len(done)} done, {len(done)} skipped" in rerun.stdout
    assert_results_whole(src, out, names)
    manifest = json.loads((out / "colorize-manifest.json").read_text())
    assert_charged_exactly_once(usage_rows(service["args"]["auth"]["database_url"], key), manifest, len(names))
    assert balance(service["args"], key) == 100 - len(names)


@pytest.mark.timeout(600)
def test_the_service_killed_and_restarted_mid_run_charges_each_photo_once(models_dir, tmp_path):
    from auth.ledger import Ledger
    from auth.db import make_engine
    from bench.demo_process import DemoService

    # Reservations of jobs killed mid-flight are released after reservation_ttl_s (30 s, the
    # least allowed); until then a retry of the same photo is told "still in progress" (409).
    demo = DemoService(tmp_path / "service", models_dir, free_port(),
                       auth={"reservation_ttl_s": 30, "sweep_interval_s": 1})
    demo.start()
    try:
        key = demo.create_key(credits=100)
        src, out = shoebox(tmp_path / "shoebox", extras=False), tmp_path / "out"
        process = subprocess.Popen(cli(demo.url, key, src, "--out", out, "--concurrency", "4"), env=env(key),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        before_kill = wait_for_results(out, 5, process)
        demo.kill()  # SIGKILL to serve run, Ray and every replica: jobs in flight die with them
        demo.start()
        stdout, stderr = process.communicate(timeout=180)
        first_run = f"first run (killed at {before_kill} results):\n{stdout}\n{stderr[-3000:]}"
        assert before_kill < len(LAYOUT), "the run ended before the kill\n" + first_run
        assert process.returncode in (0, 1), first_run  # 1: photos that failed while the service was down
        survivors = len(list(out.rglob("*.colorized.png")))

        rerun = run_cli(demo.url, key, src, "--out", out, "--concurrency", "4", "--retries", "8", timeout=240)
        assert rerun.returncode == 0, f"{first_run}\nre-run:\n{rerun.stdout}\n{rerun.stderr[-3000:]}"
        assert f"{len(LAYOUT) - survivors} done, {survivors} skipped" in rerun.stdout
        assert_results_whole(src, out, LAYOUT)
        engine = make_engine(demo.ledger_url)
        try:
            Ledger(engine, reservation_ttl_s=30).sweep()  # what the service's own sweep does every second
        finally:
            engine.dispose()
        manifest = json.loads((out / "colorize-manifest.json").read_text())
        rows = usage_rows(demo.ledger_url, key)
        print("\n".join(f"{r.status} {r.idempotency_key} {r.note}" for r in rows))  # shown if the test fails
        assert_charged_exactly_once(rows, manifest, len(LAYOUT))
        from auth.accounts import Accounts
        from auth.keys import parse_key

        engine = make_engine(demo.ledger_url)
        try:
            assert Accounts(engine).get(parse_key(key).key_id).balance == 100 - len(LAYOUT)
        finally:
            engine.dispose()
    finally:
        demo.stop()
