"""respond's overhead benchmark: one command, one table, one JSON file.

    .venv/bin/python bench/run.py [--quick] [--only gateway,chain,embedded,memory,background]
                                  [--json bench/results/latest.json] [--profile]

Sections (see bench/README.md for what each figure means):
  gateway     respond in front of a fast upstream vs the upstream called directly
  chain       a chain of previous_response_id turns: per-turn CPU, latency, DB round trips
  memory      respond's RSS idle and with 1,000 concurrent open streams
  background  background jobs/s on SQLite and PostgreSQL
  embedded    tokens/s through respond vs the same llama.cpp model called in-process

Every figure is compared with a baseline measured in the same run; targets are checked here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import orjson

SECTIONS = ("gateway", "chain", "memory", "background", "embedded")
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"

# targets of the issue
CPU_PER_REQUEST_MS = 1.5
THROUGHPUT_RATIO_C16 = 0.5
TTFT_EXTRA_MS = 2.0
CHAIN_SLOPE_MS = 0.02
EMBEDDED_RATIO = 0.95
STREAMS_RSS_MB = 300


@dataclass(frozen=True)
class Plan:
    levels: dict[int, int]  # concurrency -> requests per side
    rounds: int  # direct/respond alternations per level
    min_seconds: float  # each run goes on at least this long (CPU is read in 10 ms ticks)
    turns: int
    streams: int
    jobs: int
    pairs: int
    max_tokens: int
    embedded_budget: float  # seconds after which no new embedded pair starts


FULL = Plan(levels={1: 2000, 16: 4000, 64: 4000}, rounds=2, min_seconds=3.0, turns=1000,
            streams=1000, jobs=2000, pairs=6, max_tokens=256, embedded_budget=120)
QUICK = Plan(levels={1: 200, 16: 500, 64: 500}, rounds=1, min_seconds=1.0, turns=500,
             streams=1000, jobs=500, pairs=2, max_tokens=256, embedded_budget=30)


@dataclass
class Row:
    section: str
    metric: str
    respond: float | str | None
    baseline: float | str | None = None
    unit: str = ""
    target: str = ""
    passed: bool | None = None
    ratio: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.ratio is None and isinstance(self.respond, (int, float)) \
                and isinstance(self.baseline, (int, float)) and self.baseline:
            self.ratio = round(self.respond / self.baseline, 3)


# -- sections ------------------------------------------------------------------------------


def run_gateway(plan: Plan, args: argparse.Namespace, out: dict[str, Any]) -> list[Row]:
    import gateway

    with harness.workdir("gateway") as work:
        upstream = harness.start_upstream(work, tokens=args.tokens)
        with harness.running(upstream):
            respond = harness.start_respond(work, harness.upstream_model(gateway.MODEL,
                                                                          upstream))
            with harness.running(respond):
                results = gateway.measure(respond, upstream, plan.levels, plan.rounds,
                                          plan.min_seconds)
                out["gateway"] = results
                if args.profile:
                    try:
                        out["profile"] = gateway.profile(
                            respond, plan.levels.get(16, 2000), 16, 4 * plan.min_seconds,
                            args.json.parent)
                    except harness.Unavailable as exc:
                        out["profile"] = {"unavailable": str(exc)}
    rows: list[Row] = []
    for mode, by_level in results.items():
        label = "stream" if mode == "streaming" else "non-stream"
        for level, sides in by_level.items():
            r, d = sides["respond"], sides["direct"]
            c16 = level == "16"
            rows.append(Row("gateway", f"{label} c={level} requests/s", r["rps"], d["rps"],
                            "req/s", f">= {THROUGHPUT_RATIO_C16}x direct" if c16 else "",
                            note=_errors(r, d)))
            if c16:
                rows[-1].passed = rows[-1].ratio is not None and \
                    rows[-1].ratio >= THROUGHPUT_RATIO_C16
            rows.append(Row("gateway", f"{label} c={level} latency p50", r["latency_p50_ms"],
                            d["latency_p50_ms"], "ms"))
            rows.append(Row("gateway", f"{label} c={level} latency p99", r["latency_p99_ms"],
                            d["latency_p99_ms"], "ms"))
            if mode == "streaming":
                extra = _minus(r.get("ttft_p50_ms"), d.get("ttft_p50_ms"))
                row = Row("gateway", f"{label} c={level} first text p50", r.get("ttft_p50_ms"),
                          d.get("ttft_p50_ms"), "ms",
                          note=f"{extra:+.2f} ms vs direct" if extra is not None else "")
                if level == "1":
                    row.target = f"<= direct + {TTFT_EXTRA_MS} ms"
                    row.passed = extra is not None and extra <= TTFT_EXTRA_MS
                rows.append(row)
                rows.append(Row("gateway", f"{label} c={level} first text p99",
                                r.get("ttft_p99_ms"), d.get("ttft_p99_ms"), "ms"))
            cpu = Row("gateway", f"{label} c={level} respond CPU/request",
                      r["respond_cpu_ms_per_request"], d["upstream_cpu_ms_per_request"], "ms")
            if mode == "non_streaming":
                cpu.target = f"<= {CPU_PER_REQUEST_MS} ms"
                cpu.passed = cpu.respond is not None and \
                    float(cpu.respond) <= CPU_PER_REQUEST_MS  # type: ignore[arg-type]
            rows.append(cpu)
            if c16:
                rows.append(Row("gateway", f"{label} c={level} load generator CPU/request",
                                r["client_cpu_ms_per_request"], d["client_cpu_ms_per_request"],
                                "ms", note="the client shares the cores with both servers"))
                ceiling = _zero_cost_ceiling(r, d)
                if ceiling is not None:
                    rows.append(Row(
                        "gateway", f"{label} c={level} ceiling of a zero-cost gateway",
                        ceiling, d["rps"], "req/s",
                        note="cores / (load generator CPU per request through respond + "
                             "upstream CPU per request): what a gateway spending no CPU "
                             "could reach on these cores"))
    if "profile" in out and "top_cumulative" in out["profile"]:
        top = out["profile"]["self_by_package"][:6]
        rows.append(Row("gateway", "profile (py-spy, non-stream c=16)",
                        f"{out['profile']['samples']} samples", note="self time by package: "
                        + ", ".join(f"{t['package']} {t['share']:.0%}" for t in top)
                        + f" (details: {out['profile']['raw_file']}, JSON 'profile')"))
    return rows


def _zero_cost_ceiling(r: dict[str, Any], d: dict[str, Any]) -> float | None:
    """Requests/s a gateway that spent nothing could reach with this load generator and this
    upstream sharing the machine's cores (both CPU-bound, scheduling perfect)."""
    per_request = (r.get("client_cpu_ms_per_request") or 0) + \
        (d.get("upstream_cpu_ms_per_request") or 0)
    if per_request <= 0:
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return float(round(cores * 1000 / per_request))


def run_chain(plan: Plan, args: argparse.Namespace, out: dict[str, Any]) -> list[Row]:
    import chain

    results: dict[str, Any] = {}
    rows: list[Row] = []
    with harness.workdir("chain") as work:
        upstream = harness.start_upstream(work, tokens=args.tokens)
        with harness.running(upstream):
            results["sqlite"] = chain.measure(work, upstream, plan.turns)
            rows += _chain_rows(results["sqlite"], "")
            if not harness.reachable(args.pg_url):
                results["postgresql"] = {"unavailable": f"{args.pg_url} is not reachable"}
            else:
                with harness.scratch_database(args.pg_url) as (url, note):
                    try:
                        results["postgresql"] = chain.measure(work, upstream, plan.turns, url)
                        rows += _chain_rows(results["postgresql"], " (PostgreSQL)")
                    except harness.Unavailable as exc:
                        results["postgresql"] = {"unavailable": str(exc)}
                    results["postgresql"]["database"] = note
    if "unavailable" in results["postgresql"]:
        rows.append(Row("chain", "on PostgreSQL", "n/a", note="not available: "
                        + _first_line(results["postgresql"]["unavailable"])))
    out["chain"] = results
    return rows


def _chain_rows(result: dict[str, Any], db: str) -> list[Row]:
    first, last = result["buckets"][0], result["buckets"][-1]
    statements = result["statements_per_chained_turn"]
    calls = result["store_calls_per_chained_turn"]
    return [
        Row("chain", f"CPU/turn slope over {result['turns']} turns{db}",
            result["cpu_slope_ms_per_turn"], None, "ms/turn",
            f"<= {CHAIN_SLOPE_MS} ms/turn",
            result["cpu_slope_ms_per_turn"] <= CHAIN_SLOPE_MS,
            note=f"all-turn fit {result['cpu_slope_all_turns_ms_per_turn']}"),
        Row("chain", f"CPU/turn, turns {last['turns']} vs {first['turns']}{db}",
            last["cpu_p50_ms"], first["cpu_p50_ms"], "ms", note="baseline: shallow turns"),
        Row("chain", f"latency p50, turns {last['turns']} vs {first['turns']}{db}",
            last["latency_p50_ms"], first["latency_p50_ms"], "ms",
            note=f"slope {result['latency_slope_ms_per_turn']} ms/turn (upstream included)"),
        Row("chain", f"DB statements/turn (last vs turn 2){db}",
            result["per_turn"]["statements"][-1], result["per_turn"]["statements"][1], "",
            "constant", result["statements_constant"],
            note=f"values seen: {statements}"),
        Row("chain", f"store calls/turn{db}", sum(calls[0].values()) if len(calls) == 1 else
            str(calls), None, "", "constant", result["store_calls_constant"],
            note=", ".join(f"{k} {v}" for k, v in sorted(calls[0].items()))
            if len(calls) == 1 else "varies"),
    ]


def run_memory(plan: Plan, args: argparse.Namespace, out: dict[str, Any]) -> list[Row]:
    import memory

    delay = 1.0
    tokens = 60  # streams last about a minute: long enough to open them all and sample
    with harness.workdir("memory") as work:
        fast = harness.start_upstream(work, tokens=args.tokens, name="upstream-fast")
        slow = harness.start_upstream(work, tokens=tokens, delay=delay, name="upstream-slow")
        with harness.running(fast, slow):
            config = harness.upstream_model("fast", fast) + harness.upstream_model("slow", slow)
            respond = harness.start_respond(work, config)
            with harness.running(respond):
                result = memory.measure(respond, plan.streams, warmup=50)
    result["slow_upstream"] = {"tokens": tokens, "delay_s": delay}
    out["memory"] = result
    all_open = result["opened"] == plan.streams
    note = f"{result['opened']} of {plan.streams} open in {result['open_seconds']} s"
    if result.get("failures"):
        note += f"; {result['failures']} failed: {result.get('first_failure', '')[:80]}"
    return [
        Row("memory", "RSS idle (after warm-up)", result["idle_rss_mb"], None, "MB"),
        Row("memory", f"RSS with {plan.streams} open streams", result["streams_rss_mb"],
            result["idle_rss_mb"], "MB", f"< {STREAMS_RSS_MB} MB",
            all_open and result["streams_rss_mb"] < STREAMS_RSS_MB, note=note),
    ]


def run_background(plan: Plan, args: argparse.Namespace, out: dict[str, Any]) -> list[Row]:
    import background

    results: dict[str, Any] = {}
    rows: list[Row] = []
    foreground = _get(out, "gateway", "non_streaming", "16", "respond", "rps")
    with harness.workdir("background") as work:
        upstream = harness.start_upstream(work, tokens=args.tokens)
        with harness.running(upstream):
            try:
                results["sqlite"] = background.measure(work, upstream, None, "sqlite",
                                                       plan.jobs)
            except harness.Unavailable as exc:
                results["sqlite"] = {"unavailable": str(exc)}
            if not harness.reachable(args.pg_url):
                results["postgresql"] = {"unavailable": f"{args.pg_url} is not reachable"}
            else:
                with harness.scratch_database(args.pg_url) as (url, note):
                    try:
                        results["postgresql"] = background.measure(work, upstream, url,
                                                                   "postgresql", plan.jobs)
                    except harness.Unavailable as exc:
                        results["postgresql"] = {"unavailable": str(exc)}
                    results["postgresql"]["database"] = note
    out["background"] = results
    sqlite_rate = results["sqlite"].get("jobs_per_s")
    for db, baseline, what in (("sqlite", foreground, "foreground non-stream c=16 req/s"),
                               ("postgresql", sqlite_rate, "SQLite jobs/s")):
        result = results[db]
        if "unavailable" in result:
            rows.append(Row("background", f"jobs/s on {db}", "n/a",
                            note="not available: " + _first_line(result["unavailable"])))
            continue
        note = f"baseline: {what}; statuses {result['statuses']}"
        rows.append(Row("background", f"jobs/s on {db}", result["jobs_per_s"], baseline,
                        "jobs/s", note=note))
    return rows


def run_embedded(plan: Plan, args: argparse.Namespace, out: dict[str, Any]) -> list[Row]:
    import embedded

    with harness.workdir("embedded") as work:
        respond = harness.start_respond(work, "", timeout=300)  # zero-config: embedded model
        with harness.running(respond):
            result = embedded.measure(respond, plan.pairs, plan.max_tokens,
                                      plan.embedded_budget)
    out["embedded"] = result
    r, d = result["respond"], result["direct"]
    same = r["tokens"] == d["tokens"]
    return [
        Row("embedded", "tokens/s streamed", r["tokens_per_s"], d["tokens_per_s"], "tok/s",
            f">= {EMBEDDED_RATIO}x direct",
            d["tokens_per_s"] and r["tokens_per_s"] / d["tokens_per_s"] >= EMBEDDED_RATIO,
            note=f"{result['pairs']} of {result['pairs_planned']} pairs; tokens per run "
            f"{r['tokens']} vs {d['tokens']}" + ("" if same else " (differ!)")),
        Row("embedded", "decode tokens/s (first to last token)", r["decode_tokens_per_s"],
            d["decode_tokens_per_s"], "tok/s"),
        Row("embedded", "first text", r["ttft_ms"], d["ttft_ms"], "ms"),
    ]


RUNNERS: dict[str, Callable[[Plan, argparse.Namespace, dict[str, Any]], list[Row]]] = {
    "gateway": run_gateway,
    "chain": run_chain,
    "memory": run_memory,
    "background": run_background,
    "embedded": run_embedded,
}


# -- helpers -------------------------------------------------------------------------------


def _get(tree: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _errors(r: dict[str, Any], d: dict[str, Any]) -> str:
    if not r["errors"] and not d["errors"]:
        return ""
    return (f"errors: respond {r['errors']}, direct {d['errors']} "
            f"({(r.get('first_error') or d.get('first_error') or '')[:80]})")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text.strip() else text


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def print_table(rows: list[Row]) -> None:
    header = ("section", "metric", "respond", "baseline", "ratio", "unit", "target", "result")
    table = [header]
    for row in rows:
        verdict = "" if row.passed is None else ("PASS" if row.passed else "FAIL")
        table.append((row.section, row.metric, _fmt(row.respond), _fmt(row.baseline),
                      "" if row.ratio is None else f"{row.ratio:.2f}x", row.unit, row.target,
                      verdict))
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for n, line in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    notes = [(row.section, row.metric, row.note) for row in rows if row.note]
    if notes:
        print("\nnotes:")
        for section, metric, note in notes:
            print(f"  {section} / {metric}: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="fewer requests and turns (1-2 minutes instead of 3-6)")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections (default: all of {','.join(SECTIONS)})")
    parser.add_argument("--json", type=Path, default=harness.ROOT / "bench/results/latest.json",
                        help="where to write every figure (default: bench/results/latest.json)")
    parser.add_argument("--tokens", type=int, default=16,
                        help="tokens per answer of the fast upstream (default 16)")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL,
                        help=f"PostgreSQL for the background section (default {DEFAULT_PG_URL})")
    parser.add_argument("--profile", action="store_true",
                        help="also profile respond with py-spy under non-streaming c=16 load")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}; choose from {SECTIONS}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    plan = QUICK if args.quick else FULL
    fds = harness.raise_fd_limit()
    machine = harness.machine_info()
    machine["fd_limit"] = fds
    machine["calibration_ms"] = harness.calibration_ms()
    print(f"respond benchmark ({'quick' if args.quick else 'full'}): {', '.join(chosen)}")
    print(f"machine: {machine['usable_cores']} cores ({machine['cpu_model']}), Python "
          f"{machine['python']}, load average {machine['loadavg_at_start'][0]:.2f}")
    print("note: the load generator runs on the same cores as respond and the upstream, so "
          "absolute figures are lower than on dedicated machines; compare the ratios.\n")
    results: dict[str, Any] = {}
    rows: list[Row] = []
    timings: dict[str, float] = {}
    started = time.perf_counter()
    for name in SECTIONS:
        if name not in chosen:
            continue
        print(f"[{time.perf_counter() - started:6.1f}s] {name} ...", flush=True)
        section_start = time.perf_counter()
        try:
            rows += RUNNERS[name](plan, args, results)
        except harness.Unavailable as exc:
            results[name] = {"unavailable": str(exc)}
            rows.append(Row(name, "(section)", "n/a", note="not available: " + str(exc)))
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the rest
            results[name] = {"error": "".join(traceback.format_exception(exc))}
            rows.append(Row(name, "(section)", "error",
                            note=f"{type(exc).__name__}: {exc}"[:300]))
        timings[name] = round(time.perf_counter() - section_start, 1)
    machine["loadavg_at_end"] = list(os.getloadavg())
    print()
    print_table(rows)
    checks = [r for r in rows if r.passed is not None]
    print(f"\n{sum(r.passed for r in checks)} of {len(checks)} targets met "
          f"(total {time.perf_counter() - started:.0f} s)")
    if machine["loadavg_at_start"][0] > 0.5 * machine["usable_cores"]:
        print("warning: the machine was busy when the run started (load average "
              f"{machine['loadavg_at_start'][0]:.2f}); figures may be noisy")
    report = {
        "machine": machine,
        "plan": {**plan.__dict__, "quick": args.quick, "upstream_tokens": args.tokens},
        "seconds": timings,
        "rows": [row.__dict__ for row in rows],
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2
                                       | orjson.OPT_NON_STR_KEYS))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
