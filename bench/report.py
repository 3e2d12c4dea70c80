"""Plain-text tables and target verdicts from the results dict of ``bench.run``."""
from __future__ import annotations

from dataclasses import dataclass

from .graph import mean_batch

LOAD_HEADERS = ["run", "ok", "req/s", "p50 ms", "p95 ms", "p99 ms", "statuses"]
CPU_GROUPS = ("whole machine", "Ingress", "ColorizerTiny", "proxy", "Ray daemons (raylet, GCS, ...)",
              "idle stages", "controller", "client (load generator + driver)")


def table(title: str, headers: list[str], rows: list[list], note: str | None = None) -> str:
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells if i < len(row)]) for i, h in enumerate(headers)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    return "\n".join([f"\n## {title}", line(headers), *map(line, cells), *([f"({note})"] if note else [])])


def _cell(value) -> str:
    if isinstance(value, float):
        return "-" if value != value else f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, dict):
        return " ".join(f"{k}:{v}" for k, v in value.items()) or "-"
    return str(value)


def load_row(label: str, summary: dict) -> list:
    return [label, summary["ok"], summary["throughput_rps"], summary["p50_ms"], summary["p95_ms"],
            summary["p99_ms"], summary["statuses"]]


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    passed: bool
    margin: str


def at_least(target: str, value: float, floor: float, what: str) -> Verdict:
    return Verdict(target, f"{what} = {value:.3f}", value >= floor, f"{(value / floor - 1) * 100:+.0f}% vs {floor:g}")


def at_most(target: str, value: float, ceiling: float, what: str, unit: str = "") -> Verdict:
    margin = f"{(value / ceiling - 1) * 100:+.0f}% vs {ceiling:.1f}{unit}" if ceiling else f"limit {ceiling:g}"
    return Verdict(target, f"{what} = {value:.1f}{unit}", value <= ceiling, margin)


NOISY_CORES = 0.25  # other users of the machine above this: rerun before trusting the verdicts


def foreign_cores(summary: dict) -> float:
    """Cores used by processes that are not part of the measurement while it ran."""
    cpu = summary["cpu_ms_per_request"]
    ours = sum(v for k, v in cpu.items() if k != "whole machine")
    return max(cpu["whole machine"] - ours, 0.0) * summary["ok"] / 1000 / summary["wall_s"]


def bare_rates(results: dict) -> dict[int, float]:
    """Bare img/s per batch size: the mean of the runs before and after the servers."""
    before, after = results["bare_before"], results["bare_after"]
    return {b: (before[b]["rps"] + after[b]["rps"]) / 2 for b in before}


def bare_table(results: dict) -> str:
    before, after, mean = results["bare_before"], results["bare_after"], bare_rates(results)
    rows = [[b, before[b]["ms_per_image"], before[b]["rps"], after[b]["rps"], mean[b], mean[b] / mean[min(mean)],
             (before[b]["cpu_ms_per_image"] + after[b]["cpu_ms_per_image"]) / 2,
             f"{before[b]['foreign_cores']:.2f} / {after[b]['foreign_cores']:.2f}"] for b in before]
    return table("Bare in-process (decode + colorize batch + PNG encode + write; torch default threads)",
                 ["batch", "ms/img", "img/s before", "img/s after", "img/s mean", "vs b1", "CPU ms/img",
                  "others' cores"], rows)


def level_table(title: str, levels: dict, with_batches: bool) -> str:
    rows = []
    for concurrency, summary in levels.items():
        row = load_row(f"c={concurrency}", summary)
        if with_batches:
            row += [mean_batch(summary["batch_sizes"]), summary["batch_sizes"]]
        rows.append(row)
    errors = "; ".join(f"c={c}: {n} x {what}" for c, s in levels.items() for what, n in s.get("errors", {}).items())
    return table(title, LOAD_HEADERS + (["mean batch", "batches formed"] if with_batches else []), rows,
                 f"errors: {errors}" if errors else None)


def comparison_table(results: dict) -> str:
    bare = results["bare_interleaved"]
    rows = []
    for c, g in results["graph"].items():
        p = results["peer"].get(c)
        if p:
            rows.append([f"c={c}", g["throughput_rps"], p["throughput_rps"], g["throughput_rps"] / p["throughput_rps"],
                         g["throughput_rps"] / bare["rps"], g["p50_ms"], p["p50_ms"], g["p99_ms"], p["p99_ms"]])
    return table("Graph vs FastAPI peer vs bare", ["", "graph req/s", "peer req/s", "graph/peer", "graph/bare",
                                                    "graph p50", "peer p50", "graph p99", "peer p99"], rows,
                 f"c=16: graph, peer and bare (batch {bare['batch']}) took turns twice; bare rounds "
                 + ", ".join(f"{r:.1f}" for r in bare["rounds"]) + " img/s")


def cpu_table(results: dict) -> str:
    """CPU per request by process at c=16, for each server measured there."""
    columns = {"graph": results["graph"].get(16)}
    if "variant" in results:
        columns[f"graph, {results['variant'].get('label', 'variant')}"] = results["variant"]
    columns["peer"] = results["peer"].get(16)
    summaries = {name: summary for name, summary in columns.items() if summary}
    columns = {name: summary["cpu_ms_per_request"] for name, summary in summaries.items()}
    groups = [name for name in CPU_GROUPS if any(name in cpu for cpu in columns.values())]
    groups += [name for cpu in columns.values() for name in cpu if name not in groups]
    rows = [[group] + [cpu.get(group, float("nan")) for cpu in columns.values()] for group in groups]
    rows.append(["not ours (other users of this machine)"] +
                [cpu["whole machine"] - sum(v for k, v in cpu.items() if k != "whole machine")
                 for cpu in columns.values()])
    rows.append(["  = cores used by others meanwhile"] + [foreign_cores(s) for s in summaries.values()])
    best = max(results["bare_before"], key=lambda b: results["bare_before"][b]["rps"])
    bare_cpu = (results["bare_before"][best]["cpu_ms_per_image"] + results["bare_after"][best]["cpu_ms_per_image"]) / 2
    return table("CPU ms per successful request at c=16, by process (2 cores = 2000 CPU-ms/s)",
                 ["process"] + list(columns), rows, f"bare, batch {best}: {bare_cpu:.1f} CPU ms/image")


def batching_table(results: dict) -> str:
    runs = results["batching"]
    rows = [load_row("on" if run["batching"] else "off (max_batch_size 1)", run) +
            [mean_batch(run["batch_sizes"]), run["cpu_ms_per_request"]["ColorizerTiny"]] for run in runs]
    on = sum(run["throughput_rps"] for run in runs if run["batching"])
    off = sum(run["throughput_rps"] for run in runs if not run["batching"])
    rows.append(["off / on (req/s)", "", off / on if on else float("nan")])
    return table("Batching on vs off (c=16, interleaved)", LOAD_HEADERS + ["mean batch", "colorizer CPU ms/req"],
                 rows)


def overload_table(results: dict) -> str:
    o = results["overload"]
    cpu = o["cpu_ms_per_sent_request"]
    reasons = "; ".join(f"{n} x {what}" for what, n in o.get("errors", {}).items())
    return table(f"Overload: open loop (Poisson) at {o['offered_factor']:g} x {o['capacity_rps']:.1f} req/s",
                 ["offered/s", "sent", "accepted", "accepted/s", "p50 ms", "p95 ms", "p99 ms", "shed", "statuses"],
                 [[o["offered_rps"], o["requests"], o["ok"], o["throughput_rps"], o["p50_ms"], o["p95_ms"], o["p99_ms"],
                   f"{o['shed_fraction'] * 100:.0f}%", o["statuses"]]],
                 f"{o['config']}; the same bound without excess traffic (closed loop at "
                 f"c={o['config']['Ingress.max_ongoing_requests']}): {o['bound_only']['throughput_rps']:.1f} req/s, "
                 f"p50 {o['bound_only']['p50_ms']:.0f} ms, p99 {o['bound_only']['p99_ms']:.0f} ms; client lag p99 {o.get('client_lag_p99_ms', float('nan')):.1f} ms, p99 counted from "
                 f"the schedule {o.get('p99_from_schedule_ms', float('nan')):.0f} ms; CPU ms per sent "
                 f"request: proxy {cpu['proxy']:.1f}, client {cpu['client (load generator + driver)']:.1f}, "
                 f"whole machine {cpu['whole machine']:.1f}; {reasons}")


def memory_table(results: dict) -> str:
    memory = results["memory"]
    return table(f"RSS of every Serve process before/after {memory['ok']} requests (c=16, after warm-up)",
                 ["process", "before MiB", "after MiB", "growth"],
                 [[n, r["before_mib"], r["after_mib"], f"{r['growth'] * 100:+.1f}%"] for n, r in memory["rss"].items()])


def profile_tables(profile: dict) -> list[str]:
    if "error" in profile:
        return [f"\n## Profile\n{profile['error']}"]
    out = []
    for name, data in profile.items():
        rows = [[category, f"{share * 100:.0f}%"] for category, share in data["categories"].items()]
        rows += [[f"  self: {frame[:100]}", f"{share * 100:.0f}%"] for frame, share in data["top_self"][:6]]
        out.append(table(f"Profile at c=16: {name} ({data['samples']} on-CPU samples, py-spy)", ["where", "share"],
                         rows))
    return out


def failed_requests(levels: dict) -> int:
    return sum(n for s in levels.values() for status, n in s["statuses"].items() if not 200 <= int(status) < 300)


def verdicts(results: dict) -> list[Verdict]:
    graph16, peer16 = results["graph"].get(16), results["peer"].get(16)
    bare_best = results["bare_interleaved"]["rps"]
    unloaded_p50 = results["graph"][min(results["graph"])]["p50_ms"]
    overload, memory = results["overload"], results["memory"]["rss"]
    replicas = [name for name in memory if name not in ("proxy", "controller")]
    worst = max(replicas, key=lambda name: memory[name]["growth"])
    found = []
    if graph16 and peer16:
        found += [
            at_least(f"graph >= 0.85 x bare (c=16 vs batch {results['bare_interleaved']['batch']})",
                     graph16["throughput_rps"] / bare_best, 0.85,
                     f"{graph16['throughput_rps']:.1f} / {bare_best:.1f} img/s"),
            at_least("graph >= 1.0 x FastAPI peer (c=16)", graph16["throughput_rps"] / peer16["throughput_rps"], 1.0,
                     f"{graph16['throughput_rps']:.1f} / {peer16['throughput_rps']:.1f} req/s"),
            Verdict("graph p99 < peer p99 (c=16)", f"{graph16['p99_ms']:.0f} vs {peer16['p99_ms']:.0f} ms",
                    graph16["p99_ms"] < peer16["p99_ms"], f"{(graph16['p99_ms'] / peer16['p99_ms'] - 1) * 100:+.0f}%"),
        ]
    found += [
        at_most(f"overload x{overload['offered_factor']:g}: accepted p99 <= 3 x unloaded p50",
                overload["p99_ms"], 3 * unloaded_p50, f"p99 (unloaded p50 {unloaded_p50:.0f} ms)", " ms"),
        at_most("overload: no 5xx but 503 shedding, no transport errors", overload["unexpected"], 0, "others"),
        at_most("overload: every shed answer has Retry-After", overload.get("shed_without_retry_after", 0), 0,
                "without"),
        at_most("(extra) closed loop c=1..64: no errors at all", failed_requests(results["graph"]), 0, "failed"),
        at_most("replica RSS growth < 5%", memory[worst]["growth"] * 100, 5.0,
                f"worst: {worst}, {results['memory']['ok']} req", "%"),
    ]
    return found


def lone_user_verdicts(results: dict) -> list[Verdict]:
    """Issue 16: no tax on a lone user or a small deployment, against the peer and the bare loop."""
    found = []
    for c, graph in results["graph"].items():
        peer = results["peer"].get(c)
        if not peer:
            continue
        found.append(at_least(f"graph >= 1.0 x peer req/s (c={c})", graph["throughput_rps"] / peer["throughput_rps"],
                              1.0, f"{graph['throughput_rps']:.1f} / {peer['throughput_rps']:.1f} req/s"))
        slower = max(graph["p50_ms"] / peer["p50_ms"], graph["p99_ms"] / peer["p99_ms"])
        found.append(Verdict(f"graph p50 and p99 <= peer's (c={c})",
                             f"{graph['p50_ms']:.0f} / {graph['p99_ms']:.0f} vs {peer['p50_ms']:.0f} / "
                             f"{peer['p99_ms']:.0f} ms", slower <= 1.0, f"{(slower - 1) * 100:+.0f}% (worse of the two)"))
    bare = bare_rates(results)
    if 1 in results["graph"] and 1 in bare:
        found.append(at_least("graph >= 0.75 x bare (c=1 vs batch 1)", results["graph"][1]["throughput_rps"] / bare[1],
                              0.75, f"{results['graph'][1]['throughput_rps']:.1f} / {bare[1]:.1f} img/s"))
    if 16 in results["graph"]:
        cpu = results["graph"][16]["cpu_ms_per_request"]
        ours = sum(value for name, value in cpu.items() if name != "whole machine")  # other users' share left out
        found.append(at_most("CPU per request at c=16 <= 35 ms (service + load generator)", ours, 35.0,
                             f"whole machine {cpu['whole machine']:.1f}, ours", " ms"))
    return found


def trace_table(trace: dict[str, float]) -> str:
    return table("A lone request through the graph, per hop (medians, bench/trace.py)", ["where", "ms"],
                 [[where, ms] for where, ms in trace.items()])


def report(results: dict) -> str:
    blocks = [bare_table(results), level_table("Serve graph over HTTP (tiny model)", results["graph"], True),
              level_table("FastAPI peer (one uvicorn worker, sync endpoint)", results["peer"], False),
              comparison_table(results), cpu_table(results)]
    if "lone_trace" in results:
        blocks.append(trace_table(results["lone_trace"]))
    blocks.append(batching_table(results))
    blocks += [overload_table(results), memory_table(results)]
    if "profile" in results:
        blocks += profile_tables(results["profile"])
    noise = {name: foreign_cores(results[name][16]) for name in ("graph", "peer") if 16 in results[name]}
    noise["bare"] = results["bare_interleaved"]["foreign_cores"]
    note = "other users of the machine during the c=16 head-to-head: " + ", ".join(
        f"{cores:.2f} cores while the {name} ran" for name, cores in noise.items())
    if any(cores > NOISY_CORES for cores in noise.values()):
        note += f"; above {NOISY_CORES} cores: NOISY, rerun on a quiet machine before trusting these verdicts"
    blocks.append(table("Targets (one run, ratios measured side by side)", ["", "target", "measured", "margin"],
                        [["PASS" if v.passed else "MISS", v.target, v.measured, v.margin] for v in verdicts(results)],
                        note))
    blocks.append(table("Lone-user targets (issue 16; graph throughput counts answered jobs, sheds apart)",
                        ["", "target", "measured", "margin"],
                        [["PASS" if v.passed else "MISS", v.target, v.measured, v.margin]
                         for v in lone_user_verdicts(results)]))
    return "\n".join(blocks)
