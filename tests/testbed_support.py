"""The Kubernetes testbed for pytest: a real control plane, the fake kubelet, the fault proxy.

`Testbed.start()` brings up a fresh stack in its own state directory (free ports, so it never
touches a `make cluster-up` stack) and `stop()` stops exactly what it started. The session
fixture in `conftest.py` stops it even when tests fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = ROOT / "tests" / "testbed" / "cluster.sh"


def _binary(name: str) -> Path:
    """A testbed binary from the workspace's target dir, built on demand (release first)."""
    for profile in ("release", "debug"):
        candidate = ROOT / "target" / profile / name
        if candidate.exists():
            return candidate
    package = {"fake-kubelet": "pkr-fake-kubelet", "fault-proxy": "pkr-fault-proxy"}[name]
    run_checked(["cargo", "build", "--release", "-p", package], cwd=ROOT)
    return ROOT / "target" / "release" / name


class TestbedError(RuntimeError):
    """A testbed process failed: the message holds the tail of its output and where its logs are."""


class CommandFailed(subprocess.CalledProcessError):
    """A command of the harness failed; unlike its base class, its text shows what the command
    said (the end of its stderr and stdout), which is what a failing test's report needs."""

    def __str__(self) -> str:
        said = []
        for name, text in (("stderr", self.stderr), ("stdout", self.output)):
            if isinstance(text, bytes):
                text = text.decode(errors="replace")
            if text and text.strip():
                said.append(f"--- end of its {name} ---\n" + "\n".join(text.splitlines()[-40:]))
        return "\n".join([super().__str__(), *said])


def run_checked(argv: list[str], **options: Any) -> subprocess.CompletedProcess[str]:
    """`subprocess.run` with the output captured as text; a non-zero exit raises
    `CommandFailed`, which shows the end of the output."""
    result = subprocess.run(argv, capture_output=True, text=True, **options)
    if result.returncode != 0:
        raise CommandFailed(result.returncode, argv, result.stdout, result.stderr)
    return result


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"(no log at {path}: {error.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def _wait_for_line(process: subprocess.Popen[str], prefix: str, timeout: float, log: Path) -> str:
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith(prefix):
            return line.strip()
        if not line and process.poll() is not None:
            raise TestbedError(
                f"{process.args[0]} exited with {process.returncode} before it was ready; "
                f"the end of its log {log}:\n{log_tail(log)}"
            )
    raise TestbedError(
        f"{process.args[0]} did not print {prefix!r} within {timeout} s; "
        f"the end of its log {log}:\n{log_tail(log)}"
    )


def stop_processes(processes: list[subprocess.Popen], grace_seconds: float = 15) -> None:
    """Stop each process's whole session, newest first: SIGTERM, then SIGKILL after the grace."""
    for process in reversed(processes):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    processes.clear()


def _fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split()[2:] if "=" in part)


@dataclass
class Testbed:
    state_dir: Path
    kubeconfig: Path = field(init=False)
    narrow_kubeconfig: Path = field(init=False)
    proxy_kubeconfig: Path = field(init=False)
    proxy_control: str = field(init=False)
    env: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    def cluster_script(self, command: str, timeout: float = 300) -> None:
        """Runs `cluster.sh <command>` for this testbed, its output in `cluster-<command>.log`
        (never this process's stdout, which may be a pipe nobody reads any more, as after a
        Ctrl-C of `make demo | tee`).

        The script runs in its own session, so a Ctrl-C at the terminal reaches only this
        process, which then stops the script with SIGTERM (its trap stops whatever it had
        started) and waits for it: an interrupted `up` leaves nothing running.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = self.state_dir / f"cluster-{command}.log"
        with open(log, "ab") as output:
            script = subprocess.Popen(
                [str(CLUSTER_SCRIPT), command],
                env=os.environ | {"PKR_CLUSTER_DIR": str(self.state_dir)},
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            try:
                code = script.wait(timeout=timeout)
            except BaseException:
                if script.poll() is None:
                    os.killpg(script.pid, signal.SIGTERM)
                    try:
                        script.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        os.killpg(script.pid, signal.SIGKILL)
                        script.wait()
                raise
        if code != 0:
            raise TestbedError(
                f"tests/testbed/cluster.sh {command} exited with {code}; the end of its output "
                f"({log}):\n{log_tail(log)}\ncomponent logs: {self.state_dir / 'logs'}"
            )

    def start(self) -> Testbed:
        self.cluster_script("up")
        self.env = dict(
            line.split("=", 1)
            for line in (self.state_dir / "cluster.env").read_text().splitlines()
            if "=" in line and not line.startswith("#")
        )
        self.env = {key: value.strip().strip("'\"") for key, value in self.env.items()}
        self.kubeconfig = self.state_dir / "kubeconfig"
        self.narrow_kubeconfig = self.state_dir / "kubeconfig-narrow"
        logs = self.state_dir / "logs"
        logs.mkdir(exist_ok=True)

        kubelet = self._spawn(
            [str(_binary("fake-kubelet")), "--kubeconfig", str(self.kubeconfig)],
            logs / "fake-kubelet.log",
            # Pods run commands such as `prefect flow-run execute`: this Python's environment
            # comes first on their PATH, as the image's would.
            env=os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        )
        _wait_for_line(kubelet, "fake-kubelet ready", 60, logs / "fake-kubelet.log")

        self.proxy_kubeconfig = self.state_dir / "kubeconfig-proxy"
        proxy = self._spawn(
            [
                str(_binary("fault-proxy")),
                "--kubeconfig",
                str(self.kubeconfig),
                "--write-kubeconfig",
                str(self.proxy_kubeconfig),
                # kubectl sends credentials only over TLS.
                "--tls",
            ],
            logs / "fault-proxy.log",
        )
        ready = _fields(_wait_for_line(proxy, "fault-proxy ready", 60, logs / "fault-proxy.log"))
        self.proxy_control = f"http://{ready['control']}"
        return self

    def _spawn(
        self, argv: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=open(log, "ab"),  # noqa: SIM115 - closed with the process
            text=True,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        stop_processes(self.processes)
        self.cluster_script("down", timeout=120)

    # --- helpers for tests ------------------------------------------------------------------

    def kubectl(self, *args: str, kubeconfig: Path | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
        argv = ["kubectl", "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        if check:
            return run_checked(argv, timeout=timeout)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def kubeconfig_dict(self, path: Path | None = None) -> dict[str, Any]:
        """A kubeconfig as data, as a `kubernetes-cluster-config` block holds it."""
        import yaml

        return yaml.safe_load((path or self.kubeconfig).read_text())

    def bound_token(self, namespace: str, account: str, holder: str) -> str:
        """A token of the service account `account` bound to the Secret `holder` (a
        TokenRequest, as the kubelet asks for a pod's projected token): deleting the Secret
        revokes the token, which is how a rotated token stops working."""
        secret = json.loads(
            self.kubectl("get", "secret", holder, "-n", namespace, "-o", "json").stdout
        )
        request = {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600, "boundObjectRef": {
                "kind": "Secret", "apiVersion": "v1", "name": holder,
                "uid": secret["metadata"]["uid"]}},
        }  # fmt: skip
        answer = run_checked(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), "create", "--raw",
             f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token", "-f", "-"],
            input=json.dumps(request),
        )  # fmt: skip
        return json.loads(answer.stdout)["status"]["token"]

    def proxy(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.proxy_control + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
        return json.loads(text) if text else None

    @contextmanager
    def proxy_rule(self, *rules: dict[str, Any]) -> Iterator[list[int]]:
        """Installs fault-proxy rules for the `with` block, deleting them after it, even on failure;
        gives their ids."""
        answer = self.proxy("POST", "/rules", list(rules))
        try:
            yield answer["ids"]
        finally:
            for rule in answer["ids"]:
                try:
                    self.proxy("DELETE", f"/rules/{rule}")
                except urllib.error.HTTPError as error:
                    if error.code != 404:  # a test may have ended it early
                        raise

    def proxy_rules_applied(self, ids: list[int]) -> list[int]:
        """How many requests each of these rules has changed so far."""
        rules = {entry["id"]: entry for entry in self.proxy("GET", "/rules")["rules"]}
        return [rules[rule]["applied"] for rule in ids]

    def restart_apiserver(self) -> None:
        """Restarts kube-apiserver alone, on the same port with the same flags (etcd keeps every
        object, the controller-manager keeps running); returns once it is ready again."""
        self.cluster_script("restart-apiserver", timeout=120)


def connections_to(port: int, pid: int) -> list[str]:
    """The established TCP connections of process `pid` to `port`, as `ss` shows them with
    their timers (`timer:(keepalive,...)` when the socket probes an idle peer)."""
    shown = subprocess.run(
        ["ss", "-tnpoH", "state", "established", f"( dport = :{port} )"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [line for line in shown.splitlines() if f"pid={pid}," in line]


def local_ports(connections: list[str]) -> list[int]:
    """The local ports of `ss` lines (`<recv-q> <send-q> <local> <peer> ...`)."""
    return [int(line.split()[2].rsplit(":", 1)[1]) for line in connections]


class SilencedConnections:
    """A packet filter rule (nftables) that drops every packet of some TCP connections on
    loopback, both ways and without a reset: what a load balancer does to a flow it forgot."""

    def __init__(self, server_port: int, client_ports: list[int]) -> None:
        self.table = f"pkr_silence_{os.getpid()}_{server_port}"
        ports = ", ".join(str(port) for port in client_ports)
        self.script = (
            f"table inet {self.table} {{\n"
            "  chain out {\n"
            "    type filter hook output priority 0; policy accept;\n"
            f"    tcp sport {{ {ports} }} tcp dport {server_port} drop\n"
            f"    tcp sport {server_port} tcp dport {{ {ports} }} drop\n"
            "  }\n"
            "}\n"
        )

    def __enter__(self) -> SilencedConnections:
        run_checked(["nft", "-f", "-"], input=self.script)
        return self

    def __exit__(self, *exc_info: object) -> None:
        run_checked(["nft", "delete", "table", "inet", self.table])


@dataclass
class HttpFaultProxy:
    """The testbed's fault proxy in front of a plain-HTTP server (e.g. Prefect's API): `url`
    reaches the server through it; rules are posted to its control API."""

    url: str
    control: str

    def add_rules(self, *rules: dict[str, Any]) -> list[int]:
        request = urllib.request.Request(
            self.control + "/rules",
            method="POST",
            data=json.dumps(list(rules)).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["ids"]

    def applied(self, ids: list[int]) -> list[int]:
        """How many requests each of these rules has changed so far."""
        with urllib.request.urlopen(self.control + "/rules", timeout=10) as response:
            rules = {entry["id"]: entry for entry in json.loads(response.read())["rules"]}
        return [rules[rule]["applied"] for rule in ids]


@contextmanager
def fault_proxy_in_front_of(origin: str, log: Path) -> Iterator[HttpFaultProxy]:
    """A fault proxy forwarding to `origin` (`http://host:port`), stopped after the block."""
    process = subprocess.Popen(
        [str(_binary("fault-proxy")), "--upstream", origin],
        stdout=subprocess.PIPE,
        stderr=open(log, "ab"),  # noqa: SIM115 - closed with the process
        text=True,
        start_new_session=True,
    )
    try:
        ready = _fields(_wait_for_line(process, "fault-proxy ready", 60, log))
        yield HttpFaultProxy(url=f"http://{ready['listen']}", control=f"http://{ready['control']}")
    finally:
        stop_processes([process])


async def create_prefect_job_history(
    testbed: Testbed, namespace: str, count: int, first_run_id: Any = None
) -> None:
    """`count` Prefect-labelled Jobs (`old-0`, `old-1`, ...) that run nothing (parallelism 0):
    a namespace's history, which the worker must never list. `old-0` belongs to the flow run
    `first_run_id` when given, the others to random ids."""
    from kubernetes_asyncio import client, config

    api_client = await config.new_client_from_config(config_file=str(testbed.kubeconfig))
    async with api_client:
        batch = client.BatchV1Api(api_client)
        semaphore = asyncio.Semaphore(40)

        def run_id(n: int) -> str:
            return str(first_run_id) if n == 0 and first_run_id is not None else str(uuid.uuid4())

        async def old_job(n: int) -> None:
            async with semaphore:
                await batch.create_namespaced_job(namespace, {
                    "apiVersion": "batch/v1", "kind": "Job",
                    "metadata": {"name": f"old-{n}",
                                 "labels": {"prefect.io/flow-run-id": run_id(n)}},
                    "spec": {"parallelism": 0, "template": {"spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "prefect-job", "image": "x"}]}}},
                })  # fmt: skip

        await asyncio.gather(*[old_job(n) for n in range(count)])


def api_requests(testbed: Testbed) -> dict[str, dict[str, int]]:
    """The requests the fault proxy passed since its counts were reset, by path pattern and
    verb, without pod logs (their count follows the flow's output)."""
    patterns = testbed.proxy("GET", "/counts")["patterns"]
    return {
        pattern: dict(verbs) for pattern, verbs in patterns.items() if not pattern.endswith("/log")
    }
