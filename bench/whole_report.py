"""The whole-worker part of the report: per-measurement metrics, the summary over repetitions,
the verdicts on issue 15's targets and the markdown tables.

`report.py` calls these when `latest.json` holds a whole-worker run (`make bench`'s default).
"""

from __future__ import annotations

from typing import Any

from report import (
    LOG_PATTERN,
    OURS,
    aggregate,
    median_of,
    number,
    significant,
    with_spread,
)

# Issue 15's targets, judged on the whole-worker mode against 0.5.10 in the same run.
CPU_RATIO_AT_1000 = 8
RSS_GROWTH_KIB = 64
RSS_FLATNESS = 0.20  # growth per run within 20% from 100 to the largest N
RUN_END_P99_MS = 1000
LOG_LINE_P99_MS = 300
JOB_CREATE_PATTERN = "/apis/batch/v1/namespaces/{ns}/jobs"

WHOLE_KEYS = [
    "cpu_ms_per_run",
    "rss_before_mib",
    "peak_rss_mib",
    "rss_growth_kib_per_run",
    "rss_growth_kib_per_run_in_flight",
    "requests_per_run",
    "requests_per_run_besides_logs",
    "log_requests_per_run",
    "creates_per_run",
    "peak_watches",
    "peak_connections",
    "peak_runs_in_flight",
    "log_line_p50_ms",
    "log_line_p99_ms",
    "run_end_p50_ms",
    "run_end_p99_ms",
    "crash_p50_ms",
    "crash_p99_ms",
    "pod_event_p50_ms",
    "pod_event_p99_ms",
    "job_created_p50_s",
    "job_created_p99_s",
    "crashed_before_job",
    "jobs_created",
    "log_lines_seen",
    "seconds_to_last_end",
]


def whole_metrics(measurement: dict[str, Any]) -> dict[str, Any]:
    """One measurement's figures, per run where the issue asks per run."""
    runs = measurement["runs"]
    counts = measurement["proxy_counts"]
    patterns = counts["patterns"]
    log_requests = sum(patterns.get(LOG_PATTERN, {}).values())
    metrics: dict[str, Any] = {
        "cpu_ms_per_run": measurement["cpu_ms_per_run"],
        "rss_before_mib": measurement["rss_before_mib"],
        "peak_rss_mib": measurement["peak_rss_mib"],
        "rss_growth_kib_per_run": measurement["rss_growth_kib_per_run"],
        "rss_growth_kib_per_run_in_flight": measurement["rss_growth_kib_per_run_in_flight"],
        "requests_per_run": counts["total"] / runs,
        "requests_per_run_besides_logs": (counts["total"] - log_requests) / runs,
        "log_requests_per_run": log_requests / runs,
        "creates_per_run": patterns.get(JOB_CREATE_PATTERN, {}).get("create", 0) / runs,
        "requests_per_run_by_path": {
            f"{verb} {pattern}": count / runs
            for pattern, verbs in sorted(patterns.items())
            for verb, count in sorted(verbs.items())
        },
        "peak_watches": measurement["peak_watches_added"],
        "peak_connections": measurement["peak_connections"],
        "peak_runs_in_flight": measurement.get("peak_runs_in_flight"),
        "crashed_before_job": measurement["crashed_before_job"],
        "jobs_created": measurement["jobs_created"],
        "log_lines_seen": measurement["log_lines_seen"],
        "seconds_to_last_end": measurement["seconds_to_last_end"],
        "timed_out": measurement["timed_out"],
        "flow_run_states": measurement["flow_run_states"],
    }
    for key, name, unit in (
        ("log_line_ms", "log_line", "ms"),
        ("run_end_reported_ms", "run_end", "ms"),
        ("crash_reported_ms", "crash", "ms"),
        ("job_to_first_pod_event_ms", "pod_event", "ms"),
        ("job_created_after_release_s", "job_created", "s"),
    ):
        found = measurement[key]
        metrics[f"{name}_p50_{unit}"] = found["p50"]
        metrics[f"{name}_p99_{unit}"] = found["p99"]
        metrics[f"{name}_count"] = found["count"]
    metrics["distributions"] = {
        key: measurement[key].get("quantiles", [])
        for key in (
            "log_line_ms",
            "run_end_reported_ms",
            "crash_reported_ms",
            "job_to_first_pod_event_ms",
        )
    }
    if measurement["timed_out"]:
        metrics["failure"] = f"timed out after {measurement['seconds_to_last_end']} s"
    return metrics


def summarise_whole(whole: dict[str, Any]) -> dict[str, Any]:
    """Per scenario, worker, namespace count and N: the spread over repetitions."""
    summary: dict[str, Any] = {}
    for scenario in ("following", "crashing"):
        grouped: dict[str, dict[int, dict[int, list]]] = {}
        for measurement in whole[scenario]:
            metrics = whole_metrics(measurement)
            measurement["metrics"] = metrics
            by_namespaces = grouped.setdefault(measurement["worker"], {})
            by_namespaces.setdefault(measurement["namespaces"], {}).setdefault(
                measurement["runs"], []
            ).append(metrics)
        summary[scenario] = {
            worker: {
                namespaces: {
                    runs: aggregate(repetitions, WHOLE_KEYS)
                    | {"example": next((m for m in repetitions if "failure" not in m), None)}
                    for runs, repetitions in sorted(by_runs.items())
                }
                for namespaces, by_runs in sorted(by_namespaces.items())
            }
            for worker, by_namespaces in grouped.items()
        }
    return summary


def whole_targets(summary: dict[str, Any], reference: str) -> list[dict[str, Any]]:
    """Issue 15's targets: met, missed, or not measured in this run (None)."""
    following = summary["whole_worker"]["following"]
    ours = following.get(OURS, {}).get(1, {})
    theirs = following.get(reference, {}).get(1, {})
    observer = next((name for name in following if name.endswith("(observer on)")), None)
    observed = following.get(observer, {}).get(1, {}) if observer else {}
    verdicts: list[dict[str, Any]] = []

    def verdict(
        name: str,
        goal: str,
        ours: Any,
        theirs: Any,
        met: bool | None,
        shown: str,
        goal_ratio: float | None = None,
    ) -> None:
        verdicts.append(
            {
                "target": name,
                "goal": goal,
                "ours": ours,
                "theirs": theirs,
                "met": met,
                "shown": shown,
                "goal_ratio": goal_ratio,
            }
        )

    def at(rows: dict[int, Any], runs: int, key: str) -> float | None:
        return median_of(rows.get(runs, {}).get(key))

    sizes = sorted(ours)
    largest = max(sizes, default=0)
    cpu_at = 1000 if 1000 in sizes else largest
    our_cpu, their_cpu = at(ours, cpu_at, "cpu_ms_per_run"), at(theirs, cpu_at, "cpu_ms_per_run")
    observer_cpu = at(observed, cpu_at, "cpu_ms_per_run")
    if our_cpu and their_cpu:
        ratio = their_cpu / our_cpu
        below_observer = observer_cpu is None or our_cpu < observer_cpu
        verdict(
            f"CPU per run (ms), {cpu_at:,} runs in flight",
            f">= {CPU_RATIO_AT_1000}x less than {reference}, less than {observer}",
            our_cpu,
            their_cpu,
            ratio >= CPU_RATIO_AT_1000 and below_observer,
            f"{ratio:.1f}x less; {observer}: {significant(observer_cpu)} ms",
            CPU_RATIO_AT_1000,
        )
    else:
        verdict(f"CPU per run, {cpu_at:,} runs", ">= 8x", our_cpu, their_cpu, None, "no result")

    growth = {
        runs: at(ours, runs, "rss_growth_kib_per_run_in_flight") for runs in sizes if runs >= 100
    }
    growth = {runs: value for runs, value in growth.items() if value is not None}
    if growth:
        worst = max(growth.values())
        low, high = min(growth.values()), max(growth.values())
        flat = len(growth) > 1 and high <= low * (1 + RSS_FLATNESS) + 1
        verdict(
            f"RSS growth per run in flight (KiB), {min(growth):,} to {max(growth):,} runs",
            f"<= {RSS_GROWTH_KIB} KiB, flat within {RSS_FLATNESS:.0%}",
            worst,
            at(theirs, max(growth), "rss_growth_kib_per_run_in_flight"),
            worst <= RSS_GROWTH_KIB and flat,
            ", ".join(f"{significant(value)} at {runs:,}" for runs, value in growth.items()),
        )
    for key, label, goal in (
        ("run_end_p99_ms", "Run end reported after the container's end, p99 (ms)", RUN_END_P99_MS),
        ("log_line_p99_ms", "Log line printed after being written, p99 (ms)", LOG_LINE_P99_MS),
    ):
        values = {runs: at(ours, runs, key) for runs in sizes}
        values = {runs: value for runs, value in values.items() if value is not None}
        worst = max(values.values(), default=None)
        verdict(
            label + ", worst N",
            f"<= {goal:,} ms",
            worst,
            max((v for r in sizes if (v := at(theirs, r, key)) is not None), default=None),
            None if worst is None else worst <= goal,
            ", ".join(f"{significant(value)} at {runs:,}" for runs, value in values.items()),
        )
    creates = at(ours, largest, "creates_per_run")
    logs = at(ours, largest, "log_requests_per_run")
    if creates is not None and logs is not None:
        verdict(
            f"Requests per run, {largest:,} runs: Job creates / log requests",
            "1 / 1 (a catch-up read only after a cut)",
            at(ours, largest, "requests_per_run"),
            at(theirs, largest, "requests_per_run"),
            abs(creates - 1) < 0.005 and logs <= 1.005,
            f"{creates:.3f} / {logs:.3f}; all requests "
            + significant(at(ours, largest, "requests_per_run")),
        )
    spread_ns = following.get(OURS, {})
    watches = {
        namespaces: at(rows, max(rows), "peak_watches") for namespaces, rows in spread_ns.items()
    }
    small = at(ours, min(sizes, default=0), "peak_watches")
    if watches and small is not None and watches.get(1) is not None:
        grows_with_runs = watches[1] > small + max(2, (largest - min(sizes)) / 100)
        bound = all(value is not None and value <= 4 * ns + 2 for ns, value in watches.items())
        verdict(
            "Watches at the peak",
            "O(namespaces), not O(runs)",
            watches[1],
            at(theirs, largest, "peak_watches"),
            bound and not grows_with_runs,
            "; ".join(
                f"{significant(value)} with {ns} namespace(s) at {max(spread_ns[ns]):,} runs"
                for ns, value in watches.items()
            )
            + f"; {significant(small)} at {min(sizes):,} runs",
        )
    connections = {runs: at(ours, runs, "peak_connections") for runs in sizes}
    connections = {runs: value for runs, value in connections.items() if value is not None}
    if connections:
        low, high = min(connections.values()), max(connections.values())
        verdict(
            "TCP connections to the API server at the peak",
            "O(1), not one per followed run",
            high,
            at(theirs, largest, "peak_connections"),
            high <= max(4, 2 * low),
            ", ".join(f"{significant(value)} at {runs:,}" for runs, value in connections.items()),
        )
    return verdicts


def whole_markdown(
    results: dict[str, Any], summary: dict[str, Any], images: list[str], reference: str
) -> list[str]:
    whole = results["whole_worker"]
    pod = whole["following_pod"]
    crash_pod = whole["crashing_pod"]
    settings = results["settings"]
    following = summary["whole_worker"]["following"]
    workers = [entrant["name"] for entrant in whole["entrants"]]
    follows = {entrant["name"]: entrant["follows_runs"] for entrant in whole["entrants"]}
    out = [
        "## 1. The whole worker: `prefect worker start` against a Prefect server",
        "",
        "Each worker is started as users start it, `prefect worker start --pool P --type T`, "
        "from its own venv, against one Prefect server that all share, backed by PostgreSQL. "
        "For each measurement the flow runs are created while the pool is paused, the worker is "
        "started, and the pool is resumed: every run is released at once, so the server's pace "
        "of creating runs does not shape the result. The pods are scripted by the testbed's fake "
        f"kubelet: each runs {pod['run-seconds']} s and logs {pod['log-lines']} lines, each "
        "stamped with the microsecond of its writing; the flow engine does not run, so what is "
        "measured is the worker's own work.",
        "",
        "- **CPU** = user + system time of the worker's whole process tree (the `prefect` CLI "
        "and its children, waited-for ones included) from release to the last run's end, per "
        "run. **Peak RSS** = the tree's resident set sampled every 0.5 s; **growth** = (peak - "
        "RSS at release) / the most runs in flight at once (Jobs created and not yet ended, "
        "from the harness's own watch).",
        "- **Requests** are counted at a proxy in front of the API server that only the "
        "measured worker uses, from release on; **watches** = the API server's "
        "`apiserver_registered_watchers` over its value before the worker started; "
        "**connections** = the tree's established TCP connections to that proxy (`ss`).",
        "- **Log line**: the stamp in the line against when the line reached the harness on the "
        "worker's stdout (`PYTHONUNBUFFERED=1` for all). **Run end**: the container's end "
        "(stamped in its termination message) to the worker's "
        "`prefect.worker.executed-flow-run` event. **Pod event**: the Job's creation (the "
        "harness's own watch) to the first `prefect.kubernetes.pod.*` event Prefect received "
        "for the run. **Job created**: release to the Job's creation.",
        f"- Median over repetitions ({settings['ww_repetitions']} below 1,000 runs, "
        f"{settings['ww_large_repetitions']} at 1,000 or more, worker order rotated), range in "
        "brackets; latencies are each repetition's p50 / p99 over its runs.",
        "- prefect-kubernetes 0.8.0 creates the Job and returns: it does not stream logs nor "
        "report a run's end; with its observer (its default) it sends pod events and crashes "
        "failed runs. Without the observer it is measured on one namespace only.",
        "",
    ]
    for namespaces in sorted({ns for by_ns in following.values() for ns in by_ns}):
        sizes = sorted({runs for by_ns in following.values() for runs in by_ns.get(namespaces, {})})
        out += [f"### Runs over {namespaces} namespace(s)", ""]
        for runs in sizes:
            out += [
                f"#### {runs:,} runs in flight",
                "",
                "| worker | CPU ms per run | peak RSS (MiB) | RSS growth per run in flight (KiB) | "
                "requests per run: all / besides logs | watches | connections | log line "
                "p50 / p99 (ms) | run end p50 / p99 (ms) | Job to pod event p50 / p99 (ms) | "
                "Job created after release p50 (s) | Jobs | most in flight | crashed before Job |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for worker in workers:
                row = following.get(worker, {}).get(namespaces, {}).get(runs)
                if row is None:
                    continue
                if row["example"] is None:
                    out.append(f"| {worker} | failed: {'; '.join(row['failures'])} |")
                    continue

                def pair(key: str, row: dict = row) -> str:
                    p50, p99 = row[f"{key}_p50_ms"], row[f"{key}_p99_ms"]
                    if p50 is None:
                        return "n/a"
                    return f"{with_spread(p50, 0)} / {with_spread(p99, 0)}"

                out.append(
                    f"| {worker} | {with_spread(row['cpu_ms_per_run'], 1)} | "
                    f"{with_spread(row['peak_rss_mib'], 0)} | "
                    f"{with_spread(row['rss_growth_kib_per_run_in_flight'], 0)} | "
                    f"{with_spread(row['requests_per_run'])} / "
                    f"{with_spread(row['requests_per_run_besides_logs'])} | "
                    f"{with_spread(row['peak_watches'], 0)} | "
                    f"{with_spread(row['peak_connections'], 0)} | "
                    f"{pair('log_line') if follows[worker] else 'does not stream'} | "
                    f"{pair('run_end') if follows[worker] else 'does not follow'} | "
                    f"{pair('pod_event')} | {with_spread(row['job_created_p50_s'], 1)} | "
                    f"{number(median_of(row['jobs_created']), 0)}/{runs:,} | "
                    f"{with_spread(row['peak_runs_in_flight'], 0)} | "
                    f"{with_spread(row['crashed_before_job'], 0)} |"
                )
                if row["failures"]:
                    out.append(f"| {worker}: also | {'; '.join(row['failures'])} |")
            out.append("")
        out.append("Requests per run by verb and path at the largest N (first good repetition):")
        out.append("")
        for worker in workers:
            rows = following.get(worker, {}).get(namespaces)
            if rows and (example := rows[max(rows)]["example"]):
                paths = ", ".join(
                    f"{path} {significant(count)}"
                    for path, count in example["requests_per_run_by_path"].items()
                )
                out.append(f"- {worker} ({max(rows):,} runs): {paths}")
        out.append("")
    out += [f"![{name}]({name})" for name in ("curve.png", "latencies.png") if name in images]
    out += [
        "",
        "### Runs whose container fails",
        "",
        f"Each pod logs {crash_pod['log-lines']} lines and exits {crash_pod['exit-code']} after "
        f"{crash_pod['run-seconds']} s; {settings['ww_crash_runs']} runs released at once. "
        "**Crash reported** = the container's end to the timestamp of the run's Crashed state.",
        "",
        "| worker | crash reported p50 / p99 (ms) | runs Crashed | CPU ms per run |",
        "|---|---|---|---|",
    ]
    for worker in workers:
        for by_runs in summary["whole_worker"]["crashing"].get(worker, {}).values():
            for runs, row in by_runs.items():
                crashed = (row["example"] or {}).get("flow_run_states", {}).get("CRASHED", 0)
                latency = (
                    "never reported"
                    if row["crash_p50_ms"] is None
                    else f"{with_spread(row['crash_p50_ms'], 0)} / "
                    f"{with_spread(row['crash_p99_ms'], 0)}"
                )
                out.append(
                    f"| {worker} | {latency} | {crashed}/{runs} | "
                    f"{with_spread(row['cpu_ms_per_run'], 1)} |"
                )
    out.append("")
    return out
