"""The end of a run: the summary printed for people and the manifest kept for programs."""
from __future__ import annotations

import csv
from collections import Counter
import io
import json
from pathlib import Path

from .batch import ALREADY_DONE, DONE, FAILED, INTERRUPTED, NOT_SENT, SKIPPED, Outcome
from .files import write_atomically
from .progress import credits

MANIFEST_FIELDS = ("input", "output", "status", "reason", "request_id", "credits", "attempts", "idempotency_key")
LISTED = 20  # per kind in the summary; the manifest has them all
AGGREGATED = (ALREADY_DONE,)


def summary_text(outcomes: list[Outcome], *, credits_spent: int, credits_exact: bool, seconds: float,
                 interrupted: bool, manifest: Path | None) -> str:
    tally = Counter(o.status for o in outcomes)
    counts = {status: tally[status] for status in (DONE, SKIPPED, FAILED, NOT_SENT, INTERRUPTED)}
    done = counts[DONE]
    rate = f", {done / seconds:.2f} photos/s" if seconds > 0 and done else ""
    spent = f"{credits(credits_spent)} spent" + ("" if credits_exact else " (by the price table)")
    lines = [("interrupted: " if interrupted else "") + ", ".join(f"{n} {status}" for status, n in counts.items()
                                                                   if n or status in (DONE, FAILED))
             + f"; {spent}; {seconds:.1f} s{rate}"]
    by_status: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_status.setdefault(outcome.status, []).append(outcome)
    for status in (FAILED, INTERRUPTED, NOT_SENT, SKIPPED):
        listed = by_status.get(status, [])
        if not listed:
            continue
        lines.append(f"{status}:")
        # Photos that share one reason (already done; not sent because the run stopped) are counted,
        # the others listed one by one.
        shared = Counter(o.reason for o in listed if o.reason in AGGREGATED or status == NOT_SENT)
        lines += [f"  {n} photo{'s' * (n != 1)}: {reason}" for reason, n in shared.items()]
        single = [o for o in listed if o.reason not in shared]
        lines += [f"  {o.input}: {o.reason}" for o in single[:LISTED]]
        if len(single) > LISTED:
            lines.append(f"  ... and {len(single) - LISTED} more (see the manifest)")
    if manifest is not None:
        lines.append(f"manifest: {manifest}")
    return "\n".join(lines)


def write_manifest(path: Path, outcomes: list[Outcome], summary: dict) -> None:
    """JSON ({"summary", "photos"}) or, for a .csv path, one row per photo. Written atomically."""
    rows = [{"input": str(o.input), "output": str(o.output) if o.output else "", "status": o.status,
             "reason": o.reason, "request_id": o.request_id or "", "credits": o.credits, "attempts": o.attempts,
             "idempotency_key": o.idempotency_key or ""} for o in outcomes]
    if path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        data = buffer.getvalue()
    else:
        data = json.dumps({"summary": summary, "photos": rows}, indent=2) + "\n"
    write_atomically(path, data.encode())
