"""The example Kubernetes manifests (deploy/kubernetes/) are valid and agree with each other.

Deployment, Service and ConfigMap are checked against the Kubernetes API schemas shipped by
kubernetes-validate (offline, strict: unknown fields fail). The ServiceMonitor is a Prometheus
Operator CRD with no schema there, so its shape is checked by hand. Then the cross-references
that no schema sees: selectors match labels, named ports exist, the mounted ConfigMap holds a
policy the gateway accepts at the path `serve` is given, and every ${VAR} it needs is set.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.policy import parse_policy

MANIFESTS = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
EXPECTED = {
    "deployment.yaml": ("apps/v1", "Deployment"),
    "service.yaml": ("v1", "Service"),
    "configmap.yaml": ("v1", "ConfigMap"),
    "servicemonitor.yaml": ("monitoring.coreos.com/v1", "ServiceMonitor"),
}
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


def load(name: str) -> dict[str, Any]:
    documents = list(yaml.safe_load_all((MANIFESTS / name).read_text()))
    assert len(documents) == 1, f"{name} should hold one resource"
    document = documents[0]
    assert isinstance(document, dict)
    return document


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def arg_after(args: list[str], flag: str) -> str:
    assert flag in args, f"the container's args {args} do not pass {flag}"
    return args[args.index(flag) + 1]


def test_every_manifest_is_there_with_its_kind() -> None:
    assert sorted(p.name for p in MANIFESTS.glob("*.yaml")) == sorted(EXPECTED)
    for name, (api_version, kind) in EXPECTED.items():
        document = load(name)
        assert (document["apiVersion"], document["kind"]) == (api_version, kind), name
        assert document["metadata"]["labels"]["app.kubernetes.io/name"] == "gateway", name


@pytest.mark.parametrize("name", ["deployment.yaml", "service.yaml", "configmap.yaml"])
def test_core_resources_validate_against_the_kubernetes_schema(name: str) -> None:
    kubernetes_validate.validate(load(name), KUBERNETES_VERSION, strict=True)


def test_the_schema_check_rejects_a_broken_deployment() -> None:
    """The validator really runs: a wrong type and an unknown field are both refused."""
    deployment = load("deployment.yaml")
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)
    unknown = copy.deepcopy(deployment)
    unknown["spec"]["template"]["spec"]["containers"][0]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, KUBERNETES_VERSION, strict=True)


def test_deployment_runs_several_replicas_that_its_selector_owns() -> None:
    deployment = load("deployment.yaml")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    template_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= template_labels.items()


def test_service_reaches_the_pods_on_the_port_the_server_listens_on() -> None:
    deployment, service = load("deployment.yaml"), load("service.yaml")
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= template_labels.items()

    gateway = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert str(ports["http"]) == arg_after(gateway["args"], "--port")
    assert arg_after(gateway["args"], "--host") == "0.0.0.0"
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports, f"service targets unknown port {port['targetPort']}"
    for probe in ("readinessProbe", "livenessProbe"):
        assert gateway[probe]["httpGet"]["port"] in ports


def test_service_monitor_scrapes_metrics_on_every_replica_behind_the_service() -> None:
    service, monitor = load("service.yaml"), load("servicemonitor.yaml")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    endpoints = monitor["spec"]["endpoints"]
    assert endpoints, "the ServiceMonitor has no endpoints"
    for endpoint in endpoints:
        assert endpoint["port"] in service_ports
        assert endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+s", endpoint["interval"])


def test_configmap_holds_a_policy_the_gateway_accepts_with_shared_state() -> None:
    configmap, deployment = load("configmap.yaml"), load("deployment.yaml")
    gateway = container(deployment)
    policy_path = Path(arg_after(gateway["args"], "--policy"))

    # The policy file is the ConfigMap key, in a directory mount of that ConfigMap.
    text = configmap["data"][policy_path.name]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = [m for m in gateway["volumeMounts"] if m["mountPath"] == str(policy_path.parent)]
    assert len(mounts) == 1, f"nothing is mounted at {policy_path.parent}"
    assert volumes[mounts[0]["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    # A subPath mount never sees ConfigMap updates: live reload needs the directory mount.
    assert "subPath" not in mounts[0]

    environ = {"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant-test"}
    environ["REDIS_URL"] = "redis://:secret@redis.example:6379/0"
    policy = parse_policy(text, source="configmap.yaml", environ=environ)
    assert policy.state.backend == "redis"
    assert policy.state.url == environ["REDIS_URL"]
    assert all(spec.available for spec in policy.providers.values())


def test_every_variable_the_policy_needs_is_set_from_the_secret() -> None:
    configmap, deployment = load("configmap.yaml"), load("deployment.yaml")
    env = {e["name"]: e for e in container(deployment)["env"]}
    text = "".join(configmap["data"].values())
    for name, default in ENV_REFERENCE.findall(text):
        if not default:
            assert name in env, f"the policy reads ${{{name}}} but the Deployment never sets it"
    for name, entry in env.items():
        if re.search(r"(KEY|KEYS|URL)$", name):
            assert "value" not in entry, f"{name} is inline; take it from a Secret"
            assert "secretKeyRef" in entry["valueFrom"], f"{name} should come from a Secret"
