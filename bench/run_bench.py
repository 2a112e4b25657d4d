"""`make bench`: this worker against prefect-kubernetes, side by side, on one testbed.

Measures prefect-kubernetes-rs, prefect-kubernetes 0.5.x (the seed-era worker that follows
its runs, as ours does) and prefect-kubernetes latest (which returns once the Job exists), each
in its own process and venv, with the same work pool template, job variables and testbed, in
one run; writes `bench/results/latest.json`, `bench/results/README.md` and PNG plots.

    make bench                                   # sets everything up, then runs this
    .venv/bin/python bench/run_bench.py          # the same, once the venvs exist
    .venv/bin/python bench/run_bench.py --quick  # smaller N, one repetition
    .venv/bin/python bench/run_bench.py --resume # carry on an interrupted run
    .venv/bin/python bench/run_bench.py --run-only  # run() alone, no Prefect server

What is measured (see `--help` for the sizes):
1. the whole worker (`bench/whole_worker.py`; not with `--run-only`): `prefect worker start`
   against a PostgreSQL-backed Prefect server, runs released at once from a paused pool: CPU
   and RSS of the worker's process tree, requests, watches and TCP connections, latencies of a
   log line, a run's end, a crash and the first pod event, over 10 to 3,000 runs and 1 or 20
   namespaces; 0.8.0 with its observer on and off;
2. configuration path per run (template + validate + prepare): `bench/config_path.py`, and the
   latest release once more with Prefect's settings serialised once, as ours does;
3. with `--run-only`: following N runs at once through `run()`: worker CPU per run, peak RSS
   and its growth per run in flight, API requests per run by verb and the watches at the peak;
4. submission latency, `run()` called to the Job created and its pid reported: p50 and p99 at
   N = 1 and each `--submit-at-once`;
5. log throughput of one run: lines per second to the worker's stdout, CPU per million lines.

Apart from the whole worker, every worker process runs `bench/worker_driver.py`. Each reaches
the API server through the testbed's fault proxy (with no faults set), which counts that
worker's requests alone; the API server's own `/metrics` cannot tell its clients apart but
gives the registered watches. Each measurement gets a fresh namespace, deleted before the next
one starts.
"""

from __future__ import annotations

import argparse
import base64
import collections
import datetime
import functools
import json
import os
import platform
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
# Each whole-worker measurement as it ends, one JSON object per line: what `--resume` keeps.
PARTIAL = RESULTS / "whole-worker.partial.jsonl"
DRIVER = BENCH / "worker_driver.py"
sys.path[:0] = [str(BENCH), str(ROOT / "tests")]

# The harness's own modules and the tests' testbed, found through sys.path (not packages).
import plots  # noqa: E402
import report  # noqa: E402
import whole_worker  # noqa: E402
from apiserver_metrics import raise_peaks, requests_between  # noqa: E402
from testbed_support import Testbed  # noqa: E402

# The same job variables for every worker. The pod start wait is raised from its 60 s default:
# with 1000 Jobs at once the testbed's Job controller (100 API requests/s) needs a minute or
# more to create all the pods, for every worker alike.
JOB_VARIABLES = {
    "image": "testbed/none:1",
    "pod_watch_timeout_seconds": 900,
    "stream_output": True,
}


@dataclass(frozen=True)
class Contender:
    name: str
    python: Path
    worker_module: str
    package: str
    follows_runs: bool

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


def installed_version(python: Path, package: str) -> str:
    return subprocess.run(
        [str(python), "-c", f"from importlib.metadata import version; print(version({package!r}))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def contenders(python_venvs: list[Path]) -> list[Contender]:
    ours = ROOT / ".venv" / "bin" / "python"
    found = [
        Contender(
            "prefect-kubernetes-rs",
            ours,
            "prefect_kubernetes_rs.worker",
            "prefect-kubernetes-rs",
            follows_runs=True,
        )
    ]
    for venv in python_venvs:
        python = venv / "bin" / "python"
        version = installed_version(python, "prefect-kubernetes")
        # Up to 0.5.x the worker followed each run to its end; later ones return once the
        # Job exists (create-and-return) and leave the following to the flow run itself.
        major, minor = (int(part) for part in version.split(".")[:2])
        follows = (major, minor) <= (0, 5)
        found.append(
            Contender(
                f"prefect-kubernetes {version}",
                python,
                "prefect_kubernetes.worker",
                "prefect-kubernetes",
                follows,
            )
        )
    return found


# --- the API server, as admin -------------------------------------------------------------


class KubeApi:
    """Minimal admin client for the testbed: metrics, namespaces, clean-up."""

    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        self.server = cluster["server"]
        self.token = config["users"][0]["user"]["token"]
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        self.tls = ssl.create_default_context(cadata=ca)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.server + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=self.tls, timeout=60) as response:
            text = response.read()
        return text if path == "/metrics" else json.loads(text or b"null")

    def metrics(self) -> dict[str, float]:
        """The gauges and counters the benchmark reads, summed over the labels it ignores."""
        wanted = {
            "apiserver_registered_watchers": ("kind",),
            "apiserver_longrunning_gauge": ("verb", "resource", "subresource"),
            "apiserver_longrunning_requests": ("verb", "resource", "subresource"),
            "apiserver_request_total": ("verb", "resource", "subresource"),
        }
        totals: dict[str, float] = {}
        for line in self.request("GET", "/metrics").decode().splitlines():
            name, _, rest = line.partition("{")
            if name not in wanted:
                continue
            labels_text, _, value = rest.rpartition("} ")
            labels = dict(re.findall(r'(\w+)="([^"]*)"', labels_text))
            key = name + ":" + "/".join(labels.get(label, "") for label in wanted[name])
            totals[key] = totals.get(key, 0.0) + float(value)
        return totals

    def create_namespace(self, name: str) -> None:
        self.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})

    def remove_namespace(self, name: str, timeout: float = 600) -> None:
        """Delete every Job and pod at once, wait until the pods are gone, drop the namespace.

        Jobs go first so the Job controller makes no new pods; pods are removed with no grace
        period (the fake kubelet stops scripts at once); repeated, since the controller may
        have been creating a pod when its Job went.
        """
        deadline = time.monotonic() + timeout
        jobs = f"/apis/batch/v1/namespaces/{name}/jobs"
        self.request("DELETE", jobs + "?propagationPolicy=Background")
        while time.monotonic() < deadline:
            self.request("DELETE", f"/api/v1/namespaces/{name}/pods?gracePeriodSeconds=0")
            time.sleep(1)
            pods = self.request("GET", f"/api/v1/namespaces/{name}/pods?limit=1")["items"]
            if not pods and not self.request("GET", jobs + "?limit=1")["items"]:
                break
        else:
            raise TimeoutError(f"namespace {name} still has Jobs or pods after {timeout} s")
        self.request("DELETE", f"/api/v1/namespaces/{name}")


LINE_MARKER = b"line "


class LineCounter(threading.Thread):
    """Reads the worker's stdout: counts the pods' log lines and when they arrived.

    Runs in the harness, so counting costs the measured worker nothing.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.lines = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    def run(self) -> None:
        # Reads end anywhere, also inside "line ": the last bytes of one read go in front of the
        # next. They are shorter than the marker, so no line is counted twice.
        carried = b""
        while chunk := self.stream.read1(1 << 16):
            data = carried + chunk
            carried = data[-(len(LINE_MARKER) - 1) :]
            found = data.count(LINE_MARKER)
            if found:
                now = time.monotonic()
                self.first_at = self.first_at or now
                self.last_at = now
                self.lines += found


# --- one measurement ------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, bed: Testbed, work_dir: Path) -> None:
        self.args = args
        self.bed = bed
        self.api = KubeApi(bed.kubeconfig)
        self.work_dir = work_dir
        self.template_path = work_dir / "template.json"
        self.sequence = 0
        prefect_home = work_dir / "prefect-home"
        prefect_home.mkdir(exist_ok=True)
        inherited = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PREFECT_", "VIRTUAL_ENV", "KUBECONFIG"))
        }
        # No Prefect server: nothing may start a temporary one or send logs to one.
        self.worker_env = inherited | {
            "KUBECONFIG": str(bed.proxy_kubeconfig),
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false",
            "PREFECT_LOGGING_TO_API_ENABLED": "false",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }

    def measure(
        self,
        contender: Contender,
        scenario: str,
        runs: int,
        behaviour: dict[str, str],
        rounds: int = 1,
        expected_lines: int = 0,
    ) -> dict[str, Any]:
        """Start the driver for one contender in a fresh namespace; collect what it reports."""
        self.sequence += 1
        label = f"{self.sequence:03d}-{scenario}-{runs}-{contender.slug}"
        namespace = f"bench-{self.sequence:03d}"
        self.api.create_namespace(namespace)
        variables_path = self.work_dir / f"{label}-variables.json"
        variables_path.write_text(json.dumps(JOB_VARIABLES | {"namespace": namespace}))
        out_path = self.work_dir / f"{label}.json"
        log_path = self.work_dir / f"{label}.log"
        command = [
            str(contender.python),
            str(DRIVER),
            "--worker-module",
            contender.worker_module,
            "--scenario",
            scenario,
            "--runs",
            str(runs),
            "--rounds",
            str(rounds),
            "--template",
            str(self.template_path),
            "--variables",
            str(variables_path),
            "--pod-behaviour",
            json.dumps(behaviour),
            "--proxy-control",
            self.bed.proxy_control,
            "--out",
            str(out_path),
        ]
        print(f"  {label}: {contender.name}, {scenario}, {runs} run(s) x {rounds}", flush=True)
        timeout = self.args.timeout_base + runs * rounds * self.args.timeout_per_run
        if scenario != "submit":
            timeout += float(behaviour.get("run-seconds", 0))
        metrics_before = self.api.metrics()
        started = time.monotonic()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, env=self.worker_env, cwd=self.work_dir
            )
        counter = LineCounter(process.stdout)
        counter.start()
        peak = {"watches": 0.0, "long_running": 0.0}
        timed_out = False
        next_sample = 0.0
        while process.poll() is None:
            now = time.monotonic()
            if now - started > timeout:
                timed_out = True
                process.kill()
                break
            if now >= next_sample:
                next_sample = now + self.args.metrics_seconds
                raise_peaks(peak, self.api.metrics(), metrics_before)
            time.sleep(0.2)
        process.wait()
        counter.join(timeout=30)
        elapsed = time.monotonic() - started
        proxy_counts = self.bed.proxy("GET", "/counts")
        metrics_after = self.api.metrics()
        result: dict[str, Any] = {
            "contender": contender.name,
            "scenario": scenario,
            "runs": runs * rounds,
            "process_seconds": elapsed,
            "exit_code": process.returncode,
            "timed_out": timed_out,
            "worker_log": log_path.name,
            "lines_expected": expected_lines,
            "lines_seen": counter.lines,
            "lines_first_to_last_seconds": (
                counter.last_at - counter.first_at if counter.first_at and counter.last_at else None
            ),
            "proxy_counts": {
                key: proxy_counts[key]
                for key in ("total", "verbs", "patterns", "statuses", "long_running")
            },
            "apiserver_peak_watches_added": peak["watches"],
            "apiserver_peak_long_running_added": peak["long_running"],
            "apiserver_requests_during": requests_between(metrics_before, metrics_after),
        }
        if out_path.exists() and not timed_out:
            result["driver"] = compact(json.loads(out_path.read_text()))
        else:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            result["failure"] = "timed out" if timed_out else f"exit {process.returncode}"
            result["worker_log_tail"] = tail
            print(f"    FAILED ({result['failure']}):", *tail[-5:], sep="\n      ", flush=True)
        cleanup_started = time.monotonic()
        self.api.remove_namespace(namespace)
        result["cleanup_seconds"] = time.monotonic() - cleanup_started
        return result


def compact(driver: dict[str, Any], max_samples: int = 300) -> dict[str, Any]:
    """What the report needs of a driver's result, small enough to keep in the repo."""
    outcomes = driver.pop("outcomes")
    errors = [outcome["error"] for outcome in outcomes if "error" in outcome]
    driver["exit_codes"] = dict(
        collections.Counter(str(o["status_code"]) for o in outcomes if "status_code" in o)
    )
    driver["errors"] = dict(collections.Counter(error.split(":")[0] for error in errors))
    driver["error_examples"] = sorted(set(errors))[:3]
    driver["submitted_ms"] = [
        round(o["submitted_seconds"] * 1e3, 2) for o in outcomes if "submitted_seconds" in o
    ]
    step = max(1, len(driver["samples"]) // max_samples)
    driver["samples"] = driver["samples"][::step]
    return driver


# --- the scenarios ----------------------------------------------------------------------------


def configuration_path(args: argparse.Namespace, entrants: list[Contender], template: Path) -> dict:
    print("==> Configuration path (template + validate + prepare)", flush=True)
    results = {}
    latest = next((c for c in entrants if not c.follows_runs), None)
    # The latest release once more with Prefect's settings serialised once, as ours does: the
    # table then shows what that cache gives and what the rest (Rust) gives.
    cached = [(latest, report.CACHED_SETTINGS)] if latest else []
    for contender, variant in [(c, "") for c in entrants] + cached:
        name = contender.name + variant
        out = template.parent / f"config-path-{contender.slug}{'-cached' if variant else ''}.json"
        ours = contender.package == "prefect-kubernetes-rs"
        runs = args.config_runs_rust if ours else args.config_runs_python
        subprocess.run(
            [
                str(contender.python),
                str(BENCH / "config_path.py"),
                "--worker-module",
                contender.worker_module,
                "--template",
                str(template),
                "--rounds",
                str(args.config_rounds),
                "--warmup",
                str(args.config_warmup),
                "--runs",
                str(runs),
                "--json-out",
                str(out),
            ]
            + (["--cache-settings"] if variant else []),
            check=True,
            env=os.environ
            | {
                "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false",
                "PREFECT_HOME": str(template.parent),
            },
        )
        results[name] = json.loads(out.read_text())
        print(f"  {name}: {results[name]['median_ms']:.3f} ms", flush=True)
    ours = results[entrants[0].name]
    for result in results.values():
        result["same_job_as_ours"] = result["job_manifest"] == ours["job_manifest"]
    return results


def following_behaviour(args: argparse.Namespace) -> dict[str, str]:
    lines = int(args.run_seconds * args.log_lines_per_second)
    return {
        "run-seconds": str(args.run_seconds),
        "log-lines": str(lines),
        "log-interval-ms": str(1000 / args.log_lines_per_second),
    }


def following(args: argparse.Namespace, bench: Bench, entrants: list[Contender]) -> list[dict]:
    print("==> Following runs", flush=True)
    behaviour = following_behaviour(args)
    lines_per_run = int(behaviour["log-lines"])
    measurements = []
    for runs in args.runs:
        largest = runs == max(args.runs)
        repetitions = args.largest_repetitions if largest else args.repetitions
        for repetition in range(repetitions):
            # Rotate the order so drift over a repetition hits every worker alike.
            order = entrants[repetition % len(entrants) :] + entrants[: repetition % len(entrants)]
            for contender in order:
                # A worker that returns once the Job exists has little to show at the largest
                # N, and the testbed's Job controller needs minutes to wind its Jobs down.
                if largest and repetition > 0 and not contender.follows_runs:
                    continue
                result = bench.measure(
                    contender,
                    "follow",
                    runs,
                    behaviour,
                    expected_lines=runs * lines_per_run if contender.follows_runs else 0,
                )
                result["repetition"] = repetition
                measurements.append(result)
    return measurements


def submission(args: argparse.Namespace, bench: Bench, entrants: list[Contender]) -> list[dict]:
    print("==> Submission latency", flush=True)
    # The pods do nothing; only the time to the Job's creation counts.
    behaviour = {"run-seconds": "1"}
    measurements = []
    for repetition in range(args.repetitions):
        for contender in entrants:
            one = bench.measure(contender, "submit", 1, behaviour, rounds=args.submit_one_by_one)
            one.update(repetition=repetition, at_once=1)
            measurements.append(one)
            for at_once in args.submit_at_once:
                burst = bench.measure(contender, "submit", at_once, behaviour)
                burst.update(repetition=repetition, at_once=at_once)
                measurements.append(burst)
    return measurements


def log_throughput(args: argparse.Namespace, bench: Bench, entrants: list[Contender]) -> list:
    print("==> Log throughput of one run", flush=True)
    # All lines are in the log when the container starts: the worker's stream is the limit.
    behaviour = {"log-lines": str(args.log_lines), "run-seconds": "0"}
    measurements = []
    for repetition in range(args.repetitions):
        for contender in entrants:
            if not contender.follows_runs:
                continue
            result = bench.measure(contender, "logs", 1, behaviour, expected_lines=args.log_lines)
            result["repetition"] = repetition
            measurements.append(result)
    return measurements


# --- the whole worker: `prefect worker start` against a Prefect server -------------------------


def whole_worker_entrants(entrants: list[Contender]) -> list[whole_worker.Entrant]:
    """Each worker as a user starts it; prefect-kubernetes 0.7+ twice: with its observer (its
    default) and without."""
    found = []
    for contender in entrants:
        ours = contender.package == "prefect-kubernetes-rs"
        cli = contender.python.parent / "prefect"
        worker_type = "kubernetes-rs" if ours else "kubernetes"
        if ours or contender.follows_runs:
            found.append(whole_worker.Entrant(contender.name, cli, worker_type, True))
            continue
        found.append(
            whole_worker.Entrant(f"{contender.name} (observer on)", cli, worker_type, False)
        )
        found.append(
            whole_worker.Entrant(
                f"{contender.name} (observer off)",
                cli,
                worker_type,
                False,
                {"PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_ENABLED": "false"},
            )
        )
    return found


def whole_worker_behaviour(args: argparse.Namespace, runs: int) -> dict[str, str]:
    """The pods of a whole-worker measurement: they run long enough for the runs released
    together to be in flight together (Prefect's server hands them out at its own pace, a few
    a second on this machine), with the same number of stamped lines spread over the run."""
    base = following_behaviour(args)
    seconds = max(args.run_seconds, runs * args.ww_pod_seconds_per_run)
    lines = int(base["log-lines"])
    return base | {
        "run-seconds": f"{seconds:g}",
        "log-interval-ms": f"{seconds * 1000 / lines:g}",
        "log-stamps": "true",
    }


class Checkpoint:
    """Whole-worker measurements written to PARTIAL as each ends (the full mode takes hours):
    `--resume` keeps those of an interrupted run with the same source and settings."""

    def __init__(self, path: Path, identity: dict[str, Any], resume: bool) -> None:
        self.path = path
        self.kept: dict[str, dict[str, Any]] = {}
        lines = path.read_text().splitlines() if resume and path.exists() else []
        if lines and json.loads(lines[0]) == identity:
            for line in lines[1:]:
                measurement = json.loads(line)
                self.kept[measurement.pop("checkpoint_key")] = measurement
            print(f"==> Resuming: {len(self.kept)} measurement(s) kept from {path}", flush=True)
        else:
            if lines:
                print(f"==> {path} is from another source or settings: starting over", flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(identity) + "\n")

    def measure(self, key: str, make: Any) -> dict[str, Any]:
        if key in self.kept:
            print(f"  {key}: kept from the interrupted run", flush=True)
            return self.kept[key]
        result = make()
        with open(self.path, "a") as partial:
            partial.write(json.dumps(result | {"checkpoint_key": key}) + "\n")
        return result


def whole_worker_mode(
    args: argparse.Namespace,
    bench: whole_worker.WholeWorkerBench,
    entrants: list[whole_worker.Entrant],
    checkpoint: Checkpoint,
) -> dict[str, Any]:
    print("==> Whole worker: prefect worker start against a Prefect server", flush=True)
    measurements = []
    for namespaces in args.ww_namespaces:
        for runs in args.ww_runs:
            repetitions = args.ww_large_repetitions if runs >= 1000 else args.ww_repetitions
            for repetition in range(repetitions):
                shift = repetition % len(entrants)
                for entrant in entrants[shift:] + entrants[:shift]:
                    # Without its observer prefect-kubernetes only creates Jobs: measured on
                    # one namespace (more namespaces change nothing it does).
                    if entrant.env and namespaces > 1:
                        continue
                    result = checkpoint.measure(
                        f"follow/{entrant.slug}/{runs}x{namespaces}/{repetition}",
                        functools.partial(
                            bench.measure,
                            entrant,
                            runs,
                            namespaces,
                            whole_worker_behaviour(args, runs),
                        ),
                    )
                    result.update(repetition=repetition, scenario="follow")
                    measurements.append(result)
    crashing = {"exit-code": "1", "run-seconds": "5", "log-lines": "5", "log-stamps": "true"}
    crashes = []
    print("==> Whole worker: runs whose container fails (exit 1)", flush=True)
    for repetition in range(args.ww_repetitions):
        for entrant in entrants:
            result = checkpoint.measure(
                f"crash/{entrant.slug}/{args.ww_crash_runs}x1/{repetition}",
                functools.partial(bench.measure, entrant, args.ww_crash_runs, 1, crashing),
            )
            result.update(repetition=repetition, scenario="crash")
            crashes.append(result)
    return {
        "following_pod": following_behaviour(args) | {"log-stamps": "true"},
        "pod_seconds_per_run": args.ww_pod_seconds_per_run,
        "crashing_pod": crashing,
        "entrants": [
            {
                "name": e.name,
                "worker_type": e.worker_type,
                "follows_runs": e.follows_runs,
                "env": e.env,
            }
            for e in entrants
        ],  # fmt: skip
        "following": measurements,
        "crashing": crashes,
    }


def venv_packages(python: Path) -> list[str]:
    """The full package list of a worker's venv, stored with the results."""
    listed = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True
    )
    return listed.stdout.split()


# --- the machine ------------------------------------------------------------------------------


def machine(entrants: list[Contender]) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    memory = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    os_release = Path("/etc/os-release")
    pretty = re.search(r'^PRETTY_NAME="?([^"\n]+)', os_release.read_text(), re.MULTILINE)
    return {
        "cpu": model.group(1) if model else platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(int(memory.group(1)) / 2**20, 1) if memory else None,
        "os": pretty.group(1) if pretty else platform.system(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        # Others may share the machine: the load before the run says how quiet it was.
        "load_average_at_start": [round(load, 2) for load in os.getloadavg()],
        "prefect": installed_version(entrants[0].python, "prefect"),
        "kubernetes": "kube-apiserver v1.20.2 (testbed), fake kubelet",
        "source": source_tree(),
        "workers": {
            contender.name: installed_version(contender.python, contender.package)
            for contender in entrants
        },
    }


def source_tree() -> dict[str, Any]:
    """The commit measured, and any uncommitted change to the worker's code in the tree."""

    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return run.stdout if run.returncode == 0 else ""

    # Porcelain lines are "XY path": two status columns, a space, the path.
    changed = git("status", "--porcelain", "--", "src", "python", "Cargo.toml", "Cargo.lock")
    return {
        "commit": git("rev-parse", "--short", "HEAD").strip() or None,
        "uncommitted_worker_changes": [line[3:] for line in changed.splitlines()],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    size = parser.add_argument_group("sizes")
    size.add_argument(
        "--runs",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[10, 100, 1000],
        help="runs in flight at once, comma-separated",
    )
    size.add_argument("--repetitions", type=int, default=3)
    size.add_argument(
        "--largest-repetitions",
        type=int,
        default=2,
        help="repetitions at the largest N (1000 runs take about 2 minutes per worker)",
    )
    size.add_argument("--run-seconds", type=float, default=20, help="how long each pod runs")
    size.add_argument("--log-lines-per-second", type=float, default=2, help="per pod")
    size.add_argument("--submit-one-by-one", type=int, default=20, help="N=1 submissions")
    size.add_argument(
        "--submit-at-once",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[100, 1000],
        help="runs submitted at once, comma-separated (N = 1 is --submit-one-by-one)",
    )
    size.add_argument("--log-lines", type=int, default=1_000_000, help="log throughput run")
    size.add_argument("--config-rounds", type=int, default=7)
    size.add_argument("--config-warmup", type=int, default=2)
    size.add_argument("--config-runs-rust", type=int, default=2000, help="runs per round")
    size.add_argument("--config-runs-python", type=int, default=100, help="runs per round")
    whole = parser.add_argument_group("whole-worker mode (the default)")
    whole.add_argument(
        "--ww-runs",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[10, 100, 1000, 3000],
        help="runs released at once, comma-separated",
    )
    whole.add_argument(
        "--ww-namespaces",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 20],
        help="namespaces the runs are spread over, comma-separated",
    )
    whole.add_argument("--ww-repetitions", type=int, default=3, help="below 1000 runs")
    whole.add_argument("--ww-large-repetitions", type=int, default=5, help="at 1000 runs or more")
    whole.add_argument("--ww-crash-runs", type=int, default=100, help="runs whose container fails")
    whole.add_argument(
        "--ww-pod-seconds-per-run",
        type=float,
        default=0.25,
        help="pods run this many seconds per run released (at least --run-seconds), so the "
        "runs are in flight together",
    )
    parser.add_argument(
        "--run-only",
        action="store_true",
        help="instead of the whole worker (`prefect worker start` against a Prefect server), "
        "each worker's run() called by a driver with no Prefect server: for profiling",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the whole-worker measurements an interrupted run of the same source left "
        f"in {PARTIAL.relative_to(ROOT)} and measure only the rest",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a few minutes: N=10,100, one repetition, shorter runs"
    )
    parser.add_argument(
        "--python-worker-venvs",
        type=lambda text: [Path(part) for part in text.split(",")],
        default=[BENCH / ".venvs" / "pk-0.5.10", BENCH / ".venvs" / "pk-0.8.0"],
        help="venvs with prefect-kubernetes installed, comma-separated",
    )
    parser.add_argument("--timeout-base", type=float, default=180, help="seconds per measurement")
    parser.add_argument("--timeout-per-run", type=float, default=0.3, help="seconds per run")
    parser.add_argument("--metrics-seconds", type=float, default=3, help="API metrics sampling")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--keep-work-dir", action="store_true", help="keep driver logs, etc.")
    args = parser.parse_args()
    if args.quick:
        args.runs = [10, 100]
        args.repetitions = 1
        args.largest_repetitions = 1
        args.run_seconds = 10
        args.submit_one_by_one = 5
        args.log_lines = 200_000
        args.config_rounds = 3
        args.config_warmup = 1
        args.ww_runs = [10, 100]
        args.ww_namespaces = [1]
        args.ww_repetitions = 1
        args.ww_large_repetitions = 1
        args.ww_crash_runs = 10
        args.submit_at_once = [100]
    args.job_variables = JOB_VARIABLES
    return args


def main() -> None:
    args = parse_args()
    started = time.monotonic()
    entrants = contenders(args.python_worker_venvs)
    work_dir = Path(tempfile.mkdtemp(prefix="pkr-bench-"))
    print(f"==> Work dir {work_dir}", flush=True)
    template_path = work_dir / "template.json"
    latest = next(c for c in entrants if not c.follows_runs) if len(entrants) > 1 else entrants[0]
    # One work pool template for all: a `kubernetes` pool's default of the latest release.
    dump_template = (
        f"import json; from {latest.worker_module} import KubernetesWorker; "
        "print(json.dumps(KubernetesWorker.get_default_base_job_template()))"
    )
    template_path.write_text(
        subprocess.run(
            [str(latest.python), "-c", dump_template], capture_output=True, text=True, check=True
        ).stdout
    )
    results: dict[str, Any] = {
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(entrants),
        "settings": {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(args).items()
            if key not in ("results", "python_worker_venvs")
        },
        "contenders": [
            {"name": c.name, "follows_runs": c.follows_runs, "package": c.package} for c in entrants
        ],
        "template_from": latest.name,
        "job_variables": JOB_VARIABLES,
        "following_pod": following_behaviour(args),
        "mode": "run-only" if args.run_only else "whole-worker",
        "venv_packages": {c.name: venv_packages(c.python) for c in entrants},
    }
    results["configuration_path"] = configuration_path(args, entrants, template_path)

    print("==> Starting the testbed", flush=True)
    bed = Testbed(work_dir / "testbed").start()
    try:
        bench = Bench(args, bed, work_dir)
        # The controller-manager's informers settle during the first minute of a fresh control
        # plane, which moves the API server's watch gauges: one throwaway measurement first.
        print("==> Testbed warm-up (not counted)", flush=True)
        bench.measure(entrants[0], "follow", 10, {"run-seconds": "2"})
        results["log_throughput"] = log_throughput(args, bench, entrants)
        if args.run_only:
            results["following"] = following(args, bench, entrants)
        else:
            identity = {
                "source": results["machine"].get("source"),
                "settings": {k: v for k, v in results["settings"].items() if k != "resume"},
            }
            checkpoint = Checkpoint(PARTIAL, identity, args.resume)
            whole = whole_worker.WholeWorkerBench(
                args, bed, bench.api, json.loads(template_path.read_text()), work_dir
            ).start()
            try:
                results["whole_worker"] = whole_worker_mode(
                    args, whole, whole_worker_entrants(entrants), checkpoint
                )
            finally:
                whole.stop()
        results["submission"] = submission(args, bench, entrants)
    finally:
        bed.stop()
    results["bench_seconds"] = time.monotonic() - started
    results["machine"]["load_average_at_end"] = [round(load, 2) for load in os.getloadavg()]

    args.results.mkdir(parents=True, exist_ok=True)
    summary = report.summarise(results)
    results["summary"] = summary
    (args.results / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    images = plots.draw(results, summary, args.results)
    (args.results / "README.md").write_text(report.markdown(results, summary, images))
    print((args.results / "README.md").read_text())
    # Everything is in latest.json now.
    PARTIAL.unlink(missing_ok=True)
    if args.keep_work_dir:
        print(f"==> Driver logs and results kept in {work_dir}")
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    print(f"==> Done in {results['bench_seconds'] / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
