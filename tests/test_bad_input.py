"""Bad input, as a user meets it: every case is refused with an error that names the problem and
what to do, and nothing of a refused run stays in the cluster (no Job, no Secret).

Cases that need no API server run without the testbed; the others (marked `cluster`) drive
`KubernetesWorker.run()` against it as `test_lifecycle.py` does.
"""

from __future__ import annotations

import copy
import json
import uuid

import pytest
from prefect.exceptions import InfrastructureError, InfrastructureNotAvailable
from pydantic import ValidationError
from test_lifecycle import (  # the lifecycle tests' way of driving a run, shared
    TaskStatus,
    Worker,
    block,
    configuration_for,
    new_flow_run,
    no_prefect_server,  # noqa: F401 - autouse fixture: no Prefect server in these tests
    scripted,
)

from prefect_kubernetes_rs.exceptions import ManifestError
from prefect_kubernetes_rs.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

TEMPLATE = KubernetesWorker.get_default_base_job_template()
CREATE_SECRET = "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_CREATE_SECRET_FOR_API_KEY"


async def render(values: dict, template: dict | None = None) -> KubernetesWorkerJobConfiguration:
    return await KubernetesWorkerJobConfiguration.from_template_and_values(
        copy.deepcopy(template or TEMPLATE), values
    )


def template_with(edit) -> dict:
    template = copy.deepcopy(TEMPLATE)
    edit(template["job_configuration"]["job_manifest"])
    return template


def leftovers(testbed, namespace: str = "default") -> dict[str, set[str]]:
    """The Jobs and Secrets in a namespace, by name (service-account token Secrets aside)."""
    found = {}
    for kind in ("jobs", "secrets"):
        items = json.loads(testbed.kubectl("get", kind, "-n", namespace, "-o", "json").stdout)
        found[kind] = {
            item["metadata"]["name"]
            for item in items["items"]
            if item.get("type") != "kubernetes.io/service-account-token"
        }
    return found


async def refusal(cluster_config: dict | None, before_teardown=None, **values) -> BaseException:
    """What `run()` raises for a flow run the worker or the cluster refuses; no run may start.

    `before_teardown` looks at the cluster while the worker still runs.
    """
    async with Worker("refused") as worker:
        flow_run = new_flow_run()
        configuration = await configuration_for(flow_run, cluster_config, **values)
        status = TaskStatus()
        with pytest.raises(Exception) as caught:
            await worker.run(flow_run, configuration, task_status=status)
        if before_teardown is not None:
            before_teardown()
    assert status.pid is None, "no run was started"
    return caught.value


# --- templates ------------------------------------------------------------------------------


async def test_a_template_given_as_json_text_is_refused_with_the_way_to_get_a_valid_one():
    with pytest.raises(ManifestError) as caught:
        await KubernetesWorkerJobConfiguration.from_template_and_values(json.dumps(TEMPLATE), {})
    message = str(caught.value)
    assert "must be a mapping with a 'job_configuration' mapping" in message
    assert "prefect work-pool get-default-base-job-template --type kubernetes-rs" in message


async def test_a_template_holding_something_that_is_not_json_is_refused():
    def annotate_with_an_object(manifest):
        manifest["metadata"]["annotations"] = {"owner": object()}

    with pytest.raises(ManifestError, match="job template must be JSON-compatible data") as caught:
        await render({}, template_with(annotate_with_an_object))
    assert "unsupported type object" in str(caught.value)


async def test_a_job_manifest_that_is_not_a_mapping_names_the_field():
    template = copy.deepcopy(TEMPLATE)
    template["job_configuration"]["job_manifest"] = ["not", "a", "job"]
    with pytest.raises(ValidationError) as caught:
        await render({}, template)
    (error,) = caught.value.errors()
    assert error["loc"] == ("job_manifest",) and error["type"] == "dict_type"


async def test_placeholders_for_undeclared_variables_are_refused_by_the_work_pool():
    """Prefect's server refuses such a template when the pool is created or updated, naming the
    variable; a template that reaches the worker anyway follows Prefect's rules (the key is
    dropped) and a required attribute left empty is named by its path."""
    from prefect.server.schemas.actions import WorkPoolCreate

    def typo(manifest):
        manifest["spec"]["template"]["spec"]["serviceAccountName"] = "{{ service_acount_name }}"

    with pytest.raises(ValidationError, match="undeclared variable\\(s\\): service_acount_name"):
        WorkPoolCreate(name="pool", type="kubernetes-rs", base_job_template=template_with(typo))
    configuration = await render({"service_account_name": "runner"}, template_with(typo))
    assert "serviceAccountName" not in configuration.job_manifest["spec"]["template"]["spec"]

    def container_name_from_a_variable(manifest):
        manifest["spec"]["template"]["spec"]["containers"][0]["name"] = "{{ container_name }}"

    with pytest.raises(ValidationError, match="/spec/template/spec/containers/0/name"):
        await render({}, template_with(container_name_from_a_variable))


async def test_job_variables_of_the_wrong_type_name_the_variable():
    """The server checks job variables against the pool's variables schema; fields of the job
    configuration itself are checked by pydantic when the worker builds it."""
    from prefect.utilities.schema_tools import ValidationError as SchemaError
    from prefect.utilities.schema_tools import validate

    with pytest.raises(SchemaError, match="'many' is not of type 'integer'") as caught:
        validate({"backoff_limit": "many"}, TEMPLATE["variables"], raise_on_error=True)
    assert "backoff_limit" in str(caught.value)

    with pytest.raises(ValidationError) as caught:
        await render({"pod_watch_timeout_seconds": "soon"})
    (error,) = caught.value.errors()
    assert error["loc"] == ("pod_watch_timeout_seconds",) and error["input"] == "soon"


@pytest.mark.parametrize("key", ["///", "", "-", "Ünïcödé/☃"])
async def test_label_keys_that_cannot_be_made_valid_are_named(key):
    configuration = await render({"labels": {key: "v"}})
    with pytest.raises(ManifestError) as caught:
        configuration.prepare_for_flow_run(new_flow_run())
    message = str(caught.value)
    assert message.startswith(f"label key {json.dumps(key, ensure_ascii=False)} cannot be made")
    assert "use an optional DNS-subdomain prefix and '/', then at most 63 letters" in message


async def test_names_over_kubernetes_limits_are_shortened_to_fit():
    configuration = await render(
        {"name": "n" * 300, "labels": {"team." * 60 + "io/" + "k" * 80: "v" * 100}}
    )
    configuration.prepare_for_flow_run(new_flow_run())
    metadata = configuration.job_manifest["metadata"]
    assert len(metadata["generateName"]) <= 63
    ((key, value),) = [(k, v) for k, v in metadata["labels"].items() if k.startswith("team.")]
    prefix, name = key.split("/")
    assert len(prefix) <= 253 and len(name) <= 63 and len(value) <= 63


# --- templates that only the cluster can refuse -------------------------------------------


@pytest.mark.cluster
async def test_names_over_kubernetes_limits_make_a_job_kubernetes_accepts(testbed):
    async with Worker("long-names") as worker:
        flow_run = new_flow_run()
        configuration = await configuration_for(
            flow_run, block(testbed), name="n" * 300,
            labels={"team." * 60 + "io/" + "k" * 80: "v" * 100},
            annotations={"a" * 300: "kept"} | scripted(),
        )  # fmt: skip
        result = await worker.run(flow_run, configuration, task_status=TaskStatus())
    assert result.status_code == 0


@pytest.mark.cluster
async def test_a_namespace_that_does_not_exist_is_named_and_nothing_is_left(testbed, monkeypatch):
    monkeypatch.setenv(CREATE_SECRET, "true")
    error = await refusal(block(testbed), namespace="nowhere", env={"PREFECT_API_KEY": "pnu_x"})
    assert isinstance(error, InfrastructureError)
    message = str(error)
    assert "in namespace 'nowhere': NotFound: " in message
    assert "Hint: Create the namespace 'nowhere' or point the work pool at an existing one" in (
        message
    )
    assert testbed.kubectl("get", "namespace", "nowhere", check=False).returncode != 0


@pytest.mark.cluster
async def test_a_job_the_api_refuses_leaves_no_job_and_no_secret(testbed, monkeypatch):
    """The worker created a Secret for the API key, then the API refused the Job: the Secret
    goes too, and the error names the field Kubernetes refused."""
    monkeypatch.setenv(CREATE_SECRET, "true")
    before = leftovers(testbed)

    def nothing_left():
        assert leftovers(testbed) == before, "nothing of the refused run stays"

    error = await refusal(
        block(testbed), nothing_left, cpu_limit="lots", env={"PREFECT_API_KEY": "pnu_refused"}
    )
    assert isinstance(error, InfrastructureError)
    message = str(error)
    assert message.startswith("Unable to create Kubernetes job: BadRequest: ")
    assert "quantities must match the regular expression" in message


@pytest.mark.cluster
async def test_a_refused_job_keeps_the_secret_another_run_uses(testbed, monkeypatch):
    import asyncio

    monkeypatch.setenv(CREATE_SECRET, "true")
    api_key = {"PREFECT_API_KEY": "pnu_shared"}
    async with Worker("shared-secret") as worker:
        running_run = new_flow_run()
        running = asyncio.create_task(
            worker.run(
                running_run,
                await configuration_for(
                    running_run,
                    block(testbed),
                    env=api_key,
                    command="sh -c 'sleep 2; test \"$PREFECT_API_KEY\" = pnu_shared'",
                ),  # fmt: skip
                task_status=TaskStatus(),
            )
        )
        while not worker._created_secrets:
            await asyncio.sleep(0.05)
        refused_run = new_flow_run()
        refused = await configuration_for(refused_run, block(testbed), env=api_key, cpu_limit="x")
        with pytest.raises(InfrastructureError):
            await worker.run(refused_run, refused, task_status=TaskStatus())
        ((_, secret_name),) = worker._created_secrets
        assert testbed.kubectl("get", "secret", secret_name, check=False).returncode == 0
        result = await asyncio.wait_for(running, 60)
        assert result.status_code == 0, "the running flow still read its key from the Secret"
    # A Secret a run used outlives the worker: a pod that retries later still needs it.
    assert testbed.kubectl("get", "secret", secret_name, check=False).returncode == 0
    testbed.kubectl("delete", "secret", secret_name)


@pytest.mark.cluster
async def test_a_variable_of_the_wrong_type_reaching_the_cluster_is_named(testbed):
    """Without a Prefect server to check job variables, Kubernetes names the field."""
    before = leftovers(testbed)
    error = await refusal(block(testbed), backoff_limit="many")
    assert isinstance(error, InfrastructureError)
    assert str(error).startswith("Unable to create Kubernetes job: BadRequest: ")
    assert "BackoffLimit" in str(error) and '"backoffLimit":"many"' in str(error)
    assert leftovers(testbed) == before


@pytest.mark.cluster
async def test_one_mebibyte_of_env_reaches_the_flow_process(testbed, capsys):
    big = {f"VAR_{i}": f"{i:04d}" + "x" * 1020 for i in range(1024)}
    async with Worker("big-env") as worker:
        flow_run = new_flow_run()
        configuration = await configuration_for(
            flow_run, block(testbed), env=big,
            command="sh -c 'echo count=$(env | grep -c ^VAR_) last=${#VAR_1023}'",
        )  # fmt: skip
        result = await worker.run(flow_run, configuration, task_status=TaskStatus())
    assert result.status_code == 0
    assert "count=1024 last=1024" in capsys.readouterr().out


@pytest.mark.cluster
async def test_an_env_too_large_for_kubernetes_gets_a_size_hint(testbed):
    before = leftovers(testbed)
    error = await refusal(block(testbed), env={f"VAR_{i}": "x" * 1024 for i in range(1600)})
    assert isinstance(error, InfrastructureError)
    message = str(error)
    assert message.startswith("Unable to create Kubernetes job: ")
    assert "Hint: The Job manifest is 1.6 MiB; Kubernetes stores objects of at most about" in (
        message
    )
    assert "Move large env values into a ConfigMap or Secret" in message
    assert leftovers(testbed) == before


# --- cluster configuration ------------------------------------------------------------------


async def test_a_kubeconfig_file_that_is_not_yaml_is_named(tmp_path, monkeypatch):
    garbage = tmp_path / "kubeconfig"
    garbage.write_text("{{{ clusters: [nope\n")
    monkeypatch.setenv("KUBECONFIG", str(garbage))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    error = await refusal(None)
    assert isinstance(error, InfrastructureNotAvailable)
    message = str(error)
    assert f"configuration from the kubeconfig {garbage} (KUBECONFIG)" in message
    assert "failed to parse kubeconfig YAML" in message and "line 1" in message
    assert "not running in a cluster either" in message


async def test_a_cluster_config_that_is_not_a_kubeconfig_is_named():
    with pytest.raises(ValidationError) as caught:
        await configuration_for(new_flow_run(), {"config": "clusters: [", "context_name": "x"})
    assert caught.value.errors()[0]["loc"] == ("cluster_config", "config")

    error = await refusal({"config": {"clusters": "nope"}, "context_name": "x"})
    assert isinstance(error, InfrastructureNotAvailable)
    assert str(error) == (
        "cannot use the Kubernetes configuration from the work pool's cluster_config block: "
        'it is not a kubeconfig: invalid type: string "nope", expected a sequence'
    )


def kubeconfig_with_user(user: dict) -> dict:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }  # fmt: skip
    return {"config": config, "context_name": "c"}


async def test_an_unknown_auth_plugin_is_named():
    error = await refusal(kubeconfig_with_user({"auth-provider": {"name": "frobnicate"}}))
    assert isinstance(error, InfrastructureNotAvailable)
    assert "cluster_config block: auth error" in str(error)
    assert "Authentication with provider frobnicate not supported" in str(error)


async def test_a_missing_exec_credential_plugin_is_named():
    exec_user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                          "command": "no-such-credential-helper"}}  # fmt: skip
    error = await refusal(kubeconfig_with_user(exec_user))
    assert isinstance(error, InfrastructureNotAvailable)
    assert "unable to run auth exec: No such file or directory" in str(error)
    assert "exec credential plugin is 'no-such-credential-helper': is it installed" in str(error)


@pytest.mark.cluster
async def test_a_token_the_api_server_does_not_accept_says_so(testbed):
    config = block(testbed)
    config["config"]["users"][0]["user"]["token"] = "not-a-valid-token"
    error = await refusal(config)
    assert isinstance(error, InfrastructureError)
    message = str(error)
    assert "Unable to watch Kubernetes jobs and pods in namespace 'default': Unauthorized" in (
        message
    )
    assert "Hint: The API server did not accept the credentials from the work pool's " in message
    assert "renew the token or certificate of its user" in message
    assert "not-a-valid-token" not in message


@pytest.mark.cluster
async def test_a_token_without_rights_for_secrets_gets_an_rbac_hint(testbed, monkeypatch):
    monkeypatch.setenv(CREATE_SECRET, "true")
    before = leftovers(testbed)
    narrow = block(testbed, testbed.narrow_kubeconfig)
    error = await refusal(narrow, env={"PREFECT_API_KEY": "pnu_" + uuid.uuid4().hex})
    assert isinstance(error, InfrastructureError)
    message = str(error)
    assert message.startswith("Unable to store the Prefect API key in Secret 'prefect-")
    assert "in namespace 'default': Forbidden: " in message
    assert "needs create on secrets there" in message
    assert "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_KEY_SECRET_NAME" in message
    assert leftovers(testbed) == before


# --- the worker's wording for refusals (units) ----------------------------------------------


# `test_refusals_get_the_hint_for_their_cause` moved to the core with the messages it checks:
# core/src/k8s/run/start.rs, same name, same assertions.
