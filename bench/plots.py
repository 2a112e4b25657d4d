"""The benchmark's plots (PNG), drawn from the summary of `bench/run_bench.py`.

Imported by `run_bench.py` and `report.py`; `draw()` returns the file names it wrote, in the
order the results README shows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

OURS = "prefect-kubernetes-rs"
OURS_COLOUR = "#d9480f"
OTHER_COLOURS = ["#1c7ed6", "#868e96", "#37b24d"]


def colours(names: list[str]) -> dict[str, str]:
    others = iter(OTHER_COLOURS)
    return {name: OURS_COLOUR if name == OURS else next(others) for name in names}


def against_runs(axes: Any, log_y: bool, xlabel: str, title: str) -> None:
    """A panel of a per-run cost against the runs in flight: log x, log y where it spans decades."""
    axes.set_xscale("log")
    if log_y:
        axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)


def save(figure: Any, path: Path, title: str) -> None:
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def headline(summary: dict[str, Any], path: Path) -> None:
    """How many times less ours needs than the reference worker, with each target's line."""
    rows = []
    for target in summary["targets"]:
        if target["ours"] and target["theirs"] and target.get("goal_ratio") is not False:
            # Smaller is better for every one of these: the ratio is theirs / ours.
            ratio = target["theirs"] / target["ours"]
            rows.append((target["target"], ratio, target["met"], target.get("goal_ratio")))
    figure, axes = plt.subplots(figsize=(11, 0.6 * len(rows) + 1.8))
    labels = [row[0] for row in rows]
    ratios = [row[1] for row in rows]
    bar_colours = ["#2f9e44" if row[2] else "#e03131" for row in rows]
    positions = range(len(rows))
    axes.barh(positions, ratios, color=bar_colours)
    for position, (_, ratio, _, goal) in zip(positions, rows, strict=True):
        axes.text(ratio * 1.05, position, f"{ratio:,.1f}x", va="center")
        if goal:
            axes.plot([goal, goal], [position - 0.4, position + 0.4], color="black", lw=2)
    axes.set_yticks(list(positions), labels)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlim(right=max(ratios) * 4)
    axes.axvline(1, color="#495057", lw=0.8)
    axes.set_xlabel("times less (log scale); black tick: target; green: met, red: missed")
    axes.set_title(f"How many times less {OURS} needs\nthan {summary['reference']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def following(summary: dict[str, Any], path: Path, follows: dict[str, bool]) -> None:
    """CPU, memory, connections and requests per run against the number of runs in flight."""
    panels = [
        ("cpu_seconds_per_run", "worker CPU seconds per run", True),
        ("peak_rss_mib", "worker peak RSS (MiB)", True),
        ("peak_watches", "watches open at the API server at the peak", True),
        ("requests_per_run_besides_logs", "API requests per run, besides logs", False),
    ]
    names = list(summary["following"])
    palette = colours(names)
    figure, grid = plt.subplots(2, 2, figsize=(11, 8))
    for axes, (key, title, log_scale) in zip(grid.flat, panels, strict=True):
        for name in names:
            points = [
                (runs, row[key])
                for runs, row in sorted(summary["following"][name].items(), key=lambda i: int(i[0]))
                if row.get(key)
            ]
            if not points:
                continue
            runs = [int(point[0]) for point in points]
            medians = [point[1]["median"] for point in points]
            errors = [
                [p[1]["median"] - p[1]["min"] for p in points],
                [p[1]["max"] - p[1]["median"] for p in points],
            ]
            label = name if follows[name] else f"{name} (create-and-return)"
            style = "-" if follows[name] else ":"
            axes.errorbar(
                runs,
                medians,
                yerr=errors,
                marker="o",
                ls=style,
                capsize=3,
                color=palette[name],
                label=label,
            )
        against_runs(axes, log_scale, "flow runs in flight", title)
    grid.flat[0].legend(fontsize=8)
    save(figure, path, "Following N flow runs at once (median, range over repetitions)")


def timeline(results: dict[str, Any], path: Path) -> bool:
    """RSS and runs in flight over time, in the first repetition at the largest N."""
    follows = {c["name"]: c["follows_runs"] for c in results["contenders"]}
    measurements = [
        m
        for m in results["following"]
        if m.get("driver") and m["repetition"] == 0 and follows[m["contender"]]
    ]
    if not measurements:
        return False
    largest = max(m["runs"] for m in measurements)
    chosen = [m for m in measurements if m["runs"] == largest]
    palette = colours([m["contender"] for m in chosen])
    figure, (memory, in_flight) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for measurement in chosen:
        samples = measurement["driver"]["samples"]
        if not samples:
            continue
        seconds = [sample[0] for sample in samples]
        name = measurement["contender"]
        memory.plot(seconds, [s[1] / 1024 for s in samples], color=palette[name], label=name)
        in_flight.plot(seconds, [s[3] for s in samples], color=palette[name], label=name)
    memory.set_ylabel("worker RSS (MiB)")
    memory.legend(fontsize=8)
    memory.set_title(f"{largest} flow runs started at once: the worker over time")
    in_flight.set_ylabel("runs in flight")
    in_flight.set_xlabel("seconds since the runs were started")
    for axes in (memory, in_flight):
        axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def latency_and_logs(summary: dict[str, Any], path: Path) -> None:
    names = list(summary["submission"])
    palette = colours(names)
    figure, (latency, logs) = plt.subplots(1, 2, figsize=(12, 4.5))
    sizes = sorted({int(size) for by_size in summary["submission"].values() for size in by_size})
    width = 0.8 / (2 * len(names))
    for index, name in enumerate(names):
        for offset, (key, hatch) in enumerate((("p50_ms", ""), ("p99_ms", "//"))):
            values = [
                (summary["submission"][name].get(size) or {}).get(key) or {"median": 0}
                for size in sizes
            ]
            positions = [
                position + (2 * index + offset - len(names)) * width + width / 2
                for position in range(len(sizes))
            ]
            latency.bar(
                positions,
                [v["median"] for v in values],
                width,
                color=palette[name],
                hatch=hatch,
                edgecolor="white",
                label=f"{name} {key.split('_')[0]}",
            )
    latency.set_xticks(range(len(sizes)), [f"{size} at once" for size in sizes])
    latency.set_yscale("log")
    latency.set_ylabel("ms, run() called to Job created")
    latency.set_title("Submission latency (p50 plain, p99 hatched)")
    latency.legend(fontsize=7)
    rows = [
        (name, row["lines_per_second"]["median"])
        for name, row in summary["log_throughput"].items()
        if row.get("lines_per_second")
    ]
    logs.bar(
        [row[0] for row in rows],
        [row[1] for row in rows],
        color=[palette.get(row[0], "#868e96") for row in rows],
    )
    for position, (_, value) in enumerate(rows):
        logs.text(position, value, f"{value:,.0f}", ha="center", va="bottom")
    logs.set_ylabel("log lines per second to stdout")
    logs.set_title("Log throughput of one run")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def draw(results: dict[str, Any], summary: dict[str, Any], directory: Path) -> list[str]:
    follows = {c["name"]: c["follows_runs"] for c in results["contenders"]}
    written = ["headline.png"]
    headline(summary, directory / "headline.png")
    # A file a mode does not draw is removed, so the directory holds only this run's plots.
    drawn = {
        "curve.png": "whole_worker" in summary and curve(summary, directory / "curve.png"),
        "latencies.png": "whole_worker" in summary
        and latencies(summary, directory / "latencies.png"),
        "following.png": bool(summary["following"]),
        "timeline.png": bool(summary["following"])
        and timeline(results, directory / "timeline.png"),
    }
    if drawn["following.png"]:
        following(summary, directory / "following.png", follows)
    for name, made in drawn.items():
        if made:
            written.append(name)
        else:
            (directory / name).unlink(missing_ok=True)
    latency_and_logs(summary, directory / "latency-and-logs.png")
    written.append("latency-and-logs.png")
    return written


# --- the whole worker ------------------------------------------------------------------------


def curve(summary: dict[str, Any], path: Path) -> bool:
    """The scaling curve: per-run costs against runs in flight (log x), one line per worker and
    namespace count, the range over repetitions as error bars."""
    following = summary["whole_worker"]["following"]
    panels = [
        ("cpu_ms_per_run", "CPU ms per run", True),
        ("rss_growth_kib_per_run_in_flight", "RSS growth per run in flight (KiB)", True),
        ("requests_per_run", "API requests per run", True),
        ("peak_watches", "watches at the peak", False),
        ("peak_connections", "TCP connections to the API server", True),
        ("log_line_p99_ms", "log line p99 (ms)", True),
    ]
    names = list(following)
    if not names:
        return False
    palette = colours(names)
    figure, grid = plt.subplots(2, 3, figsize=(15, 8.5))
    for axes, (key, label, log_y) in zip(grid.flat, panels, strict=True):
        for name in names:
            for namespaces, by_runs in following[name].items():
                points = [
                    (runs, row[key])
                    for runs, row in sorted(by_runs.items())
                    # A log axis shows no zero: a worker with none of it has no line here.
                    if row.get(key) is not None and (row[key]["median"] > 0 or not log_y)
                ]
                if not points:
                    continue
                xs = [runs for runs, _ in points]
                medians = [value["median"] for _, value in points]
                errors = [
                    [value["median"] - value["min"] for _, value in points],
                    [value["max"] - value["median"] for _, value in points],
                ]
                axes.errorbar(
                    xs,
                    medians,
                    yerr=errors,
                    color=palette[name],
                    linestyle="-" if namespaces == 1 else "--",
                    marker="o" if namespaces == 1 else "s",
                    markersize=4,
                    capsize=3,
                    label=f"{name}, {namespaces} ns",
                )
        against_runs(axes, log_y, "runs in flight (log scale)", label)
    grid.flat[0].legend(fontsize=7)
    save(figure, path, "The whole worker against runs in flight (solid: 1 namespace, dashed: 20)")
    return True


def latencies(summary: dict[str, Any], path: Path) -> bool:
    """Latency distributions (CDFs) at the largest N on one namespace, first good repetition;
    the crash panel from the failing-container scenario."""
    whole = summary["whole_worker"]
    panels = [
        ("following", "log_line_ms", "log line: written in the pod to the worker's stdout"),
        ("following", "run_end_reported_ms", "container's end to the run's end reported"),
        ("following", "job_to_first_pod_event_ms", "Job created to the first pod event"),
        ("crashing", "crash_reported_ms", "container's failure to the run Crashed"),
    ]
    figure, grid = plt.subplots(1, 4, figsize=(18, 4.5))
    palette = colours(list(whole["following"]))
    drawn = False
    for axes, (scenario, key, title) in zip(grid.flat, panels, strict=True):
        for name, by_namespaces in whole[scenario].items():
            by_runs = by_namespaces.get(1, {})
            if not by_runs:
                continue
            largest = max(by_runs)
            example = by_runs[largest]["example"]
            quantiles = (example or {}).get("distributions", {}).get(key) or []
            if not quantiles:
                continue
            fractions = [step / 20 for step in range(20)] + [1.0]
            axes.plot(
                [max(value, 0.1) for value in quantiles],
                fractions,
                color=palette.get(name, "#868e96"),
                label=f"{name} ({largest:,} runs)",
            )
            drawn = True
        axes.set_xscale("log")
        axes.set_xlabel("ms (log scale)")
        axes.set_ylabel("fraction of runs / lines")
        axes.set_title(title, fontsize=9)
        axes.grid(True, which="both", alpha=0.25)
        axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return drawn
