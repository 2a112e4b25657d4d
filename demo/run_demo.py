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
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo"
sys.path.insert(0, str(ROOT / "tests"))

from testbed_support import Testbed, stop_processes  # noqa: E402

POOL = "demo"


def say(message: str) -> None:
    print(f"\033[1m==> {message}\033[0m", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the Prefect server exited while starting")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("the Prefect server did not become healthy")


async def deploy_and_run(environment: dict[str, str]) -> list[tuple[str, str]]:
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
        return [(name, final[run_id].state.name if run_id in final else "UNFINISHED")
                for name, run_id in runs]  # fmt: skip


def main() -> int:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="pkr-demo-"))
    processes: list[subprocess.Popen] = []
    testbed = Testbed(workdir / "cluster")

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        say("Starting the local Kubernetes control plane and the fake kubelet...")
        testbed.start()
        port = free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        environment = {
            "PREFECT_HOME": str(workdir / "prefect-home"),
            "PREFECT_API_URL": api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "KUBECONFIG": str(testbed.kubeconfig),
        }
        env = os.environ | environment
        say(f"Starting a Prefect server on {api_url} ...")
        server_log = open(workdir / "server.log", "wb")  # noqa: SIM115 - closed with the process
        server = subprocess.Popen(
            ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        processes.append(server)
        wait_healthy(f"{api_url}/health", server)

        say(f"Starting `prefect worker start --pool {POOL} --type kubernetes-rs` ...")
        worker = subprocess.Popen(
            ["prefect", "worker", "start", "--pool", POOL, "--type", "kubernetes-rs"],
            env=env, start_new_session=True,
        )  # fmt: skip
        processes.append(worker)
        time.sleep(5)

        say("Deploying demo/flows.py and running three flows...")
        results = asyncio.run(deploy_and_run(environment))
        say("Summary")
        for name, state in results:
            print(f"    {name:<22} {state}")
        expected = {
            "count_sheep": "Completed",
            "divide": "Failed",
            "crash_the_container": "Crashed",
        }
        ok = all(expected[name] == state for name, state in results)
        say(f"Done in {time.monotonic() - started:.0f} s: {'as expected' if ok else 'UNEXPECTED'}")
        return 0 if ok else 1
    except KeyboardInterrupt:
        say("Interrupted; stopping everything")
        return 130
    finally:
        stop_processes(processes)
        testbed.stop()


if __name__ == "__main__":
    sys.exit(main())
