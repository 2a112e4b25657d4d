"""`make demo`: the whole path a user takes, on this machine, with nothing mocked.

A real Kubernetes control plane (the testbed, with the fake kubelet running pods as local
processes), a real Prefect server, `prefect worker start --type kubernetes-rs`, a deployment of
`demo/flows.py`, and three flow runs: one that succeeds, one that fails, one whose container
crashes. Everything it starts is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo"
sys.path.insert(0, str(ROOT / "tests"))

from prefect_support import PrefectServer  # noqa: E402
from testbed_support import Testbed  # noqa: E402

POOL = "demo"


def show(text: str) -> None:
    # The demo's output may be a pipe whose reader is gone (`make demo | tee demo.log`, then
    # Ctrl-C): what it says is then lost, but it must go on to stop what it started.
    try:
        print(text, flush=True)
    except OSError:
        pass


def say(message: str) -> None:
    show(f"\033[1m==> {message}\033[0m")


async def deploy_and_run(environment: dict[str, str]) -> list[tuple[str, str, str | None]]:
    os.environ.update(environment)
    from prefect import flow
    from prefect.client.orchestration import get_client

    runs = []
    specs = [
        ("count_sheep", {"sheep": 5}),
        ("divide", {}),
        ("crash_the_container", {"code": 3}),
    ]
    async with get_client() as client:
        for name, parameters in specs:
            source = await flow.from_source(source=str(DEMO), entrypoint=f"flows.py:{name}")
            deployment_id = await source.deploy(
                name=f"demo-{name}",
                work_pool_name=POOL,
                job_variables={"image": "local-process", "namespace": "default"},
                print_next_steps=False,
            )
            flow_run = await client.create_flow_run_from_deployment(
                deployment_id, parameters=parameters
            )
            say(f"Started flow run {flow_run.name!r} of {name}")
            runs.append((name, str(flow_run.id)))

        final = {}
        deadline = time.monotonic() + 300
        while len(final) < len(runs) and time.monotonic() < deadline:
            for name, run_id in runs:
                if run_id in final:
                    continue
                flow_run = await client.read_flow_run(run_id)
                if flow_run.state and flow_run.state.is_final():
                    final[run_id] = flow_run
                    say(
                        f"{name}: {flow_run.state.name} "
                        f"(Job {flow_run.infrastructure_pid}) {flow_run.state.message or ''}"
                    )
            await asyncio.sleep(1)
        return [
            (name, final[run_id].state.name, final[run_id].infrastructure_pid)
            if run_id in final
            else (name, "UNFINISHED", None)
            for name, run_id in runs
        ]


def main() -> int:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="pkr-demo-"))
    testbed = Testbed(workdir / "cluster")
    prefect = PrefectServer(workdir / "prefect")

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        say("Starting the local Kubernetes control plane and the fake kubelet...")
        testbed.start()
        say("Starting a Prefect server on a free loopback port...")
        prefect.start()
        say(f"Prefect server up at {prefect.api_url}")

        say(f"Starting `prefect worker start --pool {POOL} --type kubernetes-rs` ...")
        worker = prefect.start_worker(POOL, kubeconfig=testbed.kubeconfig, name="demo-worker")
        say(f"Worker up; its output follows in {worker.log}")
        # `--pid`: tail ends by itself once the demo has ended, however that happened.
        follower = subprocess.Popen(
            ["tail", "-n", "+1", "-f", f"--pid={os.getpid()}", str(worker.log)]
        )

        say("Deploying demo/flows.py and running three flows...")
        try:
            results = asyncio.run(
                deploy_and_run(prefect.env | {"KUBECONFIG": str(testbed.kubeconfig)})
            )
            # A run's state is final before its container has ended: let the worker finish
            # reading each Job's log and report its end.
            for _, _, pid in results:
                job = pid and pid.rsplit(":", 1)[1]
                if job:
                    worker.wait_for_any_output([f"Job '{job}' completed", f"Job '{job}' failed"])
        finally:
            time.sleep(0.5)  # let `tail` print the worker's last lines
            follower.terminate()
        say("Summary")
        for name, state, _ in results:
            show(f"    {name:<22} {state}")
        expected = {
            "count_sheep": "Completed",
            "divide": "Failed",
            "crash_the_container": "Crashed",
        }
        ok = all(expected[name] == state for name, state, _ in results)
        say(f"Done in {time.monotonic() - started:.0f} s: {'as expected' if ok else 'UNEXPECTED'}")
        return 0 if ok else 1
    except KeyboardInterrupt:
        say("Interrupted; stopping everything")
        return 130
    finally:
        # A second Ctrl-C or SIGTERM must not cut the cleanup short (each step is bounded).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        prefect.stop()
        testbed.stop()


if __name__ == "__main__":
    sys.exit(main())
