"""Plain-text tables and target verdicts for the benchmark's output."""
from __future__ import annotations

from dataclasses import dataclass


def table(title: str, headers: list[str], rows: list[list], note: str | None = None) -> str:
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) if cells else len(str(h))
              for i, h in enumerate(headers)]
    lines = [f"\n## {title}", "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    for row in cells:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    if note:
        lines.append(f"({note})")
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, dict):
        return " ".join(f"{k}:{v}" for k, v in value.items()) or "-"
    return str(value)


def load_row(label: str, summary: dict) -> list:
    return [label, summary["ok"], summary["throughput_rps"], summary["p50_ms"], summary["p95_ms"],
            summary["p99_ms"], summary["statuses"]]


LOAD_HEADERS = ["run", "ok", "req/s", "p50 ms", "p95 ms", "p99 ms", "statuses"]


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    passed: bool
    margin: str

    def row(self) -> list:
        return ["PASS" if self.passed else "MISS", self.target, self.measured, self.margin]


def at_least(target: str, value: float, floor: float, what: str) -> Verdict:
    return Verdict(target, f"{what} = {value:.3f}", value >= floor, f"{(value / floor - 1) * 100:+.0f}% vs {floor:g}")


def at_most(target: str, value: float, ceiling: float, what: str, unit: str = "") -> Verdict:
    return Verdict(target, f"{what} = {value:.1f}{unit}", value <= ceiling,
                   f"{(value / ceiling - 1) * 100:+.0f}% vs {ceiling:.1f}{unit}")


def verdict_table(verdicts: list[Verdict]) -> str:
    return table("Targets (one run, ratios measured side by side)", ["", "target", "measured", "margin"],
                 [v.row() for v in verdicts])
