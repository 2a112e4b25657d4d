"""The harness itself: stacks start every time, stop completely, and say why when they fail.

A flaky start or a leaked process costs every later test run, so these are tested like the
worker: a second testbed started beside the session's (as `make demo` beside `make test`), a
start that fails, a start interrupted half-way, and `make demo` interrupted with its output
gone (`make demo | tee demo.log`, then Ctrl-C). `make test-repeat` runs the start 50 times.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import testbed_support
from testbed_support import CLUSTER_SCRIPT, CommandFailed, run_checked

ROOT = Path(__file__).resolve().parents[1]
MARK = "PKR_HARNESS_TEST_MARK"


def marked_processes(mark: str) -> list[str]:
    """The processes whose environment carries `MARK=mark` (everything a harness under test
    started inherits it: the control plane through `cluster.sh`, the fake kubelet, the Prefect
    server, workers), each as "<pid> <program> <command line>"."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            program = Path(os.readlink(entry / "exe")).name
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        found.append(f"{entry.name} {program} {command[:200]}")
    return found


def runs(mark: str, program: str) -> bool:
    return any(entry.split(" ", 2)[1] == program for entry in marked_processes(mark))


def wait_until_none_left(mark: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (left := marked_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, "processes left running:\n" + "\n".join(left)


def test_a_failing_command_shows_what_it_said():
    with pytest.raises(CommandFailed) as failure:
        run_checked(["sh", "-c", "echo the reason >&2; echo some output; exit 3"])
    text = str(failure.value)
    assert "returned non-zero exit status 3" in text
    assert "the reason" in text and "some output" in text


def test_a_failed_testbed_start_shows_the_scripts_output_and_where_the_logs_are(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("PKR_SKIP_BUILD", "1")
    monkeypatch.setenv("PKR_BIN_DIR", str(tmp_path / "no-binaries"))
    bed = testbed_support.Testbed(tmp_path / "cluster")
    with pytest.raises(testbed_support.TestbedError) as failure:
        bed.start()
    text = str(failure.value)
    assert "cluster.sh up exited with 1" in text
    assert f"{tmp_path / 'no-binaries'}/kube-apiserver is missing" in text
    assert str(tmp_path / "cluster" / "cluster-up.log") in text
    assert str(tmp_path / "cluster" / "logs") in text


@pytest.mark.cluster
def test_a_second_testbed_starts_while_another_runs_and_stops_completely(
    testbed, tmp_path, monkeypatch
):
    """What the first start after `/readyz` uses is there: the system namespaces, the narrow
    user's Role; `stop()` leaves no process behind. `make test-repeat` runs this 50 times."""
    mark = uuid.uuid4().hex
    monkeypatch.setenv(MARK, mark)
    bed = testbed_support.Testbed(tmp_path / "cluster")
    try:
        bed.start()
        for namespace in ("default", "kube-system"):
            bed.kubectl("get", "namespace", namespace)
        allowed = bed.kubectl(
            "auth", "can-i", "list", "jobs", "-n", "default", kubeconfig=bed.narrow_kubeconfig
        )
        assert allowed.stdout.strip() == "yes"
        assert testbed.env["PKR_APISERVER_URL"] != bed.env["PKR_APISERVER_URL"]
    finally:
        bed.stop()
    wait_until_none_left(mark)
    testbed.kubectl("get", "namespace", "default")  # the other stack is untouched


@pytest.mark.cluster
def test_an_interrupted_cluster_start_stops_what_it_had_started(testbed, tmp_path):
    """Ctrl-C while `make cluster-up` starts (after etcd, before the controller-manager), its
    output unread: the script stops etcd and kube-apiserver before it exits. (It once died of
    SIGPIPE, status -13, writing its next line into the closed pipe before the Ctrl-C came.)"""
    mark = uuid.uuid4().hex
    state = tmp_path / "cluster"
    script = subprocess.Popen(
        [str(CLUSTER_SCRIPT), "up"],
        env=os.environ | {MARK: mark, "PKR_CLUSTER_DIR": str(state)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not runs(mark, "kube-apiserver"):
            assert script.poll() is None, "cluster.sh up ended before starting kube-apiserver"
            assert time.monotonic() < deadline, "kube-apiserver never started"
            time.sleep(0.05)
        assert script.stdout is not None
        script.stdout.close()  # nobody reads its output any more
        os.killpg(script.pid, signal.SIGINT)
        assert script.wait(timeout=60) == 130
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
    wait_until_none_left(mark)


def start_demo(mark: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "demo" / "run_demo.py")],
        env=os.environ
        | {
            MARK: mark,
            "TMPDIR": str(tmp_path),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        },
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def read_until(process: subprocess.Popen[bytes], text: str, timeout: float = 300) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    seen = b""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        seen += line
        if text.encode() in line:
            return
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"the demo never printed {text!r}:\n{seen.decode(errors='replace')}")


@pytest.mark.cluster
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("how", "when"),
    [
        ("Ctrl-C", "Starting the local Kubernetes control plane"),
        ("SIGTERM", "Worker up"),
    ],
)
def test_the_demo_stops_everything_when_interrupted_with_its_output_gone(
    testbed, tmp_path, how, when
):
    """`make demo | tee demo.log`, then Ctrl-C (SIGINT to the whole process group, as a
    terminal sends it; `tee` is gone, so every later write of the demo fails) while the control
    plane starts; or `kill <pid>` once the worker is up."""
    mark = uuid.uuid4().hex
    demo = start_demo(mark, tmp_path)
    try:
        read_until(demo, when)
        if how == "Ctrl-C":
            deadline = time.monotonic() + 120
            while not runs(mark, "kube-apiserver"):
                assert demo.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        assert demo.stdout is not None
        demo.stdout.close()
        if how == "Ctrl-C":
            os.killpg(demo.pid, signal.SIGINT)
        else:
            demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=120) != 0
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    wait_until_none_left(mark)


@pytest.mark.cluster
def test_cluster_up_on_a_running_stack_leaves_it_running(testbed, tmp_path):
    """`make cluster-up` twice: the second says the stack is up and leaves it as it is."""
    bed = testbed_support.Testbed(tmp_path / "cluster")
    try:
        bed.cluster_script("up")
        bed.cluster_script("up")
        assert "already up" in (tmp_path / "cluster" / "cluster-up.log").read_text()
        status = subprocess.run(
            [str(CLUSTER_SCRIPT), "status"],
            env=os.environ | {"PKR_CLUSTER_DIR": str(bed.state_dir)},
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stdout
    finally:
        bed.cluster_script("down")


@pytest.mark.cluster
def test_make_cluster_up_gives_a_node_that_runs_a_job_and_cluster_down_stops_it(testbed, tmp_path):
    """As a new user tries the README: `make cluster-up`, a Job with kubectl, which runs to
    completion on the fake kubelet's node; `make cluster-down` stops the node too."""
    mark = uuid.uuid4().hex
    state = tmp_path / "cluster"
    env = os.environ | {MARK: mark, "PKR_CLUSTER_DIR": str(state)}
    make = ["make", "--no-print-directory", "-C", str(ROOT)]
    try:
        run_checked([*make, "cluster-up"], env=env)
        assert runs(mark, "fake-kubelet"), marked_processes(mark)
        status = subprocess.run(
            [str(CLUSTER_SCRIPT), "status"], env=env, capture_output=True, text=True, check=False
        )
        assert status.returncode == 0 and "fake-kubelet pid" in status.stdout, status.stdout
        kubeconfig = str(state / "kubeconfig")
        kubectl = ["kubectl", "--kubeconfig", kubeconfig]
        run_checked([*kubectl, "create", "job", "hello", "--image=busybox", "--", "echo", "hi"])
        run_checked([*kubectl, "wait", "--for=condition=complete", "job/hello", "--timeout=90s"])
        logs = run_checked([*kubectl, "logs", "job/hello"])
        assert logs.stdout.strip() == "hi"
    finally:
        subprocess.run([*make, "cluster-down"], env=env, capture_output=True, check=False)
    wait_until_none_left(mark)
