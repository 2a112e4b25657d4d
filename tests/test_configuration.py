"""The job configuration as a user meets it: rendering, preparation, and clear errors."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import ValidationError

from prefect_kubernetes_rs.exceptions import KubernetesRsError, ManifestError
from prefect_kubernetes_rs.worker import (
    KubernetesClusterConfig,
    KubernetesWorker,
    KubernetesWorkerJobConfiguration,
)

TEMPLATE = KubernetesWorker.get_default_base_job_template()


async def render(values: dict, template: dict | None = None, client=None):
    return await KubernetesWorkerJobConfiguration.from_template_and_values(
        copy.deepcopy(template or TEMPLATE), values, client=client
    )


def edited_template(edit) -> dict:
    template = copy.deepcopy(TEMPLATE)
    edit(template["job_configuration"]["job_manifest"])
    return template


async def test_flow_run_gets_a_complete_job(flow_run, deployment, flow, work_pool, no_api_client):
    configuration = await render(
        {"image": "flows:1", "namespace": "data", "env": {"A": "1"}}, client=no_api_client
    )
    configuration.prepare_for_flow_run(flow_run, deployment, flow, work_pool, "worker-1")
    manifest = configuration.job_manifest
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    env = {entry["name"]: entry.get("value") for entry in container["env"]}
    assert manifest["metadata"]["namespace"] == "data"
    assert manifest["metadata"]["generateName"] == "happy-cat-"
    assert container["image"] == "flows:1"
    assert container["args"] == ["prefect", "flow-run", "execute"]
    assert env["A"] == "1"
    assert env["PREFECT__FLOW_RUN_ID"] == str(flow_run.id)
    assert env["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"] == "reschedule"  # backoff_limit 0
    labels = manifest["metadata"]["labels"]
    assert labels["prefect.io/flow-run-id"] == str(flow_run.id)
    assert labels["app.kubernetes.io/name"] == "nightly-load"
    assert labels["prefect.io/deployment-updated"] == "2026-01-02T03-04-05-00-00"
    assert manifest["spec"]["template"]["metadata"]["labels"]["prefect.io/flow-run-id"] == str(
        flow_run.id
    )


async def test_a_template_that_is_not_a_mapping_is_refused():
    with pytest.raises(ManifestError, match="must be a mapping with a 'job_configuration'"):
        await KubernetesWorkerJobConfiguration.from_template_and_values(["not", "a", "dict"], {})
    with pytest.raises(ManifestError, match="get-default-base-job-template --type kubernetes-rs"):
        await KubernetesWorkerJobConfiguration.from_template_and_values(
            {"job_configuration": "x"}, {}
        )


async def test_a_manifest_without_containers_names_the_path():
    def drop_containers(manifest):
        del manifest["spec"]["template"]["spec"]["containers"]

    with pytest.raises(ValidationError) as caught:
        await render({}, edited_template(drop_containers))
    message = caught.value.errors()[0]["msg"]
    assert message == (
        "Value error, Job is missing required attributes at the following paths: "
        "/spec/template/spec/containers"
    )


async def test_a_manifest_that_is_not_a_job_is_refused():
    def not_a_job(manifest):
        manifest["kind"] = "Deployment"
        manifest["apiVersion"] = "apps/v1"

    with pytest.raises(ValidationError, match="/apiVersion must have value 'batch/v1', /kind"):
        await render({}, edited_template(not_a_job))


async def test_containers_without_prefect_job_are_refused():
    def rename(manifest):
        manifest["spec"]["template"]["spec"]["containers"][0]["name"] = "main"

    with pytest.raises(ValidationError, match="containers/0/name must have value 'prefect-job'"):
        await render({}, edited_template(rename))


async def test_env_of_the_wrong_type_names_the_field():
    with pytest.raises(ValidationError) as caught:
        await render({"env": "A=1"})
    assert {error["loc"][0] for error in caught.value.errors()} == {"env"}


async def test_a_command_with_an_unclosed_quote_is_refused(flow_run, no_api_client):
    configuration = await render({"command": "python -c 'print(1)"}, client=no_api_client)
    with pytest.raises(ManifestError, match=r"invalid command .* unclosed|closing quot") as caught:
        configuration.prepare_for_flow_run(flow_run)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, KubernetesRsError)


async def test_a_label_value_that_cannot_be_made_valid_is_refused(flow_run):
    configuration = await render({"labels": {"team": "???"}})
    with pytest.raises(ManifestError, match='label "team" value "\\?\\?\\?" cannot be made'):
        configuration.prepare_for_flow_run(flow_run)


async def test_env_entries_without_names_are_refused(flow_run):
    configuration = await render({"env": [{"valueFrom": {"fieldRef": {"fieldPath": "x"}}}]})
    with pytest.raises(ManifestError, match="in the job's env: every entry needs a 'name'"):
        configuration.prepare_for_flow_run(flow_run)


async def test_block_references_are_resolved_through_the_api_only_when_present(monkeypatch):
    calls = []

    async def fake_resolve(template, client=None):
        calls.append(template)
        return template

    monkeypatch.setattr(
        "prefect_kubernetes_rs.worker.resolve_block_document_references", fake_resolve
    )
    monkeypatch.setattr("prefect_kubernetes_rs.worker.resolve_variables", fake_resolve)
    await render({"image": "x"})
    assert calls == []
    await render({"image": "{{ prefect.variables.image }}"})
    assert len(calls) == 2


async def test_environment_placeholders_read_the_worker_environment(monkeypatch):
    monkeypatch.setenv("TEAM_IMAGE", "registry/team:7")

    def image_from_environment(manifest):
        manifest["spec"]["template"]["spec"]["containers"][0]["image"] = "{{ $TEAM_IMAGE }}"

    configuration = await render({}, edited_template(image_from_environment))
    assert configuration.job_manifest["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry/team:7"
    )


def minimal_manifest(**container) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "template": {
                "spec": {
                    "parallelism": 1,
                    "completions": 1,
                    "restartPolicy": "Never",
                    "containers": [{"name": "prefect-job", **container}],
                }
            }
        },
    }


def test_cluster_config_accepts_block_shaped_objects():
    class BlockLike:
        config = {"clusters": []}
        context_name = "ctx"

    configuration = KubernetesWorkerJobConfiguration(
        job_manifest=minimal_manifest(), cluster_config=BlockLike()
    )
    assert configuration.cluster_config == KubernetesClusterConfig(
        config={"clusters": []}, context_name="ctx"
    )


async def test_settings_environment_is_computed_once_per_settings_object(flow_run, monkeypatch):
    """The environment from Prefect's settings is reused while the settings stay the same."""
    from prefect.settings.models.root import Settings

    calls = []
    original = Settings.to_environment_variables

    def counting(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Settings, "to_environment_variables", counting)
    first = await render({})
    first.prepare_for_flow_run(flow_run)
    second = await render({})
    second.prepare_for_flow_run(flow_run)
    assert len(calls) <= 1, "serialised the settings again although they did not change"
    assert first.env == second.env

    with temporary_settings({PREFECT_API_URL: "http://changed.example:4200/api"}):
        third = await render({})
        third.prepare_for_flow_run(flow_run)
    assert third.env["PREFECT_API_URL"] == "http://changed.example:4200/api"
    fourth = await render({})
    fourth.prepare_for_flow_run(flow_run)
    assert fourth.env == first.env


async def test_cached_environment_equals_prefects_own(flow_run):
    """Same result as Prefect's uncached computation, so the cache changes nothing visible."""
    from prefect.settings.context import get_current_settings

    configuration = await render({})
    configuration.prepare_for_flow_run(flow_run)
    expected = get_current_settings().to_environment_variables(exclude_unset=True)
    for name, value in expected.items():
        assert configuration.env[name] == value
    # The cached mapping is never handed out itself: editing one run's env leaves the next alone.
    configuration.env["PREFECT_API_URL"] = "mutated"
    again = await render({})
    again.prepare_for_flow_run(flow_run)
    assert again.env.get("PREFECT_API_URL") != "mutated"


async def test_one_mebibyte_of_env_arrives_whole(flow_run):
    big = {f"VAR_{i}": f"{i:04d}" + "x" * 1020 for i in range(1024)}
    configuration = await render({"env": big})
    configuration.prepare_for_flow_run(flow_run)
    env = configuration.job_manifest["spec"]["template"]["spec"]["containers"][0]["env"]
    sent = [entry for entry in env if entry["name"].startswith("VAR_")]
    assert sent == [{"name": name, "value": value} for name, value in big.items()]


def readme_patches_variable() -> dict:
    """The `job_manifest_patches` variable as the README tells pool admins to paste it."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for block in re.findall(r"```json\n(.*?)```", readme, flags=re.S):
        try:
            parsed = json.loads("{" + block.strip().rstrip(",") + "}")
        except json.JSONDecodeError:
            continue
        if "job_manifest_patches" in parsed:
            return parsed["job_manifest_patches"]
    raise AssertionError("the README shows no job_manifest_patches variable")


def template_with_patches() -> dict:
    template = copy.deepcopy(TEMPLATE)
    template["variables"]["properties"]["job_manifest_patches"] = readme_patches_variable()
    return template


GPU_PATCHES = [
    {"op": "add", "path": "/spec/template/spec/tolerations", "value": [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    {"op": "add", "path": "/spec/template/spec/volumes", "value": [
        {"name": "scratch", "emptyDir": {}}]},
    {"op": "add", "path": "/spec/template/spec/containers/0/volumeMounts", "value": [
        {"name": "scratch", "mountPath": "/scratch"}]},
    {"op": "add", "path": "/spec/template/spec/nodeSelector", "value": {"pool": "gpu"}},
]  # fmt: skip


async def test_a_deployments_patches_land_in_its_job_when_the_pool_declares_them(flow_run):
    configuration = await render({"job_manifest_patches": GPU_PATCHES}, template_with_patches())
    configuration.prepare_for_flow_run(flow_run)
    pod = configuration.job_manifest["spec"]["template"]["spec"]
    assert pod["tolerations"] == GPU_PATCHES[0]["value"]
    assert pod["volumes"] == [{"name": "scratch", "emptyDir": {}}]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    (container,) = pod["containers"]
    assert container["volumeMounts"] == [{"name": "scratch", "mountPath": "/scratch"}]
    assert {"name": "PREFECT__FLOW_RUN_ID", "value": str(flow_run.id)} in container["env"]
    # The variable's default (no patches) leaves the Job as the template makes it.
    plain = await render({}, template_with_patches())
    assert plain.job_manifest == (await render({})).job_manifest


async def test_patches_do_nothing_where_the_pool_does_not_declare_them():
    """The template decides what deployments may change: without the variable, none."""
    configuration = await render({"job_manifest_patches": GPU_PATCHES})
    assert "nodeSelector" not in configuration.job_manifest["spec"]["template"]["spec"]
    assert configuration.job_manifest == (await render({})).job_manifest


async def test_a_patch_cannot_take_away_what_a_flow_runs_job_needs():
    patches = [{"op": "replace", "path": "/spec/template/spec/restartPolicy", "value": "Always"}]
    with pytest.raises(ValidationError, match="restartPolicy must have value 'Never'"):
        await render({"job_manifest_patches": patches}, template_with_patches())
    patches = [{"op": "remove", "path": "/spec/template/spec/containers/0"}]
    with pytest.raises(ValidationError, match="missing required attributes .*containers/0"):
        await render({"job_manifest_patches": patches}, template_with_patches())


async def test_a_patch_that_fails_is_named_by_index_op_and_path():
    patches = [
        {"op": "add", "path": "/spec/activeDeadlineSeconds", "value": 600},
        {"op": "replace", "path": "/spec/template/spec/hostNetwork", "value": True},
    ]
    with pytest.raises(ManifestError) as caught:
        await render({"job_manifest_patches": patches}, template_with_patches())
    assert str(caught.value) == (
        "job_manifest_patches[1] (replace /spec/template/spec/hostNetwork): the rendered Job "
        "manifest has nothing at that path"
    )
    assert isinstance(caught.value, ValueError)
    with pytest.raises(ManifestError, match=r"job_manifest_patches\[0\] \(delete /spec\): not a"):
        await render({"job_manifest_patches": [{"op": "delete", "path": "/spec"}]},
                     template_with_patches())  # fmt: skip
