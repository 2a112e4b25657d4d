"""A real Prefect server and real `prefect worker start` processes, for `make demo` and the
end-to-end tests.

`PrefectServer.start()` runs `prefect server start` on a free loopback port, on SQLite under its
own PREFECT_HOME (Prefect's default, as `make demo` uses it) or on a PostgreSQL server of its own
(as production servers run, and as the end-to-end tests need: they create runs concurrently);
`start_worker()` runs `prefect worker start --type kubernetes-rs` for a pool, its output kept in
a file the tests read; `stop()` stops what it started. Deployments point at flow code on this
machine (a `set_working_directory` pull step), which the testbed's pods run as local processes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed_support import TestbedError, log_tail, run_checked, stop_processes

WORKER_TYPE = "kubernetes-rs"
# The CLI of the Python running this code (a user's `prefect`, from the same environment).
PREFECT = str(Path(sys.executable).parent / "prefect")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class WorkerProcess:
    """One `prefect worker start` process; its stdout and stderr go to `log`."""

    pool: str
    name: str
    log: Path
    process: subprocess.Popen

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 60) -> None:
        self.wait_for_any_output([text], timeout)

    def wait_for_any_output(self, texts: list[str], timeout: float = 60) -> str:
        """Wait until the worker has printed one of `texts`; returns the one it printed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            output = self.output()
            for text in texts:
                if text in output:
                    return text
            if self.process.poll() is not None:
                raise TestbedError(
                    f"worker {self.name} exited with {self.process.returncode}; the end of its "
                    f"output ({self.log}):\n{output[-3000:]}"
                )
            time.sleep(0.3)
        raise TestbedError(
            f"worker {self.name} printed none of {texts!r} within {timeout} s; the end of its "
            f"output ({self.log}):\n{output[-3000:]}"
        )


def postgres_binaries() -> Path:
    """The directory of Debian's PostgreSQL server programs, the newest installed version
    (`make testbed` installs Debian's `postgresql` where it is missing)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
    )
    if not found:
        raise TestbedError(
            "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/postgres): "
            "`make testbed` installs Debian's postgresql package"
        )
    return found[-1].parent


@dataclass
class PostgresServer:
    """A throwaway PostgreSQL server for one Prefect server: its own data directory, a free
    loopback port, trust authentication on loopback only, no fsync (the data is thrown away).

    PostgreSQL refuses to run as root: as root, the server and `initdb` run as Debian's
    `postgres` user, with the data in a directory of its own under /tmp (pytest's temporary
    directories are closed to other users).
    """

    log: Path
    port: int = 0
    data_root: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/prefect"

    def _as_owner(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}
        return {"user": "postgres", "group": "postgres", "extra_groups": []}

    def start(self, timeout: float = 60) -> PostgresServer:
        binaries = postgres_binaries()
        self.data_root = Path(tempfile.mkdtemp(prefix="pkr-postgres-", dir="/tmp"))
        if os.geteuid() == 0:
            shutil.chown(self.data_root, "postgres", "postgres")
        data = self.data_root / "data"
        run_checked(
            [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "--no-sync", "--encoding=UTF8", "--locale=C"],
            **self._as_owner(),
        )  # fmt: skip
        self.port = free_port()
        self.process = subprocess.Popen(
            [str(binaries / "postgres"), "-D", str(data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.data_root}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=300"],
            stdin=subprocess.DEVNULL, stdout=open(self.log, "ab"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT, start_new_session=True, **self._as_owner(),
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise TestbedError(
                    f"PostgreSQL exited with {self.process.returncode} while starting; "
                    f"the end of its log {self.log}:\n{log_tail(self.log)}"
                )
            ready = subprocess.run(
                [str(binaries / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                check=False,
            )
            if ready.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise TestbedError(
                    f"PostgreSQL did not accept connections within {timeout} s; "
                    f"the end of its log {self.log}:\n{log_tail(self.log)}"
                )
            time.sleep(0.2)
        run_checked(
            [str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "prefect"]
        )  # fmt: skip
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGINT is PostgreSQL's fast shutdown (SIGTERM waits for every client to leave).
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
        if self.data_root is not None:
            shutil.rmtree(self.data_root, ignore_errors=True)
            self.data_root = None


@dataclass
class PrefectServer:
    workdir: Path
    # Extra settings for the server process (e.g. a short cancellation timeout).
    server_settings: dict[str, str] = field(default_factory=dict)
    # "sqlite" (Prefect's default) or "postgresql" (a PostgreSQL server of its own).
    database: str = "sqlite"
    postgres: PostgresServer | None = field(init=False, default=None)
    api_url: str = field(init=False, default="")
    processes: list[subprocess.Popen] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """The settings every Prefect process of this stack shares (server, workers, clients)."""
        return {
            "PREFECT_HOME": str(self.workdir / "prefect-home"),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # The default (10 s) makes every run wait for the worker's next poll.
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            # Console output is a file: do not wrap log lines at 80 columns.
            "COLUMNS": "500",
        }

    def start(self, timeout: float = 120) -> PrefectServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        database: dict[str, str] = {}
        if self.database == "postgresql":
            # Kept before it starts, so that `stop()` also stops a half-started one.
            self.postgres = PostgresServer(self.workdir / "postgres.log")
            self.postgres.start()
            database = {"PREFECT_SERVER_DATABASE_CONNECTION_URL": self.postgres.url}
        elif self.database != "sqlite":
            raise ValueError(f"database must be 'sqlite' or 'postgresql', not {self.database!r}")
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}/api"
        log = open(self.workdir / "server.log", "wb")  # noqa: SIM115 - closed with the process
        server = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=os.environ | self.env | database | self.server_settings,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.processes.append(server)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise TestbedError(
                    f"the Prefect server exited with {server.returncode} while starting; the "
                    f"end of its log {self.workdir / 'server.log'}:\n"
                    + log_tail(self.workdir / "server.log")
                )
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.5)
        raise TestbedError(
            f"the Prefect server did not become healthy within {timeout} s; the end of its log "
            f"{self.workdir / 'server.log'}:\n{log_tail(self.workdir / 'server.log')}"
        )

    def start_worker(
        self,
        pool: str,
        *,
        kubeconfig: Path | None,
        extra_env: dict[str, str] | None = None,
        drop_env: Iterable[str] = (),
        name: str | None = None,
        wrapper: Iterable[str] = (),
    ) -> WorkerProcess:
        """`prefect worker start --pool <pool> --type kubernetes-rs`, returned once it polls.

        With `kubeconfig=None` the worker gets no KUBECONFIG at all (and a HOME without
        `~/.kube`), so only a configuration's `cluster_config` (or an in-cluster service
        account) can point it at a cluster. `wrapper` is a command that starts the worker's
        (e.g. `unshare ...`) and must exec it, so the process is the worker's.
        """
        name = name or f"{pool}-worker-{uuid.uuid4().hex[:6]}"
        environment = os.environ | self.env | (extra_env or {})
        for key in drop_env:
            environment.pop(key, None)
        if kubeconfig is None:
            environment.pop("KUBECONFIG", None)
            home = self.workdir / f"home-{name}"
            home.mkdir(exist_ok=True)
            environment["HOME"] = str(home)
        else:
            environment["KUBECONFIG"] = str(kubeconfig)
        log = self.workdir / f"{name}.log"
        process = subprocess.Popen(
            [*wrapper, PREFECT, "worker", "start", "--pool", pool, "--type", WORKER_TYPE,
             "--name", name],
            env=environment, stdout=open(log, "wb"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.processes.append(process)
        worker = WorkerProcess(pool=pool, name=name, log=log, process=process)
        self.workers.append(worker)
        worker.wait_for_output(f"Worker '{name}' started", timeout=120)
        return worker

    def stop_worker(self, worker: WorkerProcess, grace_seconds: float = 20) -> None:
        if worker.process in self.processes:
            self.processes.remove(worker.process)
        stop_processes([worker.process], grace_seconds)

    def stop(self) -> None:
        stop_processes(self.processes)
        self.workers.clear()
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None

    # --- the Prefect API, as a user's scripts use it -------------------------------------------

    def client(self) -> Any:
        from prefect.client.orchestration import PrefectClient

        return PrefectClient(api=self.api_url)

    async def create_pool(self, name: str, base_job_template: dict[str, Any]) -> None:
        from prefect.client.schemas.actions import WorkPoolCreate

        async with self.client() as client:
            await client.create_work_pool(
                WorkPoolCreate(name=name, type=WORKER_TYPE, base_job_template=base_job_template)
            )

    async def deploy(
        self,
        flows_dir: Path,
        entrypoint: str,
        pool: str,
        job_variables: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> uuid.UUID:
        """A deployment whose runs `cd` into `flows_dir` and run `entrypoint` (`file.py:func`)."""
        function = entrypoint.rsplit(":", 1)[1]
        async with self.client() as client:
            flow_id = await client.create_flow_from_name(function.replace("_", "-"))
            return await client.create_deployment(
                flow_id=flow_id,
                name=name or f"{function}-{uuid.uuid4().hex[:6]}",
                entrypoint=entrypoint,
                work_pool_name=pool,
                job_variables=job_variables or {},
                pull_steps=[
                    {
                        "prefect.deployments.steps.set_working_directory": {
                            "directory": str(flows_dir)
                        }
                    }
                ],
            )

    async def run_deployment(
        self, deployment_id: uuid.UUID, parameters: dict[str, Any] | None = None
    ) -> Any:
        async with self.client() as client:
            return await client.create_flow_run_from_deployment(
                deployment_id, parameters=parameters or {}
            )

    async def read_flow_run(self, flow_run_id: Any) -> Any:
        async with self.client() as client:
            return await client.read_flow_run(flow_run_id)

    async def wait_for_state(
        self, flow_run_ids: Iterable[Any], done: Any = None, timeout: float = 240
    ) -> dict[str, Any]:
        """Poll until every run is final (or `done(flow_run)` holds); the flow runs by id."""
        pending = {str(run_id) for run_id in flow_run_ids}
        finished: dict[str, Any] = {}
        deadline = time.monotonic() + timeout
        async with self.client() as client:
            while pending:
                for run_id in sorted(pending):
                    flow_run = await client.read_flow_run(run_id)
                    state = flow_run.state
                    reached = done(flow_run) if done else (state is not None and state.is_final())
                    if reached:
                        finished[run_id] = flow_run
                        pending.discard(run_id)
                if not pending:
                    break
                if time.monotonic() > deadline:
                    states = {
                        run_id: (await client.read_flow_run(run_id)).state for run_id in pending
                    }
                    raise TimeoutError(f"flow runs not done after {timeout} s: {states}")
                await asyncio.sleep(1)
        return finished

    async def wait_until_running(self, flow_run_id: Any, timeout: float = 120) -> None:
        await self.wait_for_state(
            [flow_run_id], done=lambda run: run.state.is_running(), timeout=timeout
        )
