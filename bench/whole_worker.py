"""Whole-worker measurements: `prefect worker start` against a real Prefect server, as users run it.

One Prefect server (on PostgreSQL, as production servers run) serves every measurement. Each
measurement gets a work pool of its own, created paused, N flow runs of one deployment per
namespace, and a fresh `prefect worker start --pool P --type T` of one worker from its own venv.
Once the worker polls, the pool is resumed: every run is released at once, so the server's pace
of creating runs does not shape the result. The pods are scripted by the testbed's fake kubelet
(the flow engine does not run), so what is measured is the worker's own work: its process tree's
CPU and resident memory, its requests to the API server by verb (at the fault proxy, which only
this worker uses), the watches it holds (the API server's gauge) and its TCP connections.

Latencies come from clocks of this machine at millisecond precision or better:
- the pods' lines carry the microsecond of their writing (the fake kubelet's `log-stamps`) and
  are timed again when the worker's stdout reaches the harness (`PYTHONUNBUFFERED=1` for all);
- a container's end is the stamp in its termination message; the worker's report of the run's
  end is its `prefect.worker.executed-flow-run` event (emitted when `run()` returns);
- a Job's creation is when the harness's own watch (straight to the API server) sees it; a pod
  event is when Prefect's server received the worker's `prefect.kubernetes.pod.*` event.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from apiserver_metrics import raise_peaks, requests_between
from prefect_support import PrefectServer
from testbed_support import Testbed, stop_processes

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
FLOW_RUN_LABEL = "prefect.io/flow-run-id"
EVENT_SLICE_RUNS = 10
# How long after the last failed Job the harness waits for the runs' Crashed states.
CRASH_PATIENCE_SECONDS = 90
STAMPED_LINE = re.compile(rb"line \d+ @(\d{16})")


@dataclass(frozen=True)
class Entrant:
    """One worker as a user starts it: its CLI, worker type and the settings that differ."""

    name: str
    prefect_cli: Path
    worker_type: str
    follows_runs: bool
    env: dict[str, str] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


# --- the worker's process tree ---------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc's children lists."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                pending.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                pass
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of the tree, with that of children already waited for."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime are fields 14-17; after the ")" they are 11-14 (0-based).
        total += sum(int(value) for value in fields[11:15])
    return total / CLOCK_TICKS


def tree_rss_bytes(pid: int) -> int:
    total = 0
    for member in process_tree(pid):
        try:
            total += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * PAGE_SIZE
        except OSError:
            continue
    return total


def tcp_connections(pid: int, port: int) -> int:
    """Established TCP connections of the tree to `port` (the fault proxy in front of the API)."""
    members = {f"pid={member}," for member in process_tree(pid)}
    shown = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( dport = :{port} )"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    return sum(1 for line in shown.splitlines() if any(member in line for member in members))


# --- what the harness watches itself ---------------------------------------------------------


class JobWatch(threading.Thread):
    """Watches every Prefect Job of the cluster straight at the API server (not through the
    proxy, so the worker's counts are its own): when each Job appeared and when it ended."""

    def __init__(self, api: Any) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.lock = threading.Lock()
        self.added: dict[str, float] = {}  # flow run id -> wall time the Job was seen
        self.finished: dict[str, float] = {}
        self.stopping = threading.Event()
        # Each time the stream broke before its timeout: reported, since a Job missed while
        # reconnecting would show as a late creation.
        self.reconnects = 0

    def run(self) -> None:
        path = f"/apis/batch/v1/jobs?labelSelector={FLOW_RUN_LABEL}"
        version = self.api.request("GET", path)["metadata"]["resourceVersion"]
        while not self.stopping.is_set():
            request = urllib.request.Request(
                f"{self.api.server}{path}&watch=1&resourceVersion={version}&timeoutSeconds=300",
                headers={"Authorization": f"Bearer {self.api.token}"},
            )
            try:
                with urllib.request.urlopen(request, context=self.api.tls, timeout=330) as stream:
                    for line in stream:
                        event = json.loads(line)
                        job = event["object"]
                        if event["type"] == "ERROR":
                            version = self.api.request("GET", path)["metadata"]["resourceVersion"]
                            break
                        version = job["metadata"]["resourceVersion"]
                        self._saw(job, time.time())
            except (OSError, urllib.error.URLError, json.JSONDecodeError):
                self.reconnects += 1
                time.sleep(0.5)

    def _saw(self, job: dict[str, Any], now: float) -> None:
        run_id = job["metadata"].get("labels", {}).get(FLOW_RUN_LABEL)
        if not run_id:
            return
        status = job.get("status", {})
        ended = status.get("succeeded") or any(
            c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            for c in status.get("conditions", [])
        )
        with self.lock:
            self.added.setdefault(run_id, now)
            if ended:
                self.finished.setdefault(run_id, now)

    def counts(self, run_ids: set[str]) -> tuple[int, int]:
        with self.lock:
            return (
                sum(1 for run in run_ids if run in self.added),
                sum(1 for run in run_ids if run in self.finished),
            )


class OutputReader(threading.Thread):
    """Reads the worker's stdout: keeps it in a file, times each stamped pod line's arrival."""

    def __init__(self, stream: Any, log: Path) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.log = log
        self.latencies_ms: list[float] = []

    def run(self) -> None:
        carried = b""
        # Unbuffered: the harness reads this file while the worker runs (its start line).
        with open(self.log, "wb", buffering=0) as log:
            while chunk := self.stream.read1(1 << 16):
                now_us = time.time() * 1e6
                log.write(chunk)
                data = carried + chunk
                cut = data.rfind(b"\n") + 1
                complete, carried = data[:cut], data[cut:]
                for stamp in STAMPED_LINE.findall(complete):
                    self.latencies_ms.append((now_us - int(stamp)) / 1e3)

    @property
    def lines(self) -> int:
        return len(self.latencies_ms)


# --- Prefect's API, as the harness uses it ----------------------------------------------------


class PrefectApi:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=120)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        for attempt in range(10):
            response = self.http.post(path, json=body)
            if response.status_code < 500:
                if response.is_error:
                    raise RuntimeError(f"{path} answered {response.status_code}: {response.text}")
                return response.json() if response.content else None
            time.sleep(1 + attempt)
        response.raise_for_status()

    def patch(self, path: str, body: dict[str, Any]) -> None:
        self.http.patch(path, json=body).raise_for_status()

    def events(self, event_filter: dict[str, Any]) -> list[dict[str, Any]]:
        page = self.post("/events/filter", {"filter": event_filter, "limit": 50})
        found = list(page["events"])
        while page.get("next_page"):
            response = self.http.get(page["next_page"])
            response.raise_for_status()
            page = response.json()
            found.extend(page["events"])
        return found

    def event_total(self, event_filter: dict[str, Any]) -> int:
        return self.post("/events/filter", {"filter": event_filter, "limit": 1})["total"]

    def flow_runs(self, pool: str) -> list[dict[str, Any]]:
        found, offset = [], 0
        while True:
            page = self.post(
                "/flow_runs/filter",
                {"work_pools": {"name": {"any_": [pool]}}, "limit": 200, "offset": offset},
            )
            found.extend(page)
            if len(page) < 200:
                return found
            offset += 200

    def crashed_count(self, pool: str) -> int:
        return self.post(
            "/flow_runs/count",
            {
                "work_pools": {"name": {"any_": [pool]}},
                "flow_runs": {"state": {"type": {"any_": ["CRASHED"]}}},
            },
        )


def percentiles(values: list[float]) -> dict[str, Any]:
    """p50, p99 and max, and the distribution in 5% steps (for the plots' CDFs)."""
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None, "quantiles": []}
    ordered = sorted(values)

    def at(fraction: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 2)

    return {
        "count": len(ordered),
        "p50": at(0.5),
        "p99": at(0.99),
        "max": round(ordered[-1], 2),
        "quantiles": [at(step / 20) for step in range(20)] + [round(ordered[-1], 2)],
    }


def iso_seconds(text: str) -> float:
    """Prefect's ISO timestamps (with a zone) as Unix seconds."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- one measurement --------------------------------------------------------------------------


class WholeWorkerBench:
    def __init__(
        self, args: Any, bed: Testbed, api: Any, template: dict[str, Any], work_dir: Path
    ) -> None:
        self.args = args
        self.bed = bed
        self.api = api
        self.template = template
        self.work_dir = work_dir
        self.sequence = 0
        self.server = PrefectServer(work_dir / "prefect", database="postgresql")
        self.prefect: PrefectApi | None = None
        self.jobs = JobWatch(api)
        self.proxy_port = int(
            re.search(r":(\d+)\s*$", bed.kubeconfig_dict(bed.proxy_kubeconfig)["clusters"][0][
                "cluster"]["server"]).group(1)
        )  # fmt: skip

    def start(self) -> WholeWorkerBench:
        self.server.start()
        self.prefect = PrefectApi(self.server.api_url)
        self.jobs.start()
        return self

    def stop(self) -> None:
        self.jobs.stopping.set()
        self.server.stop()

    def pool_template(self, behaviour: dict[str, str]) -> dict[str, Any]:
        """The shared template with the fake kubelet's script in the pod's annotations."""
        template = json.loads(json.dumps(self.template))
        pod = template["job_configuration"]["job_manifest"]["spec"]["template"]
        annotations = pod.setdefault("metadata", {}).setdefault("annotations", {})
        annotations["testbed.prefect.io/mode"] = "script"
        annotations.update({f"testbed.prefect.io/{k}": str(v) for k, v in behaviour.items()})
        return template

    async def prepare_runs(
        self, pool: str, entrant: Entrant, namespaces: list[str], runs: int, behaviour: dict
    ) -> tuple[str, list[str]]:
        """A paused pool, one deployment per namespace, `runs` flow runs spread over them: the
        pool's id and the runs' ids."""
        from prefect.client.orchestration import PrefectClient
        from prefect.client.schemas.actions import WorkPoolCreate

        async with PrefectClient(api=self.server.api_url) as client:
            created_pool = await client.create_work_pool(
                WorkPoolCreate(
                    name=pool,
                    type=entrant.worker_type,
                    base_job_template=self.pool_template(behaviour),
                    is_paused=True,
                )
            )
            flow_id = await client.create_flow_from_name("bench-flow")
            deployments = [
                await client.create_deployment(
                    flow_id=flow_id,
                    name=f"{pool}-{namespace}",
                    entrypoint="bench_flow.py:bench_flow",
                    work_pool_name=pool,
                    job_variables=self.args.job_variables | {"namespace": namespace},
                )
                for namespace in namespaces
            ]
            gate = asyncio.Semaphore(16)

            async def one(index: int) -> str:
                async with gate:
                    for attempt in range(10):
                        try:
                            run = await client.create_flow_run_from_deployment(
                                deployments[index % len(deployments)]
                            )
                            return str(run.id)
                        except Exception:  # the server under load answers 503 at times
                            await asyncio.sleep(1 + attempt)
                    raise RuntimeError(f"could not create flow run {index} of pool {pool}")

            run_ids = list(await asyncio.gather(*(one(i) for i in range(runs))))
            return str(created_pool.id), run_ids

    def start_worker(self, entrant: Entrant, pool: str, label: str) -> tuple:
        name = f"{pool}-worker"
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PREFECT_", "VIRTUAL_ENV", "KUBECONFIG"))
        }
        env |= (
            self.server.env
            | {
                "KUBECONFIG": str(self.bed.proxy_kubeconfig),
                # Every worker's stdout is a pipe here, as in a container: unbuffered for all, so
                # no worker's lines wait for a full buffer.
                "PYTHONUNBUFFERED": "1",
                "PREFECT_HOME": str(self.work_dir / f"home-{label}"),
            }
            | entrant.env
        )
        stderr_log = self.work_dir / f"{label}.stderr.log"
        process = subprocess.Popen(
            [str(entrant.prefect_cli), "worker", "start", "--pool", pool,
             "--type", entrant.worker_type, "--name", name],
            env=env, stdout=subprocess.PIPE, stderr=open(stderr_log, "wb"),  # noqa: SIM115
            start_new_session=True, cwd=self.work_dir,
        )  # fmt: skip
        reader = OutputReader(process.stdout, self.work_dir / f"{label}.stdout.log")
        reader.start()
        deadline = time.monotonic() + 180
        started = f"Worker '{name}' started"
        while True:
            text = stderr_log.read_text(errors="replace")
            stdout_text = reader.log.read_text(errors="replace") if reader.log.exists() else ""
            if started in text or started in stdout_text:
                return process, reader, stderr_log
            if process.poll() is not None or time.monotonic() > deadline:
                stop_processes([process])
                raise RuntimeError(
                    f"{entrant.name} did not start within 180 s (exit {process.returncode}): "
                    + (text + stdout_text)[-2000:]
                )
            time.sleep(0.3)

    def measure(
        self, entrant: Entrant, runs: int, namespace_count: int, behaviour: dict[str, str]
    ) -> dict[str, Any]:
        assert self.prefect is not None
        self.sequence += 1
        label = f"ww{self.sequence:03d}-{runs}x{namespace_count}-{entrant.slug}"
        pool = f"ww{self.sequence:03d}-{entrant.slug}"[:60]
        namespaces = [f"ww{self.sequence:03d}-{k:02d}" for k in range(namespace_count)]
        print(f"  {label}: {entrant.name}, {runs} runs over {namespace_count} namespace(s)",
              flush=True)  # fmt: skip
        for namespace in namespaces:
            self.api.create_namespace(namespace)
        created = time.monotonic()
        pool_id, run_ids = asyncio.run(
            self.prepare_runs(pool, entrant, namespaces, runs, behaviour)
        )
        runs_created_seconds = time.monotonic() - created
        result: dict[str, Any] = {
            "worker": entrant.name,
            "runs": runs,
            "namespaces": namespace_count,
            "runs_created_seconds": round(runs_created_seconds, 1),
        }
        metrics_before = self.api.metrics()
        process, reader, stderr_log = self.start_worker(entrant, pool, label)
        try:
            result |= self._follow(
                entrant,
                pool,
                pool_id,
                process,
                reader,
                run_ids,
                metrics_before,
                float(behaviour.get("run-seconds", 0)),
                behaviour.get("exit-code", "0") != "0",
            )
        finally:
            process.send_signal(signal.SIGINT)
            stop_processes([process], grace_seconds=30)
            reader.join(timeout=30)
        result["log_lines_seen"] = reader.lines
        result["log_line_ms"] = percentiles(reader.latencies_ms)
        result |= self._collect(entrant, pool, namespaces, run_ids, result["released_at"])
        result["worker_stderr_tail"] = stderr_log.read_text(errors="replace").splitlines()[-5:]
        cleanup = time.monotonic()
        threads = [
            threading.Thread(target=self.api.remove_namespace, args=(ns,)) for ns in namespaces
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        result["cleanup_seconds"] = round(time.monotonic() - cleanup, 1)
        self._say(result)
        return result

    def _follow(
        self,
        entrant: Entrant,
        pool: str,
        pool_id: str,
        process: subprocess.Popen,
        reader: OutputReader,
        run_ids: list[str],
        metrics_before: dict[str, float],
        pod_seconds: float,
        pod_fails: bool,
    ) -> dict[str, Any]:
        """Release the runs, sample the worker until every run ended, return what was seen."""
        assert self.prefect is not None
        wanted = set(run_ids)
        # The worker's own start (its first watches, the pool's lookups) is over: what follows
        # is what the runs cost.
        time.sleep(3)
        self.bed.proxy("POST", "/counts/reset")
        at_release = self.api.metrics()
        cpu_before = tree_cpu_seconds(process.pid)
        rss_before = tree_rss_bytes(process.pid)
        released = time.time()
        self.prefect.patch(f"/work_pools/{pool}", {"is_paused": False})
        peak = {
            "rss": rss_before,
            "watches": 0.0,
            "long_running": 0.0,
            "connections": 0,
            "in_flight": 0,
        }
        executed_filter = {
            "occurred": {"since": _iso(released - 5), "until": _iso(released + 86400)},
            "event": {"name": ["prefect.worker.executed-flow-run"]},
            "related": {"resources_in_roles": [[f"prefect.work-pool.{pool_id}",
                                                "work-pool"]]},
        }  # fmt: skip
        deadline = (
            time.monotonic()
            + self.args.timeout_base
            + len(run_ids) * self.args.timeout_per_run
            + pod_seconds
        )
        next_metrics = next_check = 0.0
        ended_since: float | None = None
        samples: list[tuple[float, int, int, int]] = []
        timed_out = False
        while True:
            now = time.monotonic()
            rss = tree_rss_bytes(process.pid)
            peak["rss"] = max(peak["rss"], rss)
            if now >= next_metrics or now >= next_check:
                seen, finished = self.jobs.counts(wanted)
                # Runs in flight: their Job exists and has not ended.
                peak["in_flight"] = max(peak["in_flight"], seen - finished)
            if now >= next_metrics:
                next_metrics = now + 3
                raise_peaks(peak, self.api.metrics(), metrics_before)
                peak["connections"] = max(
                    peak["connections"], tcp_connections(process.pid, self.proxy_port)
                )
                samples.append((round(time.time() - released, 1), rss, seen, finished))
            if now >= next_check:
                next_check = now + 5
                crashed = self.prefect.crashed_count(pool)
                all_jobs_ended = finished == seen and seen + crashed >= len(wanted)
                reported = (
                    not entrant.follows_runs or self.prefect.event_total(executed_filter) >= seen
                )
                if all_jobs_ended and reported:
                    # Pods that fail: a worker (or observer) that crashes runs gets time to
                    # do it; one that never does is stopped after CRASH_PATIENCE_SECONDS.
                    ended_since = ended_since or now
                    crashes_due = pod_fails and crashed < seen
                    if not crashes_due or now - ended_since > CRASH_PATIENCE_SECONDS:
                        break
            if process.poll() is not None or now > deadline:
                timed_out = now > deadline
                break
            time.sleep(0.5)
        # The last lines and events on their way out.
        time.sleep(2)
        cpu = tree_cpu_seconds(process.pid) - cpu_before
        elapsed = time.time() - released
        proxy = self.bed.proxy("GET", "/counts")
        after = self.api.metrics()
        seen, finished = self.jobs.counts(wanted)
        return {
            "released_at": released,
            "seconds_to_last_end": round(elapsed, 1),
            "timed_out": timed_out,
            "worker_exit": process.poll(),
            "jobs_created": seen,
            "jobs_ended": finished,
            "cpu_seconds": round(cpu, 3),
            "cpu_ms_per_run": round(cpu * 1e3 / max(1, len(wanted)), 2),
            "rss_before_mib": round(rss_before / 2**20, 1),
            "peak_rss_mib": round(peak["rss"] / 2**20, 1),
            "rss_growth_kib_per_run": round((peak["rss"] - rss_before) / 1024 / len(wanted), 1),
            # Over the runs that were in flight together at the most, which is what memory
            # holds: Prefect's server may hand out runs slower than the pods end.
            "rss_growth_kib_per_run_in_flight": round(
                (peak["rss"] - rss_before) / 1024 / max(1, peak["in_flight"]), 1
            ),
            "peak_watches_added": peak["watches"],
            "peak_long_running_added": peak["long_running"],
            "peak_connections": peak["connections"],
            "peak_runs_in_flight": peak["in_flight"],
            "job_watch_reconnects": self.jobs.reconnects,
            "proxy_counts": {k: proxy[k] for k in ("total", "verbs", "patterns", "statuses")},
            "apiserver_requests_during": requests_between(at_release, after),
            "samples": samples[:: max(1, len(samples) // 200)],
        }

    def _collect(
        self,
        entrant: Entrant,
        pool: str,
        namespaces: list[str],
        run_ids: list[str],
        released: float,
    ) -> dict[str, Any]:
        """After the worker stopped: latencies from the pods, the events and the runs' states."""
        assert self.prefect is not None
        ended_at: dict[str, float] = {}
        for namespace in namespaces:
            # 0.5.x labels the Job with its flow run, not the pod template: pods are matched to
            # runs through their Job.
            run_of_job = {
                job["metadata"]["name"]: job["metadata"].get("labels", {}).get(FLOW_RUN_LABEL)
                for job in self.api.request("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs")[
                    "items"
                ]
            }
            for pod in self.api.request("GET", f"/api/v1/namespaces/{namespace}/pods")["items"]:
                labels = pod["metadata"].get("labels", {})
                run_id = labels.get(FLOW_RUN_LABEL) or run_of_job.get(labels.get("job-name", ""))
                for status in pod.get("status", {}).get("containerStatuses", []):
                    message = status.get("state", {}).get("terminated", {}).get("message", "")
                    if run_id and message.startswith("ended @"):
                        ended_at[run_id] = int(message.split("@")[1]) / 1e6
        since = _iso(min(ended_at.values(), default=time.time()) - 3600)
        run_of = {f"prefect.flow-run.{run_id}": run_id for run_id in run_ids}
        executed: dict[str, float] = {}
        first_pod_event: dict[str, float] = {}
        pod_events = 0
        pod_event_ids: set[str] = set()
        resources = list(run_of)
        found_events = [
            event
            # In slices of a few runs: the next pages' tokens carry the filter, and the server
            # fails (500) on long ones; a slice's events mostly fit one page.
            for start in range(0, len(resources), EVENT_SLICE_RUNS)
            for event in self.prefect.events(
                {
                    "occurred": {"since": since, "until": _iso(time.time() + 60)},
                    "event": {
                        "prefix": ["prefect.worker.executed-flow-run", "prefect.kubernetes.pod."]
                    },
                    "related": {"id": resources[start : start + EVENT_SLICE_RUNS]},
                }
            )
        ]
        for event in found_events:
            run_id = next(
                (run_of[r["prefect.resource.id"]] for r in event.get("related", [])
                 if r.get("prefect.resource.id") in run_of),
                None,
            )  # fmt: skip
            if run_id is None:
                continue
            if event["event"] == "prefect.worker.executed-flow-run":
                executed[run_id] = iso_seconds(event["occurred"])
            else:
                pod_events += 1
                pod_event_ids.add(event["id"])
                received = iso_seconds(event["received"])
                first_pod_event[run_id] = min(first_pod_event.get(run_id, received), received)
        states: dict[str, int] = {}
        crashed_before_job = 0
        crash_ms: list[float] = []
        with self.jobs.lock:
            added = dict(self.jobs.added)
        for run in self.prefect.flow_runs(pool):
            state = (run.get("state") or {}).get("type", "NONE")
            states[state] = states.get(state, 0) + 1
            if state == "CRASHED" and run["id"] not in added:
                crashed_before_job += 1
            if state == "CRASHED" and run["id"] in ended_at:
                crash_ms.append(
                    (iso_seconds(run["state"]["timestamp"]) - ended_at[run["id"]]) * 1e3
                )
        return {
            "run_end_reported_ms": percentiles(
                [(executed[r] - ended_at[r]) * 1e3 for r in executed if r in ended_at]
            )
            if entrant.follows_runs
            else percentiles([]),
            "crash_reported_ms": percentiles(crash_ms),
            "job_created_after_release_s": percentiles(
                [added[r] - released for r in run_ids if r in added]
            ),
            "job_to_first_pod_event_ms": percentiles(
                [(first_pod_event[r] - added[r]) * 1e3 for r in first_pod_event if r in added]
            ),
            "pod_events": pod_events,
            "pod_events_distinct": len(pod_event_ids),
            "runs_with_pod_events": len(first_pod_event),
            "flow_run_states": states,
            "crashed_before_job": crashed_before_job,
        }

    def _say(self, result: dict[str, Any]) -> None:
        print(
            f"    {result['cpu_ms_per_run']} ms CPU/run, peak RSS {result['peak_rss_mib']} MiB "
            f"(+{result['rss_growth_kib_per_run']} KiB/run), {result['peak_watches_added']:.0f} "
            f"watches, {result['peak_connections']} connections, jobs "
            f"{result['jobs_created']}/{result['runs']}, log p99 "
            f"{result['log_line_ms']['p99']} ms, end p99 {result['run_end_reported_ms']['p99']} "
            f"ms, {result['seconds_to_last_end']} s, crashed before Job "
            f"{result['crashed_before_job']}",
            flush=True,
        )


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat()
