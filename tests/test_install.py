"""A new user's first steps, for real: install the built wheel into a fresh virtual
environment, ask Prefect's CLI for the template, and create work pools on a real Prefect server.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
import tomllib
from prefect_kubernetes import worker as oracle
from testbed_support import run_checked

from prefect_kubernetes_rs.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

# Builds the wheel and starts Prefect servers: left out of `make test-fast`.
pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The platform the release wheel is built for: glibc 2.17 and newer (manylinux2014).
WHEEL_PLATFORM = "manylinux_2_17_x86_64"


@pytest.fixture(scope="module")
def release_files() -> dict[str, Path]:
    """The wheel and sdist `make wheel` builds (a no-op when they are up to date)."""
    run_checked(["make", "--no-print-directory", "wheel"], cwd=ROOT)
    (wheel,) = (ROOT / "dist").glob("prefect_kubernetes_rs-*.whl")
    (sdist,) = (ROOT / "dist").glob("prefect_kubernetes_rs-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_the_release_wheel_is_abi3_and_loads_on_glibc_2_17(release_files, tmp_path):
    """One wheel for CPython 3.10 and newer on any x86_64 Linux with glibc 2.17 or newer
    (RHEL/CentOS 7, Amazon Linux 2, Debian 9, Ubuntu 16.04 and later), so `pip install` never
    falls back to a source build that needs a Rust toolchain there."""
    wheel = release_files["wheel"]
    assert "-cp310-abi3-" in wheel.name, wheel.name
    assert WHEEL_PLATFORM in wheel.name, wheel.name
    auditwheel = Path(sys.executable).with_name("auditwheel")
    shown = run_checked([str(auditwheel), "show", str(wheel)]).stdout
    assert f'consistent with the following platform tag: "{WHEEL_PLATFORM}"' in " ".join(
        shown.split()
    ), shown
    # The extension's own view: no symbol of a glibc newer than 2.17 is needed.
    with zipfile.ZipFile(wheel) as archive:
        (library,) = [name for name in archive.namelist() if name.endswith(".abi3.so")]
        extracted = Path(archive.extract(library, tmp_path))
    symbols = run_checked(["objdump", "-T", str(extracted)]).stdout
    versions = {tuple(map(int, v.split("."))) for v in re.findall(r"GLIBC_(\d+\.\d+)", symbols)}
    assert versions and max(versions) <= (2, 17), sorted(versions)


def test_the_sdist_holds_a_workspace_cargo_can_load(release_files, tmp_path):
    """Where no wheel fits (another CPU, musl), pip builds from the sdist: it must carry the
    core crate and a Cargo workspace that loads offline with its lock file."""
    with tarfile.open(release_files["sdist"]) as archive:
        archive.extractall(tmp_path, filter="data")
    (root,) = tmp_path.iterdir()
    for needed in ("pyproject.toml", "Cargo.toml", "Cargo.lock", "core/Cargo.toml",
                   "core/src/lib.rs", "src/lib.rs", "python/prefect_kubernetes_rs/worker.py",
                   "python/prefect_kubernetes_rs/_core.pyi"):  # fmt: skip
        assert (root / needed).is_file(), needed
    # The sdist's workspace has only the package's crates (maturin drops the testbed's), so
    # cargo trims the lock's extra entries; what it resolves must all be pinned by the lock
    # (offline: from the crates the wheel's build already fetched).
    pinned = {
        (p["name"], p["version"])
        for p in tomllib.loads((root / "Cargo.lock").read_text())["package"]
    }
    metadata = run_checked(["cargo", "metadata", "--offline", "--format-version", "1"], cwd=root)
    resolved = {(p["name"], p["version"]) for p in json.loads(metadata.stdout)["packages"]}
    assert resolved <= pinned, sorted(resolved - pinned)
    packages = {package["name"] for package in json.loads(metadata.stdout)["packages"]}
    assert {"prefect-kubernetes-rs", "prefect-kubernetes-rs-core"} <= packages, packages


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory, release_files) -> Path:
    """A virtual environment with nothing but `pip install <our release wheel>`."""
    workdir = tmp_path_factory.mktemp("install")
    wheel = release_files["wheel"]
    venv = workdir / "venv"
    # A Python outside our venv, as a user's would be.
    base_python = getattr(sys, "_base_executable", sys.executable)
    run_checked([base_python, "-m", "venv", str(venv)])
    run_checked(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(wheel)]
    )
    return venv


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("prefect-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    return env


@pytest.fixture(scope="module")
def prefect_server(fresh_venv: Path, cli_env: dict[str, str]):
    port = free_port()
    log = open(Path(cli_env["PREFECT_HOME"]) / "server.log", "wb")
    server = subprocess.Popen(
        [str(fresh_venv / "bin" / "prefect"), "server", "start", "--host", "127.0.0.1",
         "--port", str(port)],
        env=cli_env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    api_url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{api_url}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    text = (Path(cli_env["PREFECT_HOME"]) / "server.log").read_text()[-3000:]
                    pytest.fail(f"prefect server did not become healthy:\n{text}")
                time.sleep(0.5)
        yield api_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def prefect(venv: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "prefect"), *args],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_cli_prints_the_default_template(fresh_venv: Path, cli_env: dict[str, str]):
    result = prefect(
        fresh_venv, cli_env, "work-pool", "get-default-base-job-template", "--type", "kubernetes-rs"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == KubernetesWorker.get_default_base_job_template()


def test_cli_creates_a_pool_of_our_type(fresh_venv, cli_env, prefect_server):
    env = cli_env | {"PREFECT_API_URL": prefect_server}
    result = prefect(fresh_venv, env, "work-pool", "create", "rs-pool", "--type", "kubernetes-rs")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Created work pool 'rs-pool'" in result.stdout
    with urllib.request.urlopen(f"{prefect_server}/work_pools/rs-pool") as response:
        pool = json.load(response)
    assert pool["type"] == "kubernetes-rs"
    assert pool["base_job_template"] == KubernetesWorker.get_default_base_job_template()


async def test_a_template_copied_from_a_kubernetes_pool_is_accepted(
    fresh_venv, cli_env, prefect_server, tmp_path, flow_run, no_api_client
):
    copied = tmp_path / "kubernetes-template.json"
    copied.write_text(json.dumps(oracle.KubernetesWorker.get_default_base_job_template()))
    env = cli_env | {"PREFECT_API_URL": prefect_server}
    result = prefect(
        fresh_venv, env, "work-pool", "create", "copied", "--type", "kubernetes-rs",
        "--base-job-template", str(copied),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    with urllib.request.urlopen(f"{prefect_server}/work_pools/copied") as response:
        template = json.load(response)["base_job_template"]

    values = {"image": "flows:1", "env": {"A": "1"}, "labels": {"team": "data"}}
    ours = await KubernetesWorkerJobConfiguration.from_template_and_values(
        copy.deepcopy(template), values, client=no_api_client
    )
    theirs = await oracle.KubernetesWorkerJobConfiguration.from_template_and_values(
        copy.deepcopy(template), values, client=no_api_client
    )
    for configuration in (ours, theirs):
        configuration.prepare_for_flow_run(flow_run)
    assert ours.job_manifest == theirs.job_manifest


QUICKSTART_FLOW = """
from prefect import flow


@flow(log_prints=True)
def hello(name: str = "Kubernetes"):
    print(f"Hello, {name}!")


if __name__ == "__main__":
    flow.from_source(source=SOURCE, entrypoint="flows.py:hello").deploy(
        name="hello", work_pool_name="my-pool"
    )
"""


@pytest.mark.cluster
def test_the_readme_quickstart_runs_a_flow_on_the_cluster(
    fresh_venv, cli_env, prefect_server, testbed, tmp_path
):
    """The README's "Install and run on a real cluster" steps, in a venv holding only our wheel,
    with the testbed as the cluster (through KUBECONFIG, as a user's laptop would have it). The
    flow's source is a local directory instead of a git repository: the pods run on this machine.
    """
    env = {key: value for key, value in cli_env.items() if key != "PREFECT_LOGGING_LEVEL"} | {
        "PREFECT_API_URL": prefect_server,
        "KUBECONFIG": str(testbed.kubeconfig),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "COLUMNS": "500",
    }
    result = prefect(fresh_venv, env, "work-pool", "create", "my-pool", "--type", "kubernetes-rs")
    assert result.returncode == 0, result.stdout + result.stderr

    worker_log = tmp_path / "worker.log"
    with open(worker_log, "wb") as log:
        worker = subprocess.Popen(
            [str(fresh_venv / "bin" / "prefect"), "worker", "start", "--pool", "my-pool",
             "--type", "kubernetes-rs"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        flows = tmp_path / "project"
        flows.mkdir()
        (flows / "flows.py").write_text(QUICKSTART_FLOW.replace("SOURCE", repr(str(flows)), 1))
        deployed = subprocess.run(
            [str(fresh_venv / "bin" / "python"), "flows.py"],
            cwd=flows, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        ran = prefect(
            fresh_venv, env, "deployment", "run", "hello/hello", "--param", "name=README",
            "--watch", "--watch-timeout", "240",
        )  # fmt: skip
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "Completed" in ran.stdout, ran.stdout
        deadline = time.monotonic() + 60
        while "Hello, README!" not in worker_log.read_text(errors="replace"):
            assert time.monotonic() < deadline, worker_log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
    finally:
        from testbed_support import stop_processes

        stop_processes([worker])
