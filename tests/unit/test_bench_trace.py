"""bench/trace.py reads the Ingress's JSON job lines out of Ray's worker stderr files, in time order."""
from __future__ import annotations

import json

from bench.trace import job_lines
from service.telemetry import RequestRecord, json_line


def test_job_lines_are_found_among_other_output_in_time_order(tmp_path):
    record = RequestRecord(route="POST /api/v1/colorize", request_id="r1")
    record.status, record.outcome, record.model = 200, "ok", "tiny"
    record.stages = {"tiny": {"queued_s": 0.001, "run_s": 0.012, "batch_size": 1}}
    record.add_phase("stages", 0.02)
    later, earlier = json.loads(json_line(record, 0.03)), json.loads(json_line(record, 0.04))
    earlier["time"], later["time"] = "2026-12-02T10:00:00.000Z", "2026-12-02T10:00:01.000Z"
    (tmp_path / "worker-a.err").write_text("INFO something else\n" + json.dumps(later) + "\n")
    (tmp_path / "worker-b.err").write_text(json.dumps(earlier) + "\n" + '{"time": "x", "event": "other"}\n')
    (tmp_path / "raylet.err").write_text(json.dumps(earlier) + "\n")  # not a worker's
    assert [job["seconds"] for job in job_lines(tmp_path)] == [0.04, 0.03]
    assert job_lines(tmp_path)[0]["phases"] == {"stages": 0.02}
