"""Faults a real cluster produces, played while `KubernetesWorker.run()` follows a flow run.

Traffic goes through the testbed's fault proxy (`testbed.proxy_rule`), except for the API server
restart, which is a real restart of kube-apiserver while etcd keeps the data. Each test asserts
what a user sees: the exit code, the flow's log lines (every one once, in order), the message.
The faults the lifecycle tests already show (a 410 in a watch, a 503 or a lost reply on
create, cut log streams, a Job deleted from outside, node loss, OOM, eviction, cancellation)
are not repeated here; README "Reliability" lists both.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time

import pytest
from test_lifecycle import (
    Worker,
    block,
    jobs_of,
    no_prefect_server,  # noqa: F401 - autouse: no Prefect server in these tests
    pods_of,
    run_flow,
    scripted,
    start_run,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


def numbered(output: str) -> list[str]:
    """The flow's numbered log lines (`line 1`, `line 2`, ...) in the worker's stdout."""
    return [line for line in output.splitlines() if line.startswith("line ")]


def lines_up_to(count: int) -> list[str]:
    return [f"line {n}" for n in range(1, count + 1)]


def printing(count: int, interval: float, exit_code: int) -> str:
    """An exec-mode command printing `line 1` .. `line <count>`, one every `interval` s."""
    each = f"(print('line', n, flush=True), time.sleep({interval}))"
    loop = f"[{each} for n in range(1, {count + 1})]"
    return f'python -c "import sys, time; {loop}; sys.exit({exit_code})"'


async def watch_stats(worker, cluster_config) -> dict:
    cluster = await worker._kubernetes.connect(
        cluster_config["config"], cluster_config["context_name"]
    )
    stats = cluster.watch_stats("default")
    assert stats is not None, "the runs started the namespace's watchers"
    return {
        "job_watches_opened": stats.job_watches_opened,
        "pod_watches_opened": stats.pod_watches_opened,
        "resyncs": stats.resyncs,
        "subscribed_runs": stats.subscribed_runs,
    }


# --- the API server ---------------------------------------------------------------------------


async def test_an_api_server_restart_mid_run_loses_and_repeats_no_line(testbed, capsys, caplog):
    """kube-apiserver stops and starts again (etcd keeps every object) while the flow prints:
    watches and the log stream resume, the exit code is the flow's."""
    caplog.set_level(logging.INFO)
    direct = block(testbed)
    async with Worker("apiserver-restart") as worker:
        running, _, _ = await start_run(worker, direct, command=printing(1200, 0.01, exit_code=5))
        await asyncio.sleep(2)
        await asyncio.to_thread(testbed.restart_apiserver)
        result = await asyncio.wait_for(running, 90)
    assert result.status_code == 5
    assert numbered(capsys.readouterr().out) == lines_up_to(1200)


# --- watches ----------------------------------------------------------------------------------


async def test_watches_cut_every_two_seconds_for_a_whole_run(testbed, capsys):
    proxied = block(testbed, testbed.proxy_kubeconfig)
    cut = {"verb": "watch", "action": "cut-after-seconds", "seconds": 2, "abrupt": True}
    with testbed.proxy_rule(cut):
        async with Worker("cut-watches") as worker:
            result, _, _ = await run_flow(
                worker, proxied, annotations=scripted(run_seconds=8, log_lines=80, exit_code=3)
            )
            stats = await watch_stats(worker, proxied)
    assert result.status_code == 3
    assert numbered(capsys.readouterr().out) == lines_up_to(80)
    assert stats["job_watches_opened"] >= 4 and stats["pod_watches_opened"] >= 4, stats


@pytest.mark.parametrize(
    "gone",
    [
        {"action": "gone-event", "events": 0},
        {"action": "status", "code": 410},
    ],
    ids=["410-event", "http-410"],
)
async def test_repeated_410s_resync_and_the_run_ends_right(testbed, capsys, gone):
    """Four watches in a row are told their version is too old: each time the worker re-reads
    the run's objects (no history) and watches from now; nothing of the run is missed."""
    proxied = block(testbed, testbed.proxy_kubeconfig)
    testbed.proxy("POST", "/counts/reset")
    with testbed.proxy_rule({"verb": "watch", "times": 4} | gone):
        async with Worker("gone-again") as worker:
            result, _, _ = await run_flow(
                worker, proxied, annotations=scripted(run_seconds=3, log_lines=30, exit_code=2)
            )
            stats = await watch_stats(worker, proxied)
    assert result.status_code == 2
    assert numbered(capsys.readouterr().out) == lines_up_to(30)
    assert stats["resyncs"] == 4, stats
    lists = testbed.proxy("GET", "/counts")["verbs"].get("list", 0)
    assert lists <= 2 + 2 * 4, "one 'now' list and one re-read per 410, no storm"


async def test_a_run_without_bookmarks_through_reopened_watches(testbed, capsys):
    proxied = block(testbed, testbed.proxy_kubeconfig)
    with testbed.proxy_rule(
        {"verb": "watch", "action": "drop-bookmarks"},
        {"verb": "watch", "action": "cut-after-seconds", "seconds": 3},
    ):
        async with Worker("no-bookmarks") as worker:
            result, _, _ = await run_flow(
                worker, proxied, annotations=scripted(run_seconds=7, log_lines=20, exit_code=6)
            )
    assert result.status_code == 6
    assert numbered(capsys.readouterr().out) == lines_up_to(20)


async def test_an_idle_watch_the_server_closes_at_its_timeout_is_reopened(testbed):
    """A server ends a watch cleanly at its timeout. Nothing happens to the run's objects for
    a while (the flow runs quietly), so the reopened watch must still see the end."""
    proxied = block(testbed, testbed.proxy_kubeconfig)
    with testbed.proxy_rule({"verb": "watch", "action": "cut-after-seconds", "seconds": 1.5}):
        async with Worker("idle-watch") as worker:
            result, _, _ = await run_flow(
                worker, proxied, annotations=scripted(run_seconds=6, exit_code=7)
            )
            stats = await watch_stats(worker, proxied)
    assert result.status_code == 7
    assert stats["job_watches_opened"] >= 3, stats


# --- errors, resets and latency on every kind of call ----------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        {"action": "status", "code": 429, "retry_after": 2, "times": 2},
        {"action": "status", "code": 500, "times": 2},
    ],
    ids=["429-retry-after", "500"],
)
async def test_a_throttled_or_failing_create_is_retried_into_one_job(testbed, monkeypatch, fault):
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KUBERNETES_WORKER_CREATE_JOB_RETRY_DELAY_SECONDS", "0")
    monkeypatch.setenv(
        "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_CREATE_JOB_RETRY_JITTER_MAX_SECONDS", "0"
    )
    proxied = block(testbed, testbed.proxy_kubeconfig)
    with testbed.proxy_rule({"verb": "create", "path": "/jobs$"} | fault):
        async with Worker("create-retry") as worker:
            started = time.monotonic()
            result, _, flow_run = await run_flow(worker, proxied, annotations=scripted())
            elapsed = time.monotonic() - started
    assert result.status_code == 0
    assert len(jobs_of(testbed, flow_run)) == 1
    if fault.get("retry_after"):
        assert elapsed >= 2 * fault["retry_after"], "the server's Retry-After was honoured"


async def test_throttled_and_failing_reads_and_watches_are_retried(testbed, capsys):
    """A worker's first lists answer 429 with Retry-After, its first watches 503 and 500: the
    run waits them out instead of failing."""
    proxied = block(testbed, testbed.proxy_kubeconfig)
    with testbed.proxy_rule(
        {"verb": "list", "action": "status", "code": 429, "retry_after": 1, "times": 2},
        {"verb": "watch", "action": "status", "code": 503, "times": 2},
        {"verb": "watch", "action": "status", "code": 500, "times": 2},
    ) as rules:
        async with Worker("throttled-reads") as worker:
            result, _, _ = await run_flow(
                worker, proxied, annotations=scripted(run_seconds=1, log_lines=10, exit_code=4)
            )
        assert testbed.proxy_rules_applied(rules) == [2, 2, 2]
    assert result.status_code == 4
    assert numbered(capsys.readouterr().out) == lines_up_to(10)


async def test_a_log_stream_answered_429_500_and_503_loses_no_line(testbed, capsys):
    proxied = block(testbed, testbed.proxy_kubeconfig)
    with testbed.proxy_rule(
        {"path": "/log$", "action": "status", "code": 503, "times": 1},
        {"path": "/log$", "action": "status", "code": 429, "retry_after": 1, "times": 1},
        {"path": "/log$", "action": "status", "code": 500, "times": 1},
        {"path": "/log$", "action": "cut-after-bytes", "bytes": 3000, "times": 1},
    ) as rules:
        async with Worker("log-errors") as worker:
            result, _, _ = await run_flow(
                worker, proxied, annotations=scripted(log_lines=300, log_interval_ms=10)
            )
        assert testbed.proxy_rules_applied(rules) == [1, 1, 1, 1]
    assert result.status_code == 0
    assert numbered(capsys.readouterr().out) == lines_up_to(300)


async def test_a_log_api_outage_across_the_containers_end_loses_no_line(testbed, capsys):
    """The log stream is cut mid-run and every log read fails (503) until 8 s after the
    container ended: the last read waits the outage out instead of giving up on the tail."""
    proxied = block(testbed, testbed.proxy_kubeconfig)
    with testbed.proxy_rule(
        {"path": "/log$", "action": "cut-after-bytes", "bytes": 400, "times": 1},
        {"path": "/log$", "action": "status", "code": 503, "skip": 1},
    ) as (cut, outage):
        async with Worker("log-outage") as worker:
            running, _, _ = await start_run(
                worker, proxied, annotations=scripted(log_lines=200, run_seconds=3)
            )
            await asyncio.sleep(3 + 8)
            testbed.proxy("DELETE", f"/rules/{outage}")
            result = await asyncio.wait_for(running, 60)
        assert testbed.proxy_rules_applied([cut]) == [1]
    assert result.status_code == 0
    assert numbered(capsys.readouterr().out) == lines_up_to(200)


async def test_connection_resets_on_every_kind_of_call(testbed, capsys):
    """The connection is reset before the API server sees the request: on the first lists,
    watches, the create and log reads. (A reset after the create reached the API server is
    `test_lifecycle.py::test_an_ambiguous_create_adopts_the_job_instead_of_making_a_second`.)"""
    proxied = block(testbed, testbed.proxy_kubeconfig)
    with testbed.proxy_rule(
        {"verb": "list", "action": "reset", "times": 1},
        {"verb": "watch", "action": "reset", "times": 2},
        {"verb": "create", "path": "/jobs$", "action": "reset", "times": 1},
        {"path": "/log$", "action": "reset", "times": 2},
        {"verb": "watch", "action": "cut-after-seconds", "seconds": 2, "abrupt": True,
         "times": 2},
    ) as rules:  # fmt: skip
        async with Worker("resets") as worker:
            result, _, flow_run = await run_flow(
                worker, proxied,
                annotations=scripted(run_seconds=3, log_lines=100, exit_code=9),
            )  # fmt: skip
        assert testbed.proxy_rules_applied(rules) == [1, 2, 1, 2, 2]
    assert result.status_code == 9
    assert len(jobs_of(testbed, flow_run)) == 1
    assert numbered(capsys.readouterr().out) == lines_up_to(100)


async def test_two_seconds_of_latency_on_every_call(testbed, capsys):
    proxied = block(testbed, testbed.proxy_kubeconfig)
    with testbed.proxy_rule({"action": "delay", "ms": 2000}):
        async with Worker("slow-api") as worker:
            result, status, _ = await run_flow(
                worker, proxied, annotations=scripted(run_seconds=2, log_lines=50, exit_code=1)
            )
    assert result.status_code == 1
    assert status.pid == result.identifier and status.pid.count(":") == 2
    assert numbered(capsys.readouterr().out) == lines_up_to(50)


# --- the log stream ---------------------------------------------------------------------------


async def test_a_hundred_thousand_lines_through_ten_cut_log_streams(testbed, capfd):
    """100,000 numbered lines over ~25 s; the log stream is cut 10 times, mid-line, without a
    clean end: every line is printed exactly once, in order."""
    proxied = block(testbed, testbed.proxy_kubeconfig)
    cut = {"path": "/log$", "action": "cut-after-bytes", "bytes": 250_000, "abrupt": True,
           "times": 10}  # fmt: skip
    with testbed.proxy_rule(cut) as rules:
        async with Worker("hundred-thousand") as worker:
            result, _, _ = await run_flow(
                worker, proxied, annotations=scripted(log_lines=100_000, log_interval_ms=0.25)
            )
        assert testbed.proxy_rules_applied(rules) == [10], "the stream was cut 10 times"
    assert result.status_code == 0
    lines = numbered(capfd.readouterr().out)
    assert len(lines) == 100_000
    assert lines == lines_up_to(100_000)


# --- the pod and its Job ----------------------------------------------------------------------


async def test_a_pod_deleted_from_outside_ends_the_run_as_its_job_ends(testbed, caplog):
    """Deleting the running pod kills its container; the Job controller counts it failed and,
    as v1.20 does when the deletion beats the failure, may start a replacement pod that runs on.
    The run follows the Job to its real end: no outcome while a pod of the Job still runs,
    then the exit code that matches how the Job ended."""
    caplog.set_level(logging.INFO)
    direct = block(testbed)
    async with Worker("pod-deleted") as worker:
        running, status, flow_run = await start_run(
            worker, direct, annotations=scripted(run_seconds=4, log_lines=3)
        )
        job_name = status.pid.split(":")[-1]
        for _ in range(50):
            pods = pods_of(testbed, job_name)
            if pods and pods[0].get("status", {}).get("phase") == "Running":
                break
            await asyncio.sleep(0.2)
        testbed.kubectl("delete", "pod", pods[0]["metadata"]["name"], "--wait=false")
        result = await asyncio.wait_for(running, 60)
    (job,) = jobs_of(testbed, flow_run)
    ended = {c["type"] for c in job["status"].get("conditions", []) if c["status"] == "True"}
    assert ended in ({"Complete"}, {"Failed"}), "the run ended before its Job did"
    if ended == {"Complete"}:
        assert result.status_code == 0
        assert f"Job '{job_name}' completed" in caplog.text
    else:
        assert result.status_code == 143, "the deleted pod's container got SIGTERM"
        assert f"Job '{job_name}' failed" in caplog.text
    assert "reported no exit code" not in caplog.text


# --- the worker's own output ------------------------------------------------------------------


class BrokenStdout:
    """A stdout whose writes fail, like a closed pipe."""

    def write(self, text: str) -> int:
        raise OSError(32, "Broken pipe")

    def flush(self) -> None:
        pass


class StuckStdout:
    """A stdout nobody reads: writes block until `release`; records what was written."""

    def __init__(self) -> None:
        import threading

        self.entered = threading.Event()
        self.released = threading.Event()
        self.text: list[str] = []

    def write(self, text: str) -> int:
        self.entered.set()
        self.released.wait()
        self.text.append(text)
        return len(text)

    def flush(self) -> None:
        pass


async def test_a_stdout_that_cannot_be_written_loses_no_run(testbed, monkeypatch, caplog):
    """The flow's lines cannot be printed: the worker warns (once while it lasts) and every
    run still ends with its exit code; printing works again once stdout does."""
    monkeypatch.setattr(sys, "stdout", BrokenStdout())
    direct = block(testbed)
    async with Worker("broken-stdout") as worker:
        first, second = await asyncio.gather(
            run_flow(worker, direct, annotations=scripted(log_lines=5, exit_code=0)),
            run_flow(worker, direct, annotations=scripted(log_lines=5, exit_code=3)),
        )
        assert (first[0].status_code, second[0].status_code) == (0, 3)
        warnings = [r for r in caplog.records if "cannot print the flow runs' logs" in r.message]
        assert len(warnings) == 1, [r.message for r in warnings]
        assert "Broken pipe" in warnings[0].message
        # Not `monkeypatch.undo()`: that would also undo the autouse `no_prefect_server`'s
        # patches, and the run's pod events would then start Prefect's temporary server.
        working = StuckStdout()
        working.released.set()
        monkeypatch.setattr(sys, "stdout", working)
        result, _, _ = await run_flow(worker, direct, annotations=scripted(log_lines=3))
    assert result.status_code == 0
    assert numbered("".join(working.text)) == lines_up_to(3)


async def test_a_stdout_nobody_reads_holds_the_run_not_the_event_loop(testbed, monkeypatch):
    """While stdout blocks, the asyncio loop keeps running and the run does not report its end
    (its lines are not out yet); once stdout reads again every line comes, then the end."""
    stuck = StuckStdout()
    monkeypatch.setattr(sys, "stdout", stuck)
    direct = block(testbed)
    async with Worker("stuck-stdout") as worker:
        try:
            running, status, flow_run = await start_run(
                worker, direct, annotations=scripted(log_lines=20, exit_code=0)
            )
            job_name = status.pid.split(":")[-1]
            for _ in range(300):
                job_status = jobs_of(testbed, flow_run)[0].get("status") or {}
                conditions = job_status.get("conditions") or []
                if any(c["type"] == "Complete" and c["status"] == "True" for c in conditions):
                    break
                await asyncio.sleep(0.1)  # the loop runs while the printer is blocked
            else:
                raise AssertionError(f"Job {job_name} did not complete")
            # The lines may be read only after the Job's end (a short run): wait for the write.
            assert await asyncio.to_thread(stuck.entered.wait, 30), "the printer never wrote"
            await asyncio.sleep(1)
            assert not running.done(), "the run ended before its lines were printed"
        finally:
            # The printer is shared by the whole process: never leave it blocked.
            stuck.released.set()
        result = await asyncio.wait_for(running, 60)
    assert result.status_code == 0
    assert numbered("".join(stuck.text)) == lines_up_to(20)


# --- the worker's own process -----------------------------------------------------------------

EXIT_WHILE_WATCHES_RECONNECT = """
import asyncio, json, logging, os, sys

logging.basicConfig(level=logging.DEBUG, stream=open(os.devnull, "w"))
from prefect_kubernetes_rs import _core

async def main():
    clients = _core.KubernetesClients(tcp_keepalive=True)
    cluster = await clients.connect(json.loads(sys.argv[1]), None)
    async def start(n):
        # Each start watches its namespace, then the Job is refused (no such namespace): the
        # namespace's watchers stay, reconnecting.
        try:
            await cluster.start_run(
                namespace=f"exit-{n}", flow_run_id=f"run-{n}", manifest={"kind": "Job"},
                pod_watch_timeout_seconds=60.0, job_watch_timeout_seconds=None,
                stream_output=True, create_attempts=1, create_delay_seconds=0.0,
                create_jitter_min_seconds=0.0, create_jitter_max_seconds=0.0, cluster_uid=None,
                api_key_secret_name=None, api_key_secret_key=None,
                create_api_key_secret_for_pool=None, api_auth_string_secret_name=None,
                api_auth_string_secret_key=None, store_env_as_secret=False,
            )
        except Exception:
            pass

    # All at once: one after the other they took ~4 s per process, and the 20 processes came
    # close to the test's timeout on a loaded machine.
    await asyncio.gather(*(start(n) for n in range(30)))
    await asyncio.sleep(float(sys.argv[2]))

asyncio.run(main())
"""


def test_the_process_exits_cleanly_while_watches_reconnect_and_log(testbed):
    """A program using the worker ends while the Rust threads are busy: 30 namespaces' watches
    cut every 50 ms, each reconnection logged at DEBUG through Python's logging. The process
    exits with 0 every time, never `Fatal Python error` and SIGABRT from a Rust thread entering
    Python as the interpreter finalizes (before the fix: 14 of 60 such exits crashed)."""
    config = json.dumps(block(testbed, testbed.proxy_kubeconfig)["config"])
    crashed = []
    with testbed.proxy_rule({"verb": "watch", "action": "cut-after-seconds", "seconds": 0.05}):
        for attempt in range(20):
            linger = f"{0.05 + 0.5 * attempt / 20:.3f}"
            probe = subprocess.run(
                [sys.executable, "-c", EXIT_WHILE_WATCHES_RECONNECT, config, linger],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if probe.returncode != 0:
                crashed.append((linger, probe.returncode, probe.stderr[-500:]))
    assert crashed == [], f"exits that crashed (linger s, code, stderr): {crashed}"
