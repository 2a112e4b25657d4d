"""Security as a user relies on it: TLS is verified unless the kubeconfig says otherwise, a
rotated token file is read again, and secret values never show anywhere the worker writes.

All against the testbed (`cluster`), driving `KubernetesWorker.run()` as `test_lifecycle.py` does.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import http.server
import json
import logging
import threading
import time
import uuid

import pytest
from prefect.exceptions import InfrastructureError, InfrastructureNotAvailable
from test_bad_input import refusal
from test_lifecycle import (  # the lifecycle tests' way of driving a run, shared
    TaskStatus,
    Worker,
    block,
    captured_events,  # noqa: F401 - fixture: the Prefect events the worker emits
    configuration_for,
    jobs_of,
    new_flow_run,
    no_prefect_server,  # noqa: F401 - autouse fixture: no Prefect server in these tests
    pods_of,
    scripted,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


def cluster_of(config: dict) -> dict:
    return config["config"]["clusters"][0]["cluster"]


async def refused(cluster_config: dict) -> str:
    """The error text of a run against this cluster config: the cluster is not available."""
    error = await asyncio.wait_for(refusal(cluster_config), timeout=60)
    assert isinstance(error, InfrastructureNotAvailable)
    return str(error)


async def runs(cluster_config: dict) -> int:
    async with Worker("tls") as worker:
        flow_run = new_flow_run()
        configuration = await configuration_for(flow_run, cluster_config, annotations=scripted())
        result = await worker.run(flow_run, configuration, task_status=TaskStatus())
    return result.status_code


def another_ca() -> str:
    """A self-signed CA that did not sign the API server's certificate, as kubeconfig data."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not-the-cluster-ca")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return base64.b64encode(certificate.public_bytes(serialization.Encoding.PEM)).decode()


async def test_a_server_that_speaks_no_tls_is_refused_with_a_hint(testbed):
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = block(testbed)
        cluster_of(config)["server"] = f"https://127.0.0.1:{server.server_address[1]}"
        message = await refused(config)
    finally:
        server.shutdown()
    port = server.server_address[1]
    assert f"Unable to reach the Kubernetes API server https://127.0.0.1:{port}/" in message
    assert "hint: the server did not answer with TLS: point the kubeconfig's server URL" in message


async def test_a_certificate_that_does_not_verify_is_refused_unless_told_to_skip(testbed):
    config = block(testbed)
    cluster_of(config)["certificate-authority-data"] = another_ca()
    message = await refused(config)
    assert "invalid peer certificate: UnknownIssuer" in message
    assert "hint: the server's certificate does not verify against the kubeconfig's " in message

    cluster_of(config)["insecure-skip-tls-verify"] = True
    assert await runs(config) == 0


async def test_tls_is_verified_by_default(testbed):
    """Without a CA in the kubeconfig the system's CAs apply, and they do not know the cluster."""
    config = block(testbed)
    del cluster_of(config)["certificate-authority-data"]
    assert "invalid peer certificate: UnknownIssuer" in await refused(config)

    cluster_of(config)["insecure-skip-tls-verify"] = True
    assert await runs(config) == 0


async def test_a_certificate_for_another_name_is_refused(testbed):
    config = block(testbed)
    cluster_of(config)["tls-server-name"] = "not-in-the-cert.example"
    message = await refused(config)
    assert 'certificate not valid for name "not-in-the-cert.example"' in message
    assert "hint: the server's certificate is not valid for the host name" in message


def accepted(testbed, token: str) -> bool:
    answer = testbed.kubectl("get", "jobs", "-n", "default", "--token", token, check=False)
    return answer.returncode == 0


@pytest.mark.timeout(240)
async def test_a_rotated_token_file_is_read_again(testbed, tmp_path):
    """A kubeconfig user with `tokenFile` (as the in-cluster service account is read): the old
    token is revoked after the file changes, and the same worker keeps creating Jobs."""
    account = f"rotator-{uuid.uuid4().hex[:6]}"
    testbed.kubectl("create", "serviceaccount", account)
    testbed.kubectl(
        "create", "rolebinding", account, "--role=pkr-narrow", f"--serviceaccount=default:{account}"
    )
    for holder in (f"{account}-1", f"{account}-2"):
        testbed.kubectl("create", "secret", "generic", holder)
    token_file = tmp_path / "token"
    old_token = testbed.bound_token("default", account, f"{account}-1")
    token_file.write_text(old_token)
    config = block(testbed)
    config["config"]["users"][0]["user"] = {"tokenFile": str(token_file)}

    async with Worker("rotation") as worker:
        first = new_flow_run()
        started = time.monotonic()
        result = await worker.run(
            first, await configuration_for(first, config, annotations=scripted()), TaskStatus()
        )
        assert result.status_code == 0

        token_file.write_text(testbed.bound_token("default", account, f"{account}-2"))
        testbed.kubectl("delete", "secret", f"{account}-1")
        for _ in range(50):
            if not accepted(testbed, old_token):
                break
            await asyncio.sleep(0.2)
        assert not accepted(testbed, old_token), "the old token is revoked"

        # kube-rs reads a token file again when the token it holds is 50 s old.
        await asyncio.sleep(max(0.0, 52 - (time.monotonic() - started)))
        second = new_flow_run()
        result = await worker.run(
            second, await configuration_for(second, config, annotations=scripted()), TaskStatus()
        )
        assert result.status_code == 0
        assert len(jobs_of(testbed, second)) == 1


async def test_secret_values_appear_nowhere(
    testbed,
    monkeypatch,
    capfd,
    caplog,
    captured_events,  # noqa: F811 - the fixture imported above
):
    """With the API key and the auth string kept in Secrets, neither value shows in the logs,
    the worker's output, the Job or pod, their Events, the Prefect events or an error."""
    api_key = "pnu_" + uuid.uuid4().hex
    auth_string = "admin:" + uuid.uuid4().hex
    secrets = [api_key, auth_string]
    auth_secret = f"prefect-auth-{uuid.uuid4().hex[:6]}"
    testbed.kubectl(
        "create", "secret", "generic", auth_secret, f"--from-literal=auth={auth_string}"
    )
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KUBERNETES_WORKER_CREATE_SECRET_FOR_API_KEY", "true")
    monkeypatch.setenv(
        "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME", auth_secret
    )
    monkeypatch.setenv("PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_KEY", "auth")
    caplog.set_level(logging.DEBUG)
    env = {"PREFECT_API_KEY": api_key, "PREFECT_API_AUTH_STRING": auth_string}
    seen: list[str] = []

    async with Worker("secret-keeper") as worker:
        flow_run = new_flow_run()
        configuration = await configuration_for(
            flow_run, block(testbed), env=env,
            command="sh -c 'test -n \"$PREFECT_API_KEY\" && test -n \"$PREFECT_API_AUTH_STRING\" "
                    "&& echo both-credentials-present'",
        )  # fmt: skip
        result = await worker.run(flow_run, configuration, task_status=TaskStatus())
        assert result.status_code == 0
        (job,) = jobs_of(testbed, flow_run)
        seen.append(json.dumps(job))
        seen.append(json.dumps(pods_of(testbed, job["metadata"]["name"])))
        seen.append(testbed.kubectl("get", "events", "-n", "default", "-o", "json").stdout)
        seen.append(testbed.kubectl("describe", "job", job["metadata"]["name"]).stdout)

        refused_run = new_flow_run()
        refused = await configuration_for(refused_run, block(testbed), env=env, cpu_limit="x")
        with pytest.raises(InfrastructureError) as caught:
            await worker.run(refused_run, refused, task_status=TaskStatus())
        seen.append(repr(caught.value) + str(caught.value.__cause__))

    env_entries = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env_entries["PREFECT_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "value"
    assert env_entries["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"] == {
        "name": auth_secret, "key": "auth"
    }  # fmt: skip
    output = capfd.readouterr()
    assert "both-credentials-present" in output.out, "the pod got both through the Secrets"
    seen += [output.out, output.err, caplog.text]
    seen += [event.model_dump_json() for event in captured_events]
    everything = "\n".join(seen)
    assert len(everything) > 10_000, "the capture is not empty"
    for value in secrets:
        encoded = base64.b64encode(value.encode()).decode()
        assert value not in everything and encoded not in everything
