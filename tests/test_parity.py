"""Parity with prefect-kubernetes: the same inputs give the same Job manifests.

`prefect_kubernetes` is a test dependency used only as the oracle. Every place where this
package deliberately differs is asserted explicitly in the tests at the end of this file
(and listed in the README under "Differences from prefect-kubernetes").
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from prefect.client.schemas.objects import Flow, FlowRun, WorkPool
from prefect.client.schemas.responses import DeploymentResponse
from prefect_kubernetes import worker as oracle
from pydantic import ValidationError

from prefect_kubernetes_rs.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

pytestmark = pytest.mark.parity

ORACLE_TEMPLATE = oracle.KubernetesWorker.get_default_base_job_template()
OUR_TEMPLATE = KubernetesWorker.get_default_base_job_template()


@dataclass
class Run:
    flow_run: FlowRun
    deployment: DeploymentResponse | None
    flow: Flow | None
    work_pool: WorkPool | None


@pytest.fixture
def run(flow_run, deployment, flow, work_pool) -> Run:
    return Run(flow_run, deployment, flow, work_pool)


async def configure(cls: type, template: dict, values: dict, run: Run, client: Any) -> Any:
    configuration = await cls.from_template_and_values(
        copy.deepcopy(template), copy.deepcopy(values), client=client
    )
    configuration.prepare_for_flow_run(
        run.flow_run, run.deployment, run.flow, run.work_pool, "worker-1"
    )
    return configuration


async def both(template: dict, values: dict, run: Run, client: Any) -> tuple[Any, Any]:
    ours = await configure(KubernetesWorkerJobConfiguration, template, values, run, client)
    theirs = await configure(oracle.KubernetesWorkerJobConfiguration, template, values, run, client)
    return ours, theirs


def assert_same(ours: Any, theirs: Any) -> None:
    assert ours.job_manifest == theirs.job_manifest
    assert ours.env == theirs.env
    assert ours.labels == theirs.labels
    assert ours.annotations == theirs.annotations
    assert ours.name == theirs.name
    assert ours.command == theirs.command
    assert ours.namespace == theirs.namespace


def with_manifest(edit: Callable[[dict], None], template: dict = ORACLE_TEMPLATE) -> dict:
    edited = copy.deepcopy(template)
    edit(edited["job_configuration"]["job_manifest"])
    return edited


def pod_spec(manifest: dict) -> dict:
    return manifest["spec"]["template"]["spec"]


def add_sidecar_after(manifest: dict) -> None:
    pod_spec(manifest)["containers"].append({"name": "log-shipper", "image": "fluent-bit:3"})


def hard_code_env_list(manifest: dict) -> None:
    pod_spec(manifest)["containers"][0]["env"] = [
        {"name": "HARD_CODED", "value": "yes"},
        {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}},
    ]


def no_placeholders(manifest: dict) -> None:
    manifest["metadata"] = {"generateName": "fixed-name-", "labels": {"team": "data"}}
    manifest["spec"]["backoffLimit"] = 1
    pod_spec(manifest)["containers"] = [
        {"name": "prefect-job", "image": "my-registry/flows:2", "args": ["python", "-m", "x"]}
    ]
    pod_spec(manifest).pop("serviceAccountName")


def extra_fields(manifest: dict) -> None:
    manifest["spec"]["activeDeadlineSeconds"] = 3600
    pod_spec(manifest)["tolerations"] = [{"key": "gpu", "operator": "Exists"}]
    pod_spec(manifest)["volumes"] = [{"name": "data", "emptyDir": {}}]
    pod_spec(manifest)["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/d"}]
    manifest["spec"]["template"]["metadata"] = {"labels": {"sidecar.istio.io/inject": "false"}}


def no_backoff_limit(manifest: dict) -> None:
    del manifest["spec"]["backoffLimit"]


def namespace_in_manifest(manifest: dict) -> None:
    manifest["metadata"]["namespace"] = "hard-coded"


def command_as_list(manifest: dict) -> None:
    pod_spec(manifest)["containers"][0]["args"] = ["python", "-m", "my.flow"]


def env_placeholder_in_list(manifest: dict) -> None:
    pod_spec(manifest)["containers"][0]["env"] = [
        {"name": "FROM_VARIABLE", "value": "{{ image }}"},
        {"name": "LITERAL", "value": "x"},
    ]


def generate_name_with_text(manifest: dict) -> None:
    manifest["metadata"]["generateName"] = "team-{{ name }}-"


CASES: dict[str, tuple[dict, dict]] = {
    "defaults": (ORACLE_TEMPLATE, {}),
    "our-default-template": (OUR_TEMPLATE, {}),
    "typical-job-variables": (
        ORACLE_TEMPLATE,
        {
            "image": "my-registry/flows:1.2",
            "namespace": "data",
            "env": {"LOG_LEVEL": "DEBUG", "RETRIES": 3, "FLAG": True},
            "labels": {"team": "Data Eng", "cost-center": "42"},
            "annotations": {"owner": "Jane Doe <jane@example.com>"},
            "cpu_request": "500m",
            "memory_limit": "1Gi",
            "service_account_name": "flows",
            "finished_job_ttl": 600,
            "backoff_limit": 2,
            "image_pull_policy": "Always",
        },
    ),
    "env-none-unsets": (ORACLE_TEMPLATE, {"env": {"PREFECT_API_URL": None, "KEEP": "1"}}),
    "env-list-with-value-from": (
        ORACLE_TEMPLATE,
        {
            "env": [
                {"name": "PLAIN", "value": "1"},
                {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            ]
        },
    ),
    "eviction-env-chosen-by-user": (
        ORACLE_TEMPLATE,
        {"env": {"PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR": "relinquish"}},
    ),
    "dotted-job-variables": (ORACLE_TEMPLATE, {"env.FROM_DOT": "x", "labels.a": "b"}),
    "command-with-quotes": (
        ORACLE_TEMPLATE,
        {"command": "python -c 'import sys; print(sys.argv)' \"two words\" tail\\ escaped"},
    ),
    "non-ascii-and-long-labels": (
        ORACLE_TEMPLATE,
        {
            "labels": {
                "ünïcödé/Kéy": "Ünïcödé välue",
                "x" * 80: "y" * 80,
                "prefect.io/" + "n" * 70: "Ελληνικά 日本語",
                "emoji": "rocket 🚀 launch",
            }
        },
    ),
    # Kubernetes' rule for a key prefix is a DNS subdomain of up to 253 characters, with no
    # limit per dot-separated part (the v1.20 API server takes this Job).
    "key-prefixes-of-253-characters-without-dots": (
        ORACLE_TEMPLATE,
        {
            "labels": {"a" * 253 + "/team": "data"},
            "annotations": {"b" * 120 + "." + "c" * 132 + "/note": "v"},
        },
    ),
    "annotations-keys-slugified-values-verbatim": (
        ORACLE_TEMPLATE,
        {"annotations": {"my key!": "anything: goes, even spaces", "example.com/Ok": "v"}},
    ),
    "sidecar-after-prefect-job": (with_manifest(add_sidecar_after), {"env": {"A": "1"}}),
    "hard-coded-env-list": (with_manifest(hard_code_env_list), {"env": {"HARD_CODED": "no"}}),
    "template-without-placeholders": (with_manifest(no_placeholders), {}),
    "extra-fields-kept": (with_manifest(extra_fields), {"labels": {"a": "b"}}),
    "unknown-job-variables-ignored": (ORACLE_TEMPLATE, {"not_a_variable": 1}),
    "api-url-from-env": (
        ORACLE_TEMPLATE,
        {"env": {"PREFECT_API_URL": "http://localhost:4200/api"}},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_same_manifest_as_prefect_kubernetes(case: str, run: Run, no_api_client) -> None:
    template, values = CASES[case]
    ours, theirs = await both(template, values, run, no_api_client)
    assert_same(ours, theirs)


async def test_same_manifest_without_deployment_or_flow(flow_run, no_api_client) -> None:
    bare = Run(flow_run, None, None, None)
    ours, theirs = await both(ORACLE_TEMPLATE, {"labels": {"x": "y"}}, bare, no_api_client)
    assert_same(ours, theirs)


async def test_same_manifest_with_api_dns_name(run: Run, no_api_client) -> None:
    values = {"env": {"PREFECT_API_URL": "http://localhost:4200/api"}}
    ours = await KubernetesWorkerJobConfiguration.from_template_and_values(
        copy.deepcopy(ORACLE_TEMPLATE), values, client=no_api_client
    )
    theirs = await oracle.KubernetesWorkerJobConfiguration.from_template_and_values(
        copy.deepcopy(ORACLE_TEMPLATE), values, client=no_api_client
    )
    for configuration in (ours, theirs):
        configuration._api_dns_name = "host.internal"
        configuration.prepare_for_flow_run(run.flow_run, run.deployment, run.flow, run.work_pool)
    assert_same(ours, theirs)
    assert ours.env["PREFECT_API_URL"] == "http://host.internal:4200/api"


LABEL_WORDS = [
    "simple", "Mixed Case", "UPPER", "dots.and_underscores", "--dashes--", "ünïcödé", "日本語",
    "Ελληνικά", "кириллица", "emoji🚀", "a" * 70, "1,000 items", "&amp; entity", "&#65;&#x42;",
    "quote's", "tab\there", " spaced ", "_leading", "trailing.", "x/y", "a/b/c", "", "123",
]  # fmt: skip


def generated_case(seed: int) -> tuple[dict, dict]:
    """A reproducible mix of the inputs users actually send."""
    rng = random.Random(seed)
    values: dict[str, Any] = {}
    labels = {
        rng.choice(LABEL_WORDS) or "k": rng.choice([w for w in LABEL_WORDS if w])
        for _ in range(rng.randint(0, 4))
    }
    if labels:
        values["labels"] = labels
    if rng.random() < 0.5:
        values["env"] = {f"VAR_{i}": rng.choice(["x", "1", None, 3]) for i in range(3)}
    elif rng.random() < 0.5:
        values["env"] = [
            {"name": "A", "value": "1"},
            {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ]
    if rng.random() < 0.3:
        values["backoff_limit"] = rng.choice([0, 1, 6])
    if rng.random() < 0.3:
        values["image"] = "registry.example/flows:" + str(rng.randint(1, 9))
    if rng.random() < 0.3:
        values["annotations"] = {rng.choice(LABEL_WORDS) or "k": rng.choice(LABEL_WORDS)}
    template = ORACLE_TEMPLATE
    if rng.random() < 0.3:
        template = with_manifest(add_sidecar_after)
    elif rng.random() < 0.2:
        template = with_manifest(hard_code_env_list)
    return template, values


LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def kubernetes_accepts_labels(labels: dict[str, str]) -> bool:
    """Kubernetes' own rules for label keys and values (independent of either worker)."""
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if prefix and not (len(prefix) <= 253 and LABEL_PREFIX.match(prefix)):
            return False
        if not (0 < len(name) <= 63 and LABEL_VALUE.match(name)):
            return False
        if not (len(value) <= 63 and LABEL_VALUE.match(value)):
            return False
    return True


@pytest.mark.parametrize("seed", range(150))
async def test_generated_corpus_matches(seed: int, run: Run, no_api_client) -> None:
    template, values = generated_case(seed)
    theirs = await configure(
        oracle.KubernetesWorkerJobConfiguration, template, values, run, no_api_client
    )
    if not kubernetes_accepts_labels(theirs.job_manifest["metadata"]["labels"]):
        # Deliberate: where the oracle emits labels Kubernetes refuses, we refuse up front.
        with pytest.raises(ValueError, match="cannot be made a valid Kubernetes"):
            await configure(KubernetesWorkerJobConfiguration, template, values, run, no_api_client)
        return
    ours = await configure(KubernetesWorkerJobConfiguration, template, values, run, no_api_client)
    assert_same(ours, theirs)


BOUNDED_VARIABLES = ("job_watch_timeout_seconds", "pod_watch_timeout_seconds")


def without_our_bounds(name: str, schema: dict) -> dict:
    """The schema of a variable without the range we add to the timeouts (the oracle has none;
    see `test_difference_timeouts_have_a_range_the_server_enforces`)."""
    if name not in BOUNDED_VARIABLES:
        return schema
    schema = copy.deepcopy(schema)
    for part in [schema, *schema.get("anyOf", [])]:
        part.pop("minimum", None)
        part.pop("maximum", None)
    return schema


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """An edit that sets (or, for `...`, deletes) one attribute of the manifest."""

    def edit(manifest: dict) -> None:
        *parents, last = path.split("/")
        target = manifest
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is ...:
            del target[last]
        else:
            target[last] = value

    return edit


POD = "spec/template/spec"
MANIFESTS_THE_VALIDATION_REFUSES = {
    "not a Job": lambda m: (_set("kind", "Deployment")(m), _set("apiVersion", "apps/v1")(m)),
    "no spec": _set("spec", ...),
    "no pod template": _set("spec/template", ...),
    "empty pod spec": _set(POD, {}),
    "no containers": _set(f"{POD}/containers", ...),
    "empty containers": _set(f"{POD}/containers", []),
    "containers as text": _set(f"{POD}/containers", "{{ containers }}"),
    "a container as text": _set(f"{POD}/containers", ["prefect-job"]),
    "a container without a name": _set(f"{POD}/containers", [{"image": "x"}]),
    "a container of another name": _set(f"{POD}/containers/0/name", "main"),
    "parallelism 2": _set(f"{POD}/parallelism", 2),
    "restartPolicy OnFailure": _set(f"{POD}/restartPolicy", "OnFailure"),
    "completions 1.0": _set(f"{POD}/completions", 1.0),
    "completions true": _set(f"{POD}/completions", True),
    "completions as text": _set(f"{POD}/completions", "1"),
    "labels as a list": _set("metadata/labels", []),
    "missing and incompatible": lambda m: (_set("kind", "Pod")(m), _set("spec", ...)(m)),
}


@pytest.mark.parametrize("case", MANIFESTS_THE_VALIDATION_REFUSES)
async def test_the_same_manifests_are_refused_with_the_same_message(
    case: str, run: Run, no_api_client
) -> None:
    """Validation is the Python worker's: the JSON Patch difference to the base manifest, `add`s
    missing, `replace`s incompatible, and the message is the same text."""
    template = with_manifest(MANIFESTS_THE_VALIDATION_REFUSES[case])
    messages = []
    for cls in (KubernetesWorkerJobConfiguration, oracle.KubernetesWorkerJobConfiguration):
        with pytest.raises(ValidationError) as caught:
            await configure(cls, template, {}, run, no_api_client)
        messages.append(caught.value.errors()[0]["msg"])
    ours, theirs = messages
    assert ours == theirs
    assert ours.startswith("Value error, Job ")


def test_default_template_matches_prefect_kubernetes() -> None:
    assert OUR_TEMPLATE["job_configuration"] == ORACLE_TEMPLATE["job_configuration"]
    ours, theirs = OUR_TEMPLATE["variables"], ORACLE_TEMPLATE["variables"]
    assert list(ours["properties"]) == list(theirs["properties"])
    for name, schema in theirs["properties"].items():
        mine = without_our_bounds(name, ours["properties"][name])
        for key in ("type", "default", "anyOf", "enum", "minimum", "items", "additionalProperties"):
            assert mine.get(key) == schema.get(key), (name, key)
    assert (
        ours["definitions"]["KubernetesClusterConfig"]["block_type_slug"]
        == (theirs["definitions"]["KubernetesClusterConfig"]["block_type_slug"])
    )


# --- Deliberate differences, each asserted ------------------------------------------------


def test_difference_timeouts_have_a_range_the_server_enforces() -> None:
    """The oracle's timeouts take any integer; a huge one once panicked our core. Ours carry
    `minimum` 0 and `maximum` ten years, so Prefect's server refuses a deployment whose value
    is out of range and names the variable."""
    for name in BOUNDED_VARIABLES:
        schema = OUR_TEMPLATE["variables"]["properties"][name]
        integer = next(
            (part for part in schema.get("anyOf", []) if part.get("type") == "integer"), schema
        )
        assert (integer["minimum"], integer["maximum"]) == (0, 10 * 365 * 24 * 3600), name


async def test_difference_sidecar_first_edits_the_prefect_container(run: Run, no_api_client):
    def sidecar_first(manifest: dict) -> None:
        pod_spec(manifest)["containers"].insert(0, {"name": "proxy", "image": "envoy:1"})

    template = with_manifest(sidecar_first)
    # The oracle's list diff pairs the sidecar with the required container and refuses the Job.
    with pytest.raises(ValidationError, match="containers/0/name must have value 'prefect-job'"):
        await configure(oracle.KubernetesWorkerJobConfiguration, template, {}, run, no_api_client)
    ours = await configure(
        KubernetesWorkerJobConfiguration, template, {"image": "flows:1"}, run, no_api_client
    )
    containers = pod_spec(ours.job_manifest)["containers"]
    assert containers[0] == {"name": "proxy", "image": "envoy:1"}
    assert containers[1]["image"] == "flows:1"
    assert containers[1]["args"] == ["prefect", "flow-run", "execute"]
    assert {"name": "PREFECT__FLOW_RUN_ID", "value": str(run.flow_run.id)} in containers[1]["env"]


async def test_difference_bare_sidecar_first_is_edited_in_the_right_container(
    run: Run, no_api_client
):
    def bare_sidecar_first(manifest: dict) -> None:
        manifest["spec"]["template"]["spec"]["containers"] = [
            {"name": "proxy"},
            {"name": "prefect-job"},
        ]

    ours, theirs = await both(with_manifest(bare_sidecar_first), {}, run, no_api_client)
    # The oracle accepts this shape but writes the run's env, image and command into the proxy.
    assert pod_spec(theirs.job_manifest)["containers"][0]["args"] == [
        "prefect",
        "flow-run",
        "execute",
    ]
    assert pod_spec(ours.job_manifest)["containers"][0] == {"name": "proxy"}
    assert pod_spec(ours.job_manifest)["containers"][1]["args"] == [
        "prefect",
        "flow-run",
        "execute",
    ]


async def test_difference_user_supplied_name_is_slugified(run: Run, no_api_client):
    ours, theirs = await both(ORACLE_TEMPLATE, {"name": "My Job_Name.v2!"}, run, no_api_client)
    assert ours.job_manifest["metadata"]["generateName"] == "my-job-name-v2-"
    assert theirs.job_manifest["metadata"]["generateName"] == "My Job_Name.v2!-"


async def test_difference_two_prefect_containers_are_refused(run: Run, no_api_client):
    def duplicate(manifest: dict) -> None:
        pod_spec(manifest)["containers"].append({"name": "prefect-job"})

    theirs = await configure(
        oracle.KubernetesWorkerJobConfiguration, with_manifest(duplicate), {}, run, no_api_client
    )
    assert len(pod_spec(theirs.job_manifest)["containers"]) == 2
    with pytest.raises(ValidationError, match="2 containers named 'prefect-job'"):
        await configure(
            KubernetesWorkerJobConfiguration, with_manifest(duplicate), {}, run, no_api_client
        )


async def test_difference_invalid_label_value_is_refused_early(run: Run, no_api_client):
    theirs = await configure(
        oracle.KubernetesWorkerJobConfiguration,
        ORACLE_TEMPLATE,
        {"labels": {"team": "!!!"}},
        run,
        no_api_client,
    )
    assert theirs.job_manifest["metadata"]["labels"]["team"] == "!!!"  # Kubernetes refuses it later
    with pytest.raises(ValueError, match=r'label "team" value "!!!" cannot be made a valid'):
        await configure(
            KubernetesWorkerJobConfiguration,
            ORACLE_TEMPLATE,
            {"labels": {"team": "!!!"}},
            run,
            no_api_client,
        )


async def test_difference_label_key_prefix_is_lowercased(run: Run, no_api_client):
    values = {"labels": {"Example.COM/Team": "x"}}
    ours, theirs = await both(ORACLE_TEMPLATE, values, run, no_api_client)
    assert ours.job_manifest["metadata"]["labels"]["example.com/Team"] == "x"
    assert theirs.job_manifest["metadata"]["labels"]["Example.COM/Team"] == "x"


async def test_difference_null_image_gets_the_default_image(run: Run, no_api_client):
    ours, theirs = await both(ORACLE_TEMPLATE, {"image": None}, run, no_api_client)
    assert pod_spec(theirs.job_manifest)["containers"][0]["image"] is None
    assert pod_spec(ours.job_manifest)["containers"][0]["image"].startswith("prefecthq/prefect")


async def test_difference_metadata_not_a_mapping_is_a_validation_error(run: Run, no_api_client):
    def bad_metadata(manifest: dict) -> None:
        manifest["metadata"] = "oops"

    with pytest.raises(TypeError):
        await configure(
            oracle.KubernetesWorkerJobConfiguration,
            with_manifest(bad_metadata),
            {},
            run,
            no_api_client,
        )
    with pytest.raises(ValidationError, match="/metadata must have value"):
        await configure(
            KubernetesWorkerJobConfiguration, with_manifest(bad_metadata), {}, run, no_api_client
        )


async def test_difference_a_missing_attribute_is_not_excused_by_an_equal_value_elsewhere(
    run: Run, no_api_client
):
    """The oracle's jsonpatch turns a removed value and an equal added one into a `move`, so a
    manifest without `completions` passes there when another attribute happens to be 1."""

    def completions_gone(manifest: dict) -> None:
        del pod_spec(manifest)["completions"]
        manifest["spec"]["backoffLimit"] = 1

    template = with_manifest(completions_gone)
    theirs = await configure(
        oracle.KubernetesWorkerJobConfiguration, template, {}, run, no_api_client
    )
    assert "completions" not in pod_spec(theirs.job_manifest)
    with pytest.raises(ValidationError, match="missing required attributes .*/completions"):
        await configure(KubernetesWorkerJobConfiguration, template, {}, run, no_api_client)
