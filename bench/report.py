"""Turns the raw measurements of `bench/run_bench.py` into a summary, verdicts and markdown.

Imported by `run_bench.py`; also re-renders an existing `latest.json` without measuring again:

    .venv/bin/python bench/report.py          # rewrites bench/results/README.md and the plots
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

LOG_PATTERN = "/api/v1/namespaces/{ns}/pods/{name}/log"
OURS = "prefect-kubernetes-rs"

# The targets of issue 6, against the seed-era worker measured in the same run.
CONFIG_PATH_RATIO = 50
CPU_RATIO = 10
RSS_RATIO = 5
REQUESTS_PER_RUN = 3
# "O(namespaces), not O(runs)": fewer than one more watch per this many more runs.
RUNS_PER_EXTRA_WATCH = 100


# The configuration-path row of the latest release with Prefect's settings cached as ours.
CACHED_SETTINGS = ", settings cached as ours"

# Why a target is missed, where the numbers alone do not say it.
WHY_MISSED = {
    "TCP connections": (
        "Our worker speaks HTTP/1.1 to the API server (kube-client's rustls connector offers "
        "only http/1.1), so each followed log stream holds a connection of its own. HTTP/2 would "
        "multiplex them, but the API server caps streams per connection (250 by default) and "
        "hyper keeps one HTTP/2 connection per host, stalling every request at the cap: it needs "
        "a pool of connections, each under the cap, which is not built yet."
    ),
}


def spread(values: list[float]) -> dict[str, float] | None:
    """Median and range over repetitions; None when no repetition produced the value."""
    values = [value for value in values if value is not None]
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


# --- one measurement ------------------------------------------------------------------------


def following_metrics(measurement: dict[str, Any]) -> dict[str, Any]:
    driver = measurement.get("driver")
    if driver is None:
        return {"failure": measurement.get("failure", "no result")}
    runs = driver["runs"]
    counts = measurement["proxy_counts"]
    log_requests = sum(counts["patterns"].get(LOG_PATTERN, {}).values())
    return {
        "cpu_seconds_per_run": driver["cpu_seconds"] / runs,
        "cpu_seconds_per_run_until_submitted": (
            driver["cpu_seconds_to_all_submitted"] / runs
            if driver.get("cpu_seconds_to_all_submitted") is not None
            else None
        ),
        "rss_before_mib": driver["rss_before_kib"] / 1024,
        "peak_rss_mib": driver["rss_peak_kib"] / 1024,
        "rss_growth_per_run_kib": (driver["rss_peak_kib"] - driver["rss_before_kib"]) / runs,
        "requests_per_run": counts["total"] / runs,
        "requests_per_run_besides_logs": (counts["total"] - log_requests) / runs,
        "log_requests_per_run": log_requests / runs,
        "requests_per_run_by_verb": {
            verb: count / runs for verb, count in sorted(counts["verbs"].items())
        },
        "requests_per_run_by_path": {
            f"{verb} {pattern}": count / runs
            for pattern, verbs in sorted(counts["patterns"].items())
            for verb, count in sorted(verbs.items())
        },
        "peak_long_running": counts["long_running"]["peak"],
        "peak_watches": measurement["apiserver_peak_watches_added"],
        "wall_seconds": driver["wall_seconds"],
        "runs_exit_0": driver["exit_codes"].get("0", 0),
        "runs": runs,
        "errors": driver["errors"],
        "lines_seen": measurement["lines_seen"],
        "lines_expected": measurement["lines_expected"],
        # Results from before the driver reported threads have none.
        "cpu_ms_per_run_by_thread": {
            thread: seconds * 1e3 / runs
            for thread, seconds in driver.get("cpu_seconds_by_thread", {}).items()
        },
    }


def submission_metrics(measurement: dict[str, Any]) -> dict[str, Any]:
    driver = measurement.get("driver")
    if driver is None:
        return {"failure": measurement.get("failure", "no result")}
    latencies = driver["submitted_ms"]
    return {
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "submitted": len(latencies),
        "runs": driver["runs"],
        "errors": driver["errors"],
    }


def log_metrics(measurement: dict[str, Any]) -> dict[str, Any]:
    driver = measurement.get("driver")
    if driver is None:
        return {"failure": measurement.get("failure", "no result")}
    seconds = measurement["lines_first_to_last_seconds"]
    lines = measurement["lines_seen"]
    return {
        "lines_per_second": lines / seconds if lines and seconds else None,
        "cpu_seconds_per_million_lines": driver["cpu_seconds"] / lines * 1e6 if lines else None,
        "lines_seen": lines,
        "lines_expected": measurement["lines_expected"],
        "run_seconds": driver["wall_seconds"],
    }


# --- the summary ----------------------------------------------------------------------------


def aggregate(per_repetition: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {key: spread([m.get(key) for m in per_repetition]) for key in keys}
    summary["repetitions"] = len(per_repetition)
    summary["failures"] = [m["failure"] for m in per_repetition if "failure" in m]
    return summary


FOLLOWING_KEYS = [
    "cpu_seconds_per_run",
    "cpu_seconds_per_run_until_submitted",
    "rss_before_mib",
    "peak_rss_mib",
    "rss_growth_per_run_kib",
    "requests_per_run",
    "requests_per_run_besides_logs",
    "log_requests_per_run",
    "peak_long_running",
    "peak_watches",
    "wall_seconds",
    "runs_exit_0",
    "lines_seen",
]


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    names = [contender["name"] for contender in results["contenders"]]
    reference = next(
        c["name"] for c in results["contenders"] if c["follows_runs"] and c["name"] != OURS
    )
    summary: dict[str, Any] = {"reference": reference, "ours": OURS}

    config = results["configuration_path"]
    summary["configuration_path"] = {
        name: {key: config[name][key] for key in ("median_ms", "min_ms", "max_ms")}
        | {"times_ours": config[name]["median_ms"] / config[OURS]["median_ms"]}
        for name in config
    }

    following: dict[str, dict[int, Any]] = {name: {} for name in names}
    for measurement in results.get("following", []):
        metrics = following_metrics(measurement)
        measurement["metrics"] = metrics
        following[measurement["contender"]].setdefault(measurement["runs"], []).append(metrics)
    summary["following"] = {
        name: {
            runs: aggregate(per_repetition, FOLLOWING_KEYS)
            | {"example": next((m for m in per_repetition if "failure" not in m), None)}
            for runs, per_repetition in sorted(by_runs.items())
        }
        for name, by_runs in following.items()
        if by_runs
    }

    submission: dict[str, dict[int, list]] = {name: {} for name in names}
    for measurement in results["submission"]:
        metrics = submission_metrics(measurement)
        measurement["metrics"] = metrics
        submission[measurement["contender"]].setdefault(measurement["at_once"], []).append(metrics)
    summary["submission"] = {
        name: {
            at_once: aggregate(per_repetition, ["p50_ms", "p99_ms"])
            for at_once, per_repetition in sorted(by_size.items())
        }
        for name, by_size in submission.items()
    }

    logs: dict[str, list] = {}
    for measurement in results.get("log_throughput", []):
        metrics = log_metrics(measurement)
        measurement["metrics"] = metrics
        logs.setdefault(measurement["contender"], []).append(metrics)
    summary["log_throughput"] = {
        name: aggregate(
            per_repetition,
            ["lines_per_second", "cpu_seconds_per_million_lines", "lines_seen", "run_seconds"],
        )
        for name, per_repetition in logs.items()
    }
    if "whole_worker" in results:
        # The whole-worker part imports this module's helpers, so it is imported here.
        import whole_report

        summary["whole_worker"] = whole_report.summarise_whole(results["whole_worker"])
    summary["targets"] = targets(summary, results)
    return summary


def median_of(summary_value: dict[str, Any] | None) -> float | None:
    return None if summary_value is None else summary_value["median"]


def targets(summary: dict[str, Any], results: dict[str, Any]) -> list[dict[str, Any]]:
    reference = summary["reference"]
    verdicts = []

    def verdict(
        name: str,
        ours: float | None,
        theirs: float | None,
        met: bool | None,
        shown: str,
        goal: str,
        goal_ratio: float | None = None,
    ) -> None:
        verdicts.append(
            {
                "target": name,
                "ours": ours,
                "theirs": theirs,
                "met": met,
                "shown": shown,
                "goal": goal,
                "goal_ratio": goal_ratio,
            }
        )

    config = summary["configuration_path"]
    ratio = config[reference]["times_ours"]
    verdict(
        "Configuration path per run (ms)",
        config[OURS]["median_ms"],
        config[reference]["median_ms"],
        ratio >= CONFIG_PATH_RATIO,
        f"{ratio:.0f}x less time",
        f">= {CONFIG_PATH_RATIO}x less",
        CONFIG_PATH_RATIO,
    )

    if "whole_worker" in summary:
        import whole_report

        verdicts.extend(whole_report.whole_targets(summary, reference))
    if OURS in summary["following"]:
        run_only_targets(summary, verdict)
    submission_targets(summary, verdict)
    return verdicts


def run_only_targets(summary: dict[str, Any], verdict: Any) -> None:
    """Issue 6's targets, measured on `run()` alone (`--run-only`)."""
    reference = summary["reference"]
    ours_following = summary["following"][OURS]
    theirs_following = summary["following"][reference]
    largest = max(ours_following)
    smallest = min(ours_following)
    ours_at = ours_following[largest]
    theirs_at = theirs_following.get(largest, {})

    for key, label, goal_ratio, unit in (
        ("cpu_seconds_per_run", "Worker CPU per run (CPU s)", CPU_RATIO, "less CPU"),
        ("peak_rss_mib", "Worker peak RSS (MiB)", RSS_RATIO, "less memory"),
    ):
        ours = median_of(ours_at.get(key))
        theirs = median_of(theirs_at.get(key))
        if ours and theirs:
            ratio = theirs / ours
            verdict(
                f"{label}, {largest} runs at once",
                ours,
                theirs,
                ratio >= goal_ratio,
                f"{ratio:.1f}x {unit}",
                f">= {goal_ratio}x {unit}",
                goal_ratio,
            )
        else:
            verdict(
                f"{label}, {largest} runs at once",
                ours,
                theirs,
                None,
                "not measured: " + ("; ".join(theirs_at.get("failures", [])) or "no result"),
                f">= {goal_ratio}x {unit}",
            )

    ours_small = median_of(ours_following[smallest].get("peak_watches"))
    ours_large = median_of(ours_at.get("peak_watches"))
    theirs_large = median_of(theirs_at.get("peak_watches"))
    if ours_small is not None and ours_large is not None and largest > smallest:
        added_per_run = (ours_large - ours_small) / (largest - smallest)
        verdict(
            f"Watches open at the peak, {largest} runs at once",
            ours_large,
            theirs_large,
            added_per_run < 1 / RUNS_PER_EXTRA_WATCH,
            f"{ours_large:.0f} at {largest} runs, {ours_small:.0f} at {smallest}",
            "O(namespaces), not O(runs)",
        )

    ours_requests = median_of(ours_at.get("requests_per_run_besides_logs"))
    theirs_requests = median_of(theirs_at.get("requests_per_run_besides_logs"))
    if ours_requests is not None:
        verdict(
            f"API requests per run besides the log stream, {largest} runs at once",
            ours_requests,
            theirs_requests,
            ours_requests <= REQUESTS_PER_RUN,
            f"{ours_requests:.2f}",
            f"<= {REQUESTS_PER_RUN}",
        )


def submission_targets(summary: dict[str, Any], verdict: Any) -> None:
    """The same percentile on both sides: our p50 against theirs, our p99 against theirs."""
    reference = summary["reference"]
    for at_once, ours in summary["submission"][OURS].items():
        theirs = summary["submission"][reference].get(at_once, {})
        pairs = [(median_of(ours.get(k)), median_of(theirs.get(k))) for k in ("p50_ms", "p99_ms")]
        if any(value is None for pair in pairs for value in pair):
            continue
        (ours_p50, theirs_p50), (ours_p99, theirs_p99) = pairs
        verdict(
            f"Submission latency p99 (ms), {at_once:,} at once",
            ours_p99,
            theirs_p99,
            ours_p50 <= theirs_p50 and ours_p99 <= theirs_p99,
            f"p50 {ours_p50:.1f} vs {theirs_p50:.1f} ms, p99 {ours_p99:.1f} vs {theirs_p99:.1f} ms",
            "p50 and p99 <= theirs",
            1,
        )


def notes(summary: dict[str, Any]) -> list[str]:
    """Why each missed target was missed, in the measured numbers."""
    reference = summary["reference"]
    ours_following = summary["following"].get(OURS, {0: {}})
    largest = max(ours_following)
    ours = ours_following[largest]
    theirs = summary["following"].get(reference, {}).get(largest, {})
    found = []
    for target in summary["targets"]:
        if target["met"] is not False:
            continue
        why = next(
            (text for key, text in WHY_MISSED.items() if target["target"].startswith(key)), ""
        )
        if why:
            found.append(f"**{target['target']}:** {target['shown']}. {why}")
        elif target["target"].startswith("Worker CPU"):
            bulk = summary["log_throughput"].get(OURS, {}).get("cpu_seconds_per_million_lines")
            found.append(cpu_note(ours, theirs, reference, largest, median_of(bulk)))
        elif target["target"].startswith("Worker peak RSS"):
            found.append(memory_note(ours, theirs, reference))
        elif target["target"].startswith("API requests"):
            paths = ", ".join(
                f"{path} {significant(count)}"
                for path, count in ours["example"]["requests_per_run_by_path"].items()
            )
            found.append(f"**API requests per run:** ours, per run: {paths}.")
        else:
            found.append(f"**{target['target']}:** {target['shown']} (goal: {target['goal']}).")
    return found


def cpu_note(
    ours: dict, theirs: dict, reference: str, runs: int, bulk_per_million: float | None
) -> str:
    def split(row: dict) -> str:
        total = median_of(row.get("cpu_seconds_per_run"))
        until = median_of(row.get("cpu_seconds_per_run_until_submitted"))
        if total is None:
            return "n/a"
        if until is None:
            return f"{total * 1e3:.1f} ms"
        return (
            f"{total * 1e3:.1f} ms, of which {until * 1e3:.1f} ms until every run's Job existed "
            f"and {(total - until) * 1e3:.1f} ms following them"
        )

    note = (
        f"**Worker CPU per run at {runs} runs:** ours {split(ours)}; {reference} {split(theirs)}."
    )
    lines = ours["example"]["lines_expected"] / ours["example"]["runs"]
    if lines and bulk_per_million:
        note += (
            f" Each run's pod printed {lines:.0f} log lines, one at a time; a log that comes in "
            f"bulk costs ours {bulk_per_million:.2f} µs per line (section 4)."
        )
    return note


def memory_note(ours: dict, theirs: dict, reference: str) -> str:
    def parts(row: dict) -> tuple[str, str]:
        base = median_of(row.get("rss_before_mib"))
        growth = median_of(row.get("rss_growth_per_run_kib"))
        return number(base, 0), number(growth, 1)

    (ours_base, ours_growth), (theirs_base, theirs_growth) = parts(ours), parts(theirs)
    growth_ratio = ratio_of(
        theirs.get("rss_growth_per_run_kib"), ours.get("rss_growth_per_run_kib")
    )
    if growth_ratio is not None and growth_ratio >= RSS_RATIO:
        verdict = (
            f"per run ours needs {growth_ratio:.0f}x less; the Prefect base both share bounds the "
            "ratio of the peaks at this N"
        )
    else:
        verdict = "the growth per run itself is short of the target"
    return (
        f"**Worker peak RSS:** both are Python processes with Prefect imported: before the "
        f"measured runs ours had {ours_base} MiB, {reference} {theirs_base} MiB. Each run in "
        f"flight then added {ours_growth} KiB to ours and {theirs_growth} KiB to {reference}: "
        f"{verdict}."
    )


def ratio_of(theirs: dict | None, ours: dict | None) -> float | None:
    if not theirs or not ours or not ours["median"]:
        return None
    return theirs["median"] / ours["median"]


# --- markdown -----------------------------------------------------------------------------


def number(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def significant(value: float | None) -> str:
    """Three significant digits or so, whatever the magnitude."""
    if value is None:
        return "n/a"
    for limit, digits in ((0.1, 4), (10, 2), (100, 1)):
        if abs(value) < limit:
            return f"{value:.{digits}f}"
    return f"{value:,.0f}"


def with_spread(value: dict[str, Any] | None, digits: int = 2, scale: float = 1.0) -> str:
    if value is None:
        return "n/a"
    median = number(value["median"] * scale, digits)
    low, high = number(value["min"] * scale, digits), number(value["max"] * scale, digits)
    # A range shows only where the repetitions differed at the digits shown.
    return median if low == high else f"{median} ({low}..{high})"


def ratio_text(theirs: float | None, ours: float | None) -> str:
    if not theirs or not ours:
        return "n/a"
    return f"**{theirs / ours:.1f}x**" if theirs / ours < 100 else f"**{theirs / ours:.0f}x**"


def source_text(machine: dict[str, Any]) -> str:
    source = machine.get("source")
    if not source or not source["commit"]:
        return ""
    changed = source["uncommitted_worker_changes"]
    extra = f", with uncommitted changes to {', '.join(changed)}" if changed else ""
    return f" Our worker as built from commit {source['commit']}{extra}."


def show(images: list[str], *names: str) -> list[str]:
    return [f"![{name}]({name})" for name in names if name in images] + [""]


def markdown(results: dict[str, Any], summary: dict[str, Any], images: list[str]) -> str:
    machine = results["machine"]
    settings = results["settings"]
    reference = summary["reference"]
    out = [
        "# Benchmark results",
        "",
        "prefect-kubernetes-rs against prefect-kubernetes, measured side by side in one run of "
        "`make bench` on one testbed. Ratios are how many times less the other worker needs "
        f"than ours; the targets compare with **{reference}**, the last release that followed "
        "its runs as ours does.",
        "",
        f"Measured {results['measured_at']} on {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB, {machine['os']}, Linux {machine['kernel']}, Python "
        f"{machine['python']}, prefect {machine['prefect']}; {machine['kubernetes']}. Workers: "
        + ", ".join(f"{name} ({version})" for name, version in machine["workers"].items())
        + f". The whole run took {results['bench_seconds'] / 60:.0f} min.{source_text(machine)}",
        "",
        "## Targets",
        "",
        f"| target | goal | ours | {reference} | result | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for target in summary["targets"]:
        verdict = {True: "met", False: "**MISSED**", None: "**not measured**"}[target["met"]]
        out.append(
            f"| {target['target']} | {target['goal']} | {significant(target['ours'])} | "
            f"{significant(target['theirs'])} | {target['shown']} | {verdict} |"
        )
    out.append("")
    missed = notes(summary)
    if missed:
        out += ["Why the missed targets were missed:", ""] + [f"- {note}" for note in missed]
        out.append("")
    out += show(images, "headline.png")
    whole = "whole_worker" in summary
    if whole:
        import whole_report

        out += whole_report.whole_markdown(results, summary, images, reference)
    section = iter(range(2 if whole else 1, 10))

    config = summary["configuration_path"]
    out += [
        f"## {next(section)}. Configuration path per flow run (template + validate + prepare)",
        "",
        f"Same work pool template (the default of {results['template_from']}), job variables and "
        "flow run for every worker, each in its own process; median of "
        f"{settings['config_rounds']} rounds after {settings['config_warmup']} warm-up rounds, "
        "spread = min..max of the round medians.",
        "",
        "| worker | median per run (ms) | spread (ms) | vs ours | same Job as ours |",
        "|---|---|---|---|---|",
    ]
    for name in config:
        row = config[name]
        same = results["configuration_path"][name]["same_job_as_ours"]
        out.append(
            f"| {name} | {row['median_ms']:.3f} | {row['min_ms']:.3f}..{row['max_ms']:.3f} | "
            f"{row['times_ours']:.0f}x | {'yes' if same else 'no (older label rules)'} |"
        )
    out += [""] + config_path_note(results)
    if summary["following"]:
        out += following_markdown(results, summary, images, next(section))
    out += submission_markdown(results, summary, images, next(section))
    if summary["log_throughput"]:
        out += logs_markdown(results, summary, images, next(section))
    out += measured_markdown(results)
    return "\n".join(out)


def config_path_note(results: dict[str, Any]) -> list[str]:
    """What the settings cache gives and what the rest gives, from the cached row."""
    config = results["configuration_path"]
    cached = next((name for name in config if name.endswith(CACHED_SETTINGS)), None)
    if cached is None:
        return []
    plain = cached.removesuffix(CACHED_SETTINGS)
    ours, theirs, theirs_cached = (config[n]["median_ms"] for n in (OURS, plain, cached))
    return [
        f"Ours serialises Prefect's settings (the environment every flow run's pod gets) once "
        f"per settings object; Prefect's base configuration does it on every run. With that "
        f"one cache added, {plain} takes {theirs_cached:.3f} ms instead of {theirs:.3f} ms: "
        f"the cache is worth {theirs - theirs_cached:.3f} ms a run "
        f"({theirs / theirs_cached:.1f}x), "
        f"and what is left, {theirs_cached / ours:.0f}x ours, is the rest of the path "
        "(templating, validation and preparation in Rust against Python).",
        "",
    ]


def following_markdown(
    results: dict[str, Any], summary: dict[str, Any], images: list[str], section: int
) -> list[str]:
    settings = results["settings"]
    names = [contender["name"] for contender in results["contenders"]]
    follows = {c["name"]: c["follows_runs"] for c in results["contenders"]}
    pod = results["following_pod"]
    out = [
        f"## {section}. `run()` alone: following N flow runs at once (`--run-only`)",
        "",
        f"Each run's pod (scripted by the testbed's fake kubelet) runs {pod['run-seconds']} s and "
        f"logs {pod['log-lines']} lines ({settings['log_lines_per_second']:g} a second). Each "
        "worker runs in its own process; `run()` is called for all N flow runs at once with "
        "configurations prepared beforehand, after one warm-up run. CPU = user + system time of "
        "the worker process over the measured runs; peak RSS = the highest resident set sampled "
        "every 0.5 s; growth = (peak - RSS before the runs) / N. Requests are counted at a proxy "
        "in front of the API server that only the worker uses; watches = the API server's "
        "`apiserver_registered_watchers` at the peak, over its value before the worker started; "
        "long-running = watches + followed logs open at once, at the proxy. Median of "
        f"{settings['repetitions']} repetitions ({settings['largest_repetitions']} at the largest "
        "N, where a create-and-return worker is measured once), range in brackets.",
        "",
        "The testbed's Job controller creates pods at a bounded pace (100 API requests a second, "
        "raised from the stock 20), so with many runs the last pods start a minute or more after "
        "the first: "
        "every run stays in flight in the worker (waiting for its pod or following it) from the "
        "start, while only part of the pods run at the same moment.",
        "",
    ]
    for runs in sorted({runs for by_runs in summary["following"].values() for runs in by_runs}):
        out += [
            f"### N = {runs}",
            "",
            "| worker | CPU s per run | peak RSS (MiB) | RSS growth per run (KiB) | requests "
            "per run: all / besides logs | watches at peak | long-running at peak | runs exit 0 | "
            "log lines seen |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name in names:
            row = summary["following"][name].get(runs)
            if row is None:
                continue
            label = name if follows[name] else f"{name} (create-and-return: does not follow)"
            if row["failures"] and row["cpu_seconds_per_run"] is None:
                out.append(f"| {label} | failed: {'; '.join(row['failures'])} |||||||| ")
                continue
            example = row["example"]
            requests = (
                f"{with_spread(row['requests_per_run'])} / "
                f"{with_spread(row['requests_per_run_besides_logs'])}"
            )
            lines_expected = example["lines_expected"] if follows[name] else 0
            out.append(
                f"| {label} | {with_spread(row['cpu_seconds_per_run'], 4)} | "
                f"{with_spread(row['peak_rss_mib'], 0)} | "
                f"{with_spread(row['rss_growth_per_run_kib'], 1)} | {requests} | "
                f"{with_spread(row['peak_watches'], 0)} | "
                f"{with_spread(row['peak_long_running'], 0)} | "
                f"{number(row['runs_exit_0']['median'], 0)}/{runs:,} | "
                f"{number(row['lines_seen']['median'], 0)}/{lines_expected:,} |"
            )
            if row["failures"]:
                out.append(f"| {label}: also | failed: {'; '.join(row['failures'])} |||||||| ")
        out.append("")
        out.append("Requests per run by verb and path (first good repetition):")
        out.append("")
        for name in names:
            row = summary["following"][name].get(runs)
            if row and row["example"]:
                paths = ", ".join(
                    f"{path} {significant(count)}"
                    for path, count in row["example"]["requests_per_run_by_path"].items()
                )
                out.append(f"- {name}: {paths}")
        out.append("")
        by_thread = [
            (name, row["example"]["cpu_ms_per_run_by_thread"])
            for name in names
            if (row := summary["following"][name].get(runs))
            and row["example"]
            and row["example"].get("cpu_ms_per_run_by_thread")
        ]
        if by_thread:
            out.append(
                "CPU ms per run by thread (first good repetition; `python` is the thread of "
                "the asyncio loop, names cut to 15 characters by Linux; Linux counts a "
                "thread's CPU in 10 ms ticks, coarse at small N):"
            )
            out.append("")
            for name, threads in by_thread:
                shown = ", ".join(
                    f"{thread} {ms:.2f}"
                    for thread, ms in sorted(threads.items(), key=lambda item: -item[1])
                    if ms >= 0.005
                )
                out.append(f"- {name}: {shown}")
            out.append("")
    out += show(images, "following.png", "timeline.png")
    return out


def submission_markdown(
    results: dict[str, Any], summary: dict[str, Any], images: list[str], section: int
) -> list[str]:
    settings = results["settings"]
    names = [contender["name"] for contender in results["contenders"]]
    sizes = ", ".join(f"N = {size:,}" for size in settings["submit_at_once"])
    out = [
        f"## {section}. Submission latency: `run()` called to the Job created (pid reported)",
        "",
        f"N = 1: {settings['submit_one_by_one']} runs one after another; {sizes}: all at once. "
        "Per repetition the p50 and p99 over the "
        "runs; median over repetitions, range in brackets. Timed inside the worker process; "
        "configurations prepared beforehand.",
        "",
        "| worker | N | p50 (ms) | p99 (ms) |",
        "|---|---|---|---|",
    ]
    for name in names:
        for at_once, row in summary["submission"][name].items():
            out.append(
                f"| {name} | {at_once} | {with_spread(row['p50_ms'], 1)} | "
                f"{with_spread(row['p99_ms'], 1)} |"
            )
    out.append("")
    return out


def logs_markdown(
    results: dict[str, Any], summary: dict[str, Any], images: list[str], section: int
) -> list[str]:
    settings = results["settings"]
    out = [
        f"## {section}. Log throughput of one run",
        "",
        f"One pod with {settings['log_lines']:,} log lines, all there when it starts; lines per "
        "second from the first to the last line arriving on the worker's stdout (read by the "
        "harness); CPU of the worker process over the whole run per million lines. Workers that "
        "do not stream logs are left out.",
        "",
        "| worker | lines per second | CPU s per million lines | lines seen |",
        "|---|---|---|---|",
    ]
    for name, row in summary["log_throughput"].items():
        out.append(
            f"| {name} | {with_spread(row['lines_per_second'], 0)} | "
            f"{with_spread(row['cpu_seconds_per_million_lines'], 2)} | "
            f"{number(row['lines_seen'] and row['lines_seen']['median'], 0)}/"
            f"{settings['log_lines']:,} |"
        )
    out += [""] + show(images, "latency-and-logs.png")
    return out


def measured_markdown(results: dict[str, Any]) -> list[str]:
    whole = "whole_worker" in results
    driver_part = "Sections 2 onwards" if whole else "Each measurement"
    out = [
        "## How it is measured",
        "",
        "- The harness (`bench/run_bench.py`) starts one testbed (kube-apiserver v1.20, the real "
        "Job controller, the project's fake kubelet) and runs every measurement in a fresh "
        "namespace, deleted with its Jobs and pods before the next one.",
        f"- {driver_part}: one process of `bench/worker_driver.py`, run by the worker's own "
        "venv. It builds `KubernetesWorker` and calls `run()` as Prefect does, with the flow runs "
        "built locally: no Prefect server, logs to the console only, Prefect event emission "
        "turned off for all workers (pod events would otherwise be sent to the server).",
        "- All workers get the same template, job variables (`"
        + json.dumps(results["job_variables"])
        + "` plus the namespace) and pod script. The pod start wait is raised because the "
        "testbed's Job controller needs a minute or more to create 1000 pods.",
        "- prefect-kubernetes latest returns from `run()` once the Job exists: its numbers are "
        "what it does for a run, not following it; it has no log streaming to measure.",
        "- The worker's stdout goes to the harness, which counts the pods' log lines, so a lost "
        "line shows up in the tables.",
        "",
        "Raw numbers, with each worker venv's full package list: [latest.json](latest.json). "
        "Regenerate with `make bench` (`BENCH_ARGS=--quick` for a few minutes' check, "
        "`BENCH_ARGS=--run-only` for the `run()`-only mode).",
        "",
    ]
    return out


def main() -> None:
    import plots

    directory = Path(__file__).resolve().parent / "results"
    results = json.loads((directory / "latest.json").read_text())
    summary = summarise(results)
    images = plots.draw(results, summary, directory)
    (directory / "README.md").write_text(markdown(results, summary, images))


if __name__ == "__main__":
    main()
