"""The `colorize` CLI end to end against a stand-in key API (no service needed)."""
from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import httpx
import pytest

from colorize_client import AsyncClient, RetryPolicy
from colorize_client.batch import DONE, INTERRUPTED, NOT_SENT, Batch
from colorize_client.cli import main
from colorize_client.files import find_photos, is_complete_png
from colorize_client.progress import Progress
from colorize_client.protocol import Options
from tests.client_standin import KEY, StandIn

JPEG = b"\xff\xd8\xff\xe0"


@pytest.fixture()
def shoebox(tmp_path: Path) -> Path:
    box = tmp_path / "shoebox"
    for index, name in enumerate(["a.jpg", "1962/b.jpg", "1962/summer/c.jpg", "1970/d.jpg", "e.jpg"]):
        (box / name).parent.mkdir(parents=True, exist_ok=True)
        (box / name).write_bytes(JPEG + f"photo {index}".encode())
    (box / "notes.txt").write_text("not a photo")
    (box / "1970/corrupt.jpg").write_bytes(JPEG + b"not-an-image")  # the stand-in answers 400, as the service does
    return box


def run(standin: StandIn, *args: str) -> int:
    return main([*args, "--api", "http://svc.test", "--model", "tiny", "--retries", "2"],
                transport=standin.transport())


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("COLORIZE_API_KEY", KEY)


def test_a_run_writes_every_result_a_summary_and_a_manifest_and_a_rerun_resumes(shoebox, tmp_path, capsys):
    standin, out = StandIn(credits=100), tmp_path / "out"
    assert run(standin, str(shoebox), "--out", str(out)) == 1  # the corrupt photo failed
    results = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert results == {"a.colorized.png", "e.colorized.png", "1962/b.colorized.png",
                       "1962/summer/c.colorized.png", "1970/d.colorized.png"}
    assert all(is_complete_png(out / name) for name in results)
    assert standin.credits == 95
    printed = capsys.readouterr()
    assert "5 done, 1 skipped, 1 failed; 5 credits spent" in printed.out
    assert "corrupt.jpg: image data is not a supported image (HTTP 400, request id req-" in printed.out
    assert "notes.txt: not an image" in printed.out
    manifest = json.loads((out / "colorize-manifest.json").read_text())
    rows = {Path(row["input"]).name: row for row in manifest["photos"]}
    assert rows["b.jpg"]["status"] == "done" and rows["b.jpg"]["credits"] == 1
    assert rows["b.jpg"]["output"] == str(out / "1962/b.colorized.png")
    assert rows["b.jpg"]["request_id"].startswith("req-") and rows["b.jpg"]["idempotency_key"].startswith("photo-v1-")
    assert rows["corrupt.jpg"]["status"] == "failed" and rows["corrupt.jpg"]["credits"] == 0
    assert rows["notes.txt"]["status"] == "skipped"
    assert manifest["summary"]["counts"] == {"done": 5, "failed": 1, "skipped": 1}

    posts = len(standin.colorize_posts())
    (out / "1970/d.colorized.png").write_bytes((out / "1970/d.colorized.png").read_bytes()[:40])  # a cut file
    assert run(standin, str(shoebox), "--out", str(out)) == 1
    sent = [r for r in standin.colorize_posts()[posts:]]
    assert len(sent) == 2  # the cut result and the corrupt photo; complete results are skipped
    assert is_complete_png(out / "1970/d.colorized.png")
    assert standin.credits == 95  # the cut one was replayed under its key, not charged again
    assert "1 done, 5 skipped, 1 failed" in capsys.readouterr().out


def test_the_manifest_can_be_csv(shoebox, tmp_path):
    standin = StandIn()
    run(standin, str(shoebox), "--out", str(tmp_path / "out"), "--manifest", str(tmp_path / "m.csv"))
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert len(rows) == 7 and {r["status"] for r in rows} == {"done", "failed", "skipped"}
    assert list(rows[0]) == ["input", "output", "status", "reason", "request_id", "credits", "attempts",
                             "idempotency_key"]


def test_dry_run_counts_prices_and_checks_the_balance_without_sending(shoebox, tmp_path, capsys):
    standin = StandIn(credits=4)
    args = (str(shoebox), "--out", str(tmp_path / "out"), "--dry-run", "--face-remaster")
    assert run(standin, *args) == 3  # 6 photos x 3 credits > 4
    err = capsys.readouterr().err
    assert "6 photos found, 0 already done, 1 other files skipped; 6 to colorize x 3 credits each" in err
    assert "= 18 credits; balance 4 credits" in err and "not starting" in err
    assert run(standin, *args, "--partial") == 0
    standin.credits = 18
    assert run(standin, *args) == 0
    assert standin.colorize_posts() == [] and not (tmp_path / "out").exists()


def test_a_run_the_balance_cannot_pay_for_is_refused_unless_partial(shoebox, tmp_path, capsys):
    standin = StandIn(credits=3)
    assert run(standin, str(shoebox), "--out", str(tmp_path / "out")) == 3
    assert standin.colorize_posts() == []
    assert run(standin, str(shoebox), "--out", str(tmp_path / "out"), "--partial", "--concurrency", "1") == 1
    assert standin.credits == 0 and len(list((tmp_path / "out").rglob("*.png"))) == 3
    out = capsys.readouterr().out
    assert "no credits: not enough credits" in out and "not sent" in out


def test_an_older_service_without_account_and_pricing_still_works(shoebox, tmp_path, capsys):
    standin = StandIn(credits=3, account_route=False, pricing_route=False)
    assert run(standin, str(shoebox), "--out", str(tmp_path / "out"), "--concurrency", "1") == 1
    printed = capsys.readouterr()
    assert "balance unknown" in printed.err and "seed price table" in printed.err
    assert "3 credits spent (by the price table)" in printed.out  # no balance before: prices are summed
    assert standin.credits == 0


def test_credits_spent_come_from_the_service_when_it_says(shoebox, tmp_path, capsys):
    standin = StandIn(credits=50)
    run(standin, str(shoebox), "--out", str(tmp_path / "out"))
    assert "5 credits spent;" in capsys.readouterr().out  # balance 50 before, X-Credits-Remaining 45 after


def test_the_key_is_never_printed_or_stored(shoebox, tmp_path, capsys, monkeypatch):
    standin = StandIn()
    run(standin, str(shoebox), "--out", str(tmp_path / "out"), "--key", KEY)
    monkeypatch.setenv("COLORIZE_API_KEY", "ck_live_0123456789ab_" + "w" * 43)  # refused
    assert run(standin, str(shoebox), "--out", str(tmp_path / "out2")) == 3
    printed = capsys.readouterr()
    text = printed.out + printed.err + (tmp_path / "out/colorize-manifest.json").read_text()
    assert "refused the API key" in printed.err
    assert KEY.split("_")[-1] not in text and "w" * 43 not in text


def test_missing_key_and_missing_paths_are_usage_errors(shoebox, tmp_path, monkeypatch):
    monkeypatch.delenv("COLORIZE_API_KEY")
    assert run(StandIn(), str(shoebox), "--out", str(tmp_path / "out")) == 2
    monkeypatch.setenv("COLORIZE_API_KEY", KEY)
    assert run(StandIn(), str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")) == 2


class Gate:
    """Holds every colorize answer until released; counts what is waiting."""

    def __init__(self, standin: StandIn):
        self.standin, self.waiting, self.release = standin, 0, asyncio.Event()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.waiting += 1
            await self.release.wait()
        return self.standin.handle(request)


def batch_run(tmp_path: Path, shoebox: Path, action: str) -> tuple[list, StandIn]:
    standin = StandIn()
    photos, _ = find_photos([shoebox], tmp_path / "out")

    async def go():
        gate = Gate(standin)
        async with AsyncClient("http://svc.test", KEY, transport=httpx.MockTransport(gate.handle),
                               retry=RetryPolicy(attempts=1)) as client:
            batch = Batch(client, Options("tiny"), 1, Progress(), concurrency=2)
            running = asyncio.create_task(batch.run(photos))
            while gate.waiting < 2:
                await asyncio.sleep(0.01)
            if action == "stop":
                batch.stop()
                gate.release.set()
            else:
                batch.abandon()
            return await running

    return asyncio.run(go()), standin


def test_stop_sends_nothing_new_and_lets_photos_in_flight_finish(tmp_path, shoebox):
    outcomes, standin = batch_run(tmp_path, shoebox, "stop")
    assert [o.status for o in outcomes].count(DONE) == 2 and len(standin.colorize_posts()) == 2
    assert [o.status for o in outcomes].count(NOT_SENT) == 4
    assert len(list((tmp_path / "out").rglob("*.png"))) == 2


def test_abandon_gives_up_photos_in_flight_and_leaves_no_files(tmp_path, shoebox):
    outcomes, _ = batch_run(tmp_path, shoebox, "abandon")
    assert sorted(o.status for o in outcomes) == [INTERRUPTED] * 2 + [NOT_SENT] * 4
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").rglob("*")) == []
