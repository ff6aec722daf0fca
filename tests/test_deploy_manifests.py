"""The Kubernetes manifests render offline, and every workload they describe follows the deploy rules.

Each overlay under ``deploy/k8s/overlays`` is rendered by a small Python implementation of the
kustomize features this tree uses: ``resources``, ``components``, strategic-merge ``patches`` (with or
without a ``target``), ``replicas``, ``namespace`` and ``secretGenerator`` without a name hash. Any
other kustomization field makes the renderer fail, so the tree cannot outgrow it unnoticed. When
``kustomize`` or ``kubectl`` is on PATH the overlays are also rendered by it, and the two renderings
must be identical, which keeps the Python renderer honest. No cluster and no network are needed.
"""

from __future__ import annotations

import base64
import copy
import functools
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from haven.kit.settings import ServiceSettings
from services.gateway.settings import GatewaySettings
from services.notifier.mailer import parse_mapping
from services.referral_router.settings import RouterSettings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
NATS = ROOT / "deploy" / "nats"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())

Obj = dict[str, Any]

# Kubernetes name of each Haven service -> (Python module it runs, gRPC port or None for HTTP).
HAVEN_SERVICES: dict[str, tuple[str, int | None]] = {
    "gateway": ("services.gateway", None),
    "eligibility": ("services.eligibility", 50051),
    "referral-router": ("services.referral_router", 50052),
    "notifier": ("services.notifier", 50053),
}
GATEWAY_PORT = 8080
SERVICE_SHUTDOWN_SECONDS = 20.0  # how long a service drains after SIGTERM
PIPELINE = ("eligibility", "referral-router", "notifier")

API_VERSIONS = {
    "Namespace": "v1",
    "ServiceAccount": "v1",
    "Service": "v1",
    "ConfigMap": "v1",
    "Secret": "v1",
    "Deployment": "apps/v1",
    "NetworkPolicy": "networking.k8s.io/v1",
    "PodDisruptionBudget": "policy/v1",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# --------------------------------------------------------------------------------------------------
# An offline renderer for the subset of kustomize this tree uses.
# --------------------------------------------------------------------------------------------------

SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "components",
    "patches",
    "replicas",
    "secretGenerator",
    "generatorOptions",
}


def _load_docs(path: Path) -> list[Obj]:
    docs: list[Obj] = []
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if doc is None:
            continue
        assert isinstance(doc, dict), f"{path}: every document must be a mapping"
        docs.append(doc)
    return docs


def _kustomization(directory: Path, kind: str) -> Obj:
    path = directory / "kustomization.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    assert data.get("kind", "Kustomization") == kind, f"{path}: expected kind {kind}"
    unsupported = set(data) - SUPPORTED_FIELDS
    if unsupported:
        raise NotImplementedError(f"{path}: the offline renderer does not support {sorted(unsupported)}")
    return data


def _is_named_list(items: list[Any]) -> bool:
    return all(isinstance(item, dict) and "name" in item for item in items)


def _merge(base: Any, patch: Any) -> Any:
    """Strategic merge for this tree: maps merge, lists of named items merge by name, null deletes."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if key.startswith("$"):
                raise NotImplementedError(f"patch directive {key} is not supported")
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = _merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and _is_named_list(base) and _is_named_list(patch):
        result = [copy.deepcopy(item) for item in base]
        for item in patch:
            names = [existing["name"] for existing in result]
            if item["name"] in names:
                index = names.index(item["name"])
                result[index] = _merge(result[index], item)
            else:
                result.append(copy.deepcopy(item))
        return result
    return copy.deepcopy(patch)


def _labels_match(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (part.strip() for part in selector.split(","))):
        if "=" not in term or "!=" in term:
            raise NotImplementedError(f"label selector {selector!r}: only k=v terms are supported")
        key, value = (half.strip() for half in term.split("=", 1))
        if labels.get(key) != value:
            return False
    return True


def _targets(target: Obj, obj: Obj) -> bool:
    unsupported = set(target) - {"kind", "name", "labelSelector"}
    if unsupported:
        raise NotImplementedError(f"patch target fields {sorted(unsupported)}")
    if "kind" in target and obj["kind"] != target["kind"]:
        return False
    if "name" in target and not re.fullmatch(target["name"], obj["metadata"]["name"]):
        return False
    labels = obj["metadata"].get("labels", {})
    return "labelSelector" not in target or _labels_match(target["labelSelector"], labels)


def _apply_patches(directory: Path, entries: list[Obj], objects: list[Obj]) -> list[Obj]:
    for entry in entries:
        if set(entry) - {"path", "patch", "target"}:
            raise NotImplementedError(f"{directory}: patch fields {sorted(entry)}")
        text = (directory / entry["path"]).read_text(encoding="utf-8") if "path" in entry else entry["patch"]
        patch = yaml.safe_load(text)
        if not isinstance(patch, dict):
            raise NotImplementedError(f"{directory}: only strategic-merge patches are supported")
        body = copy.deepcopy(patch)
        metadata = body.setdefault("metadata", {})
        if "target" in entry:
            chosen = [i for i, obj in enumerate(objects) if _targets(entry["target"], obj)]
        else:
            chosen = [
                i
                for i, obj in enumerate(objects)
                if obj["kind"] == patch["kind"] and obj["metadata"]["name"] == metadata.get("name")
            ]
        assert chosen, f"{directory}: patch {entry} matches nothing"
        metadata.pop("name", None)
        metadata.pop("namespace", None)
        for i in chosen:
            objects[i] = _merge(objects[i], body)
    return objects


def _generate_secrets(directory: Path, k: Obj) -> list[Obj]:
    global_options = k.get("generatorOptions", {})
    secrets: list[Obj] = []
    for entry in k.get("secretGenerator", []):
        if set(entry) - {"name", "literals", "type", "options"}:
            raise NotImplementedError(f"{directory}: secretGenerator fields {sorted(entry)}")
        options = {**global_options, **entry.get("options", {})}
        if options.get("disableNameSuffixHash") is not True:
            raise NotImplementedError(f"{directory}: generated names need disableNameSuffixHash: true")
        data = {}
        for literal in entry.get("literals", []):
            key, value = literal.split("=", 1)
            data[key] = base64.b64encode(value.encode()).decode()
        secret: Obj = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": entry["name"]}}
        secret["type"] = entry.get("type", "Opaque")
        secret["data"] = data
        secrets.append(secret)
    return secrets


def _build(directory: Path, accumulated: list[Obj], kind: str) -> list[Obj]:
    k = _kustomization(directory, kind)
    objects = accumulated
    for entry in k.get("resources", []):
        path = (directory / entry).resolve()
        objects.extend(render(path) if path.is_dir() else _load_docs(path))
    for entry in k.get("components", []):
        objects = _build((directory / entry).resolve(), objects, "Component")
    objects.extend(_generate_secrets(directory, k))
    objects = _apply_patches(directory, k.get("patches", []), objects)
    for replica in k.get("replicas", []):
        chosen = [
            o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == replica["name"]
        ]
        assert chosen, f"{directory}: replicas entry {replica['name']} matches no Deployment"
        for obj in chosen:
            obj["spec"]["replicas"] = replica["count"]
    if "namespace" in k:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = k["namespace"]
    return objects


def render(directory: Path) -> list[Obj]:
    """Render the kustomization in ``directory`` the way ``kustomize build`` would for this tree."""
    return _build(directory, [], "Kustomization")


def _external_renderer() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@functools.cache
def rendered(overlay: str) -> tuple[Obj, ...]:
    return tuple(render(K8S / "overlays" / overlay))


def _key(obj: Obj) -> tuple[str, str, str]:
    return (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


# --------------------------------------------------------------------------------------------------
# Helpers over rendered objects.
# --------------------------------------------------------------------------------------------------


def of_kind(objects: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] == kind]


def deployments(overlay: str) -> list[Obj]:
    return of_kind(rendered(overlay), "Deployment")


def haven_deployments(overlay: str) -> Iterator[tuple[str, Obj]]:
    by_name = {d["metadata"]["name"]: d for d in deployments(overlay)}
    assert set(HAVEN_SERVICES) <= set(by_name), f"{overlay}: missing {set(HAVEN_SERVICES) - set(by_name)}"
    for name in HAVEN_SERVICES:
        yield name, by_name[name]


def pod_spec(deployment: Obj) -> Obj:
    spec: Obj = deployment["spec"]["template"]["spec"]
    return spec


def containers(deployment: Obj) -> list[Obj]:
    spec = pod_spec(deployment)
    return [*spec.get("initContainers", []), *spec["containers"]]


def main_container(deployment: Obj) -> Obj:
    container: Obj = pod_spec(deployment)["containers"][0]
    return container


def env_of(container: Obj) -> dict[str, Any]:
    return {item["name"]: item.get("value") for item in container.get("env", [])}


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    if set(selector) - {"matchLabels"}:
        raise NotImplementedError(f"selector {selector}")
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def pod_labels(deployment: Obj) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


QUANTITY_SUFFIXES = {
    "m": 0.001,
    "": 1.0,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
}


def quantity(value: str | int | float) -> float:
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match and match.group(2) in QUANTITY_SUFFIXES, f"bad quantity {value!r}"
    return float(match.group(1)) * QUANTITY_SUFFIXES[match.group(2)]


def container_port(container: Obj, port: int | str) -> int:
    """The number of a container port given by number or by name."""
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in container.get("ports", [])], f"port {port} not declared"
        return port
    named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"container {container['name']} has no port named {port}"
    return int(named[port])


# --------------------------------------------------------------------------------------------------
# The tests.
# --------------------------------------------------------------------------------------------------

overlays = pytest.mark.parametrize("overlay", OVERLAYS)


def test_both_overlays_exist() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


@overlays
def test_rendering_matches_kustomize(overlay: str) -> None:
    command = _external_renderer()
    if command is None:
        pytest.skip("neither kustomize nor kubectl on PATH; the Python rendering is checked alone")
    result = subprocess.run(
        [*command, str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    theirs = {_key(obj): obj for obj in yaml.safe_load_all(result.stdout) if obj}
    ours = {_key(obj): obj for obj in rendered(overlay)}
    assert sorted(ours) == sorted(theirs)
    for key, obj in ours.items():
        assert obj == theirs[key], f"{overlay}: {key} differs from the kustomize rendering"


@overlays
def test_objects_are_well_formed(overlay: str) -> None:
    objects = rendered(overlay)
    namespaces = [o["metadata"]["name"] for o in of_kind(objects, "Namespace")]
    assert len(namespaces) == 1, f"{overlay}: exactly one Namespace"
    keys = [_key(obj) for obj in objects]
    assert len(keys) == len(set(keys)), f"{overlay}: duplicate objects"
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        assert API_VERSIONS.get(kind) == obj["apiVersion"], (
            f"{overlay}: unexpected {obj['apiVersion']} {kind}"
        )
        assert DNS_LABEL.match(name) and len(name) <= 63, f"{overlay}: {kind} name {name!r} is not DNS-1123"
        if kind not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") == namespaces[0], f"{overlay}: {kind}/{name} namespace"
    for deployment in of_kind(objects, "Deployment"):
        assert selects(deployment["spec"]["selector"], pod_labels(deployment))


@overlays
def test_every_deployment_is_locked_down(overlay: str) -> None:
    objects = rendered(overlay)
    accounts = {o["metadata"]["name"] for o in of_kind(objects, "ServiceAccount")}
    for deployment in deployments(overlay):
        name = deployment["metadata"]["name"]
        spec = pod_spec(deployment)
        pod_security = spec.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, f"{name}: pod must run as non-root"
        assert pod_security.get("runAsUser", 1) != 0, f"{name}: pod runs as uid 0"
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, f"{name}: no API token in the pod"
        assert spec.get("serviceAccountName") in accounts, f"{name}: its ServiceAccount is not rendered"
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), name
        tmp_volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in containers(deployment):
            where = f"{overlay}: {name}/{container['name']}"
            security = container.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert "ALL" in security.get("capabilities", {}).get("drop", []), where
            assert not security.get("capabilities", {}).get("add"), where
            assert security.get("privileged") is not True and security.get("runAsUser", 1) != 0, where
            assert ":" in container["image"].rsplit("/", 1)[-1], f"{where}: image without a tag"
            resources = container.get("resources", {})
            for resource in ("cpu", "memory"):
                request = resources.get("requests", {}).get(resource)
                limit = resources.get("limits", {}).get(resource)
                assert request is not None and limit is not None, f"{where}: {resource} request and limit"
                assert quantity(request) <= quantity(limit), f"{where}: {resource} request above limit"
            assert container.get("readinessProbe"), f"{where}: readiness probe"
            assert container.get("livenessProbe"), f"{where}: liveness probe"
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get("/tmp") in tmp_volumes, f"{where}: /tmp must be an emptyDir"


@overlays
def test_haven_services_probe_their_own_health_endpoints(overlay: str) -> None:
    for name, deployment in haven_deployments(overlay):
        container = main_container(deployment)
        readiness, liveness = container["readinessProbe"], container["livenessProbe"]
        grpc_port = HAVEN_SERVICES[name][1]
        if grpc_port is None:
            assert readiness["httpGet"]["path"] == "/readyz", name
            assert liveness["httpGet"]["path"] == "/healthz", name
            for probe in (readiness, liveness):
                assert container_port(container, probe["httpGet"]["port"]) == GATEWAY_PORT, name
        else:
            for probe in (readiness, liveness):
                assert set(probe) & {"httpGet", "tcpSocket", "exec"} == set(), f"{name}: native grpc probe"
                assert probe["grpc"]["port"] == grpc_port, name
                assert container_port(container, probe["grpc"]["port"]) == grpc_port


@overlays
def test_grace_period_outlasts_the_service_shutdown(overlay: str) -> None:
    for name, deployment in haven_deployments(overlay):
        env = env_of(main_container(deployment))
        shutdown = float(env.get("HAVEN_SHUTDOWN_GRACE_SECONDS") or SERVICE_SHUTDOWN_SECONDS)
        assert shutdown >= SERVICE_SHUTDOWN_SECONDS, f"{name}: shutdown shorter than the services' 20 s"
        grace = pod_spec(deployment).get("terminationGracePeriodSeconds", 30)
        assert grace > shutdown, f"{name}: grace period {grace}s must exceed the {shutdown}s shutdown"
    for deployment in deployments(overlay):
        assert "terminationGracePeriodSeconds" in pod_spec(deployment), deployment["metadata"]["name"]


@overlays
def test_haven_services_run_the_image_with_their_settings(overlay: str) -> None:
    objects = rendered(overlay)
    services = {s["metadata"]["name"]: s for s in of_kind(objects, "Service")}
    service_names = set()
    for name, deployment in haven_deployments(overlay):
        module = HAVEN_SERVICES[name][0]
        container = main_container(deployment)
        assert container["image"] == "haven:latest", name
        assert container["command"] == ["python", "-m", module], name
        env = env_of(container)
        for variable in ("HAVEN_NATS_URL", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME"):
            assert env.get(variable), f"{name}: {variable} must be set"
        assert env["OTEL_SERVICE_NAME"] == module.split(".")[-1], name
        service_names.add(env["OTEL_SERVICE_NAME"])
        nats = urlsplit(env["HAVEN_NATS_URL"])
        assert (nats.scheme, nats.port) == ("nats", 4222), name
        otlp = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert otlp.port == 4318 and otlp.hostname in services, f"{name}: OTLP to a rendered Service"
        assert str(env.get("HAVEN_DATA_DIR", "")).startswith("/tmp/"), f"{name}: state on the writable /tmp"
        assert not any(k.startswith("HAVEN_JWT") for k in env), f"{name}: JWT material only via Secret"
    assert len(service_names) == len(HAVEN_SERVICES)


@overlays
def test_services_select_their_pods(overlay: str) -> None:
    objects = rendered(overlay)
    for service in of_kind(objects, "Service"):
        name = service["metadata"]["name"]
        matching = [
            d
            for d in deployments(overlay)
            if selects({"matchLabels": service["spec"]["selector"]}, pod_labels(d))
        ]
        assert len(matching) == 1, f"{overlay}: Service {name} selects {len(matching)} Deployments"
        for port in service["spec"]["ports"]:
            container_port(main_container(matching[0]), port["targetPort"])
    by_name = {s["metadata"]["name"]: s for s in of_kind(objects, "Service")}
    for name, (_, grpc_port) in HAVEN_SERVICES.items():
        ports = [p["port"] for p in by_name[name]["spec"]["ports"]]
        assert ports == [grpc_port or GATEWAY_PORT], f"{name}: Service port"


@overlays
def test_gateway_reads_its_jwt_key_from_a_secret(overlay: str) -> None:
    gateway = dict(haven_deployments(overlay))["gateway"]
    refs = [e["secretRef"]["name"] for e in main_container(gateway).get("envFrom", []) if "secretRef" in e]
    assert refs == ["haven-jwt"]
    secrets = of_kind(rendered(overlay), "Secret")
    if overlay == "prod":
        assert secrets == [], "prod signing material is created out of band, never rendered from git"
    for secret in secrets:
        if secret["metadata"]["name"] == "haven-jwt":
            assert set(secret.get("data", {})) & {"HAVEN_JWT_SECRET", "HAVEN_JWT_JWKS_URL"}


def _allows(policy: Obj, direction: str, port: int, protocol: str = "TCP") -> bool:
    rules = policy["spec"].get(direction, [])
    return any(
        any(p.get("port") == port and p.get("protocol", "TCP") == protocol for p in rule.get("ports", []))
        for rule in rules
    )


@overlays
def test_network_policies_deny_by_default_and_allow_only_haven_flows(overlay: str) -> None:
    policies = of_kind(rendered(overlay), "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert any(
        set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} and not p["spec"].get("egress") for p in deny
    ), "default deny of ingress and egress for every pod"
    everyone = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert any(_allows(p, "egress", 53, "UDP") and _allows(p, "egress", 53, "TCP") for p in everyone), "DNS"

    def policies_for(labels: dict[str, str]) -> list[Obj]:
        return [p for p in policies if selects(p["spec"]["podSelector"], labels)]

    for name, deployment in haven_deployments(overlay):
        mine = policies_for(pod_labels(deployment))
        assert any(_allows(p, "egress", 4222) for p in mine), f"{name}: egress to NATS 4222"
        assert any(_allows(p, "egress", 4318) for p in mine), f"{name}: egress to OTLP 4318"
        opens_ingress = [p for p in mine if p["spec"].get("ingress")]
        if name == "gateway":
            assert any(_allows(p, "ingress", GATEWAY_PORT) for p in opens_ingress), "gateway ingress 8080"
        else:
            assert all(all(r.get("from") for r in p["spec"]["ingress"]) for p in opens_ingress), (
                f"{name}: ingress only from named peers"
            )
    collector = policies_for({"app": "otel-collector"})
    assert any(_allows(p, "ingress", 4318) for p in collector), "collector accepts OTLP/HTTP"
    nats = policies_for({"app.kubernetes.io/name": "nats"})
    assert any(_allows(p, "ingress", 4222) for p in nats), "NATS accepts clients"


@overlays
def test_telemetry_components_are_deployed(overlay: str) -> None:
    names = {d["metadata"]["name"] for d in deployments(overlay)}
    assert {"otel-collector", "jaeger"} <= names


def test_prod_scales_out_the_pipeline_behind_disruption_budgets() -> None:
    dev = {d["metadata"]["name"]: d["spec"].get("replicas", 1) for d in deployments("dev")}
    prod = {d["metadata"]["name"]: d["spec"].get("replicas", 1) for d in deployments("prod")}
    for name in PIPELINE:
        assert prod[name] >= 2 and prod[name] > dev[name], f"{name}: more replicas in prod"
    budgets = of_kind(rendered("prod"), "PodDisruptionBudget")
    for name, deployment in haven_deployments("prod"):
        mine = [b for b in budgets if selects(b["spec"]["selector"], pod_labels(deployment))]
        assert len(mine) == 1, f"{name}: exactly one PodDisruptionBudget"
        spec, replicas = mine[0]["spec"], prod[name]
        if "maxUnavailable" in spec:
            assert 1 <= spec["maxUnavailable"] < replicas, f"{name}: budget must allow a drain, keep a pod"
        else:
            assert 1 <= spec["minAvailable"] < replicas, f"{name}: budget must allow a drain, keep a pod"


def _helm_merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        return {k: _helm_merge(base.get(k), v) if k in base else v for k, v in override.items()} | {
            k: v for k, v in base.items() if k not in override
        }
    return override


def _values(*names: str) -> Obj:
    merged: Obj = {}
    for name in names:
        merged = _helm_merge(merged, yaml.safe_load((NATS / name).read_text(encoding="utf-8")))
    return merged


@pytest.mark.parametrize(
    ("files", "replicas"), [(("values.yaml",), 3), (("values.yaml", "values-dev.yaml"), 1)]
)
def test_nats_values_run_jetstream_on_files(files: tuple[str, ...], replicas: int) -> None:
    config = _values(*files)["config"]
    jetstream = config["jetstream"]
    assert jetstream["enabled"] is True
    assert jetstream["fileStore"]["enabled"] is True and jetstream["fileStore"]["pvc"]["enabled"] is True
    assert jetstream["memoryStore"]["enabled"] is False
    assert quantity(jetstream["fileStore"]["maxSize"]) < quantity(jetstream["fileStore"]["pvc"]["size"])
    cluster = config["cluster"]
    assert (cluster["replicas"] if cluster["enabled"] else 1) == replicas


# Settings each service reads that production sets in its manifest (name -> value), checked against
# the settings classes so a renamed or removed setting fails here.
SERVICE_SETTINGS: dict[str, dict[str, str]] = {
    "gateway": {"HAVEN_INTAKE_SWEEP_SECONDS": "60", "HAVEN_INTAKE_SWEEP_AFTER_SECONDS": "30"},
    "referral-router": {"HAVEN_ROUTER_CONCURRENCY": "64"},
}
# Settings that are secrets: each comes from a Secret (name, key), never a literal value.
SECRET_SETTINGS: dict[str, dict[str, tuple[str, str]]] = {
    name: {
        "HAVEN_NATS_USER": ("haven-nats", "HAVEN_NATS_USER"),
        "HAVEN_NATS_PASSWORD": ("haven-nats", "HAVEN_NATS_PASSWORD"),
    }
    for name in HAVEN_SERVICES
}
SECRET_SETTINGS["notifier"]["HAVEN_NATS_SIGNING_SECRETS"] = (
    "haven-nats-signing",
    "HAVEN_NATS_SIGNING_SECRETS",
)
_SECRET_WORDS = ("SECRET", "PASSWORD", "TOKEN", "KEY")


def _keys_named(value: Any, name: str) -> list[Any]:
    """Return every value held under the key ``name`` anywhere in ``value``."""
    if isinstance(value, dict):
        return [v for k, v in value.items() if k == name] + [
            found for v in value.values() for found in _keys_named(v, name)
        ]
    if isinstance(value, list):
        return [found for v in value for found in _keys_named(v, name)]
    return []


def _secret_ref(item: Obj) -> tuple[str, str] | None:
    ref = item.get("valueFrom", {}).get("secretKeyRef")
    return (ref["name"], ref["key"]) if ref else None


@overlays
def test_secret_settings_come_from_secrets_and_the_nats_url_uses_them(overlay: str) -> None:
    for name, deployment in haven_deployments(overlay):
        env = main_container(deployment).get("env", [])
        order = [item["name"] for item in env]
        refs = {item["name"]: _secret_ref(item) for item in env}
        for variable, ref in SECRET_SETTINGS[name].items():
            assert refs.get(variable) == ref, f"{overlay}: {name} must take {variable} from Secret {ref}"
        for item in env:
            if any(word in item["name"] for word in _SECRET_WORDS):
                assert "value" not in item, f"{overlay}: {name} has a literal {item['name']}"
        url = env_of(main_container(deployment))["HAVEN_NATS_URL"]
        assert url == "nats://$(HAVEN_NATS_USER):$(HAVEN_NATS_PASSWORD)@nats:4222", name
        # Kubernetes expands $(VAR) only from variables defined before it.
        assert order.index("HAVEN_NATS_URL") > max(
            order.index("HAVEN_NATS_USER"), order.index("HAVEN_NATS_PASSWORD")
        )


@overlays
def test_new_service_settings_are_set_and_known_to_the_services(overlay: str) -> None:
    known: dict[str, type[ServiceSettings]] = {"gateway": GatewaySettings, "referral-router": RouterSettings}
    deployments_by_name = dict(haven_deployments(overlay))
    for name, expected in SERVICE_SETTINGS.items():
        env = env_of(main_container(deployments_by_name[name]))
        fields = known[name].model_fields
        for variable, value in expected.items():
            assert env.get(variable) == value, f"{overlay}: {name} {variable}"
            field = variable.removeprefix("HAVEN_").lower()
            assert field in fields, f"{name} has no setting {field}"
            assert str(fields[field].default) in (value, f"{value}.0"), f"{name}: {variable} != its default"


def test_dev_generates_the_nats_secrets_and_prod_leaves_them_to_the_operator() -> None:
    dev = {s["metadata"]["name"]: s for s in of_kind(rendered("dev"), "Secret")}
    wanted = {ref for refs in SECRET_SETTINGS.values() for ref in refs.values()}
    for secret, key in wanted:
        assert key in dev[secret]["data"], f"dev: Secret {secret} lacks {key}"
    signing = base64.b64decode(dev["haven-nats-signing"]["data"]["HAVEN_NATS_SIGNING_SECRETS"]).decode()
    assert set(parse_mapping(signing)) == {"demo-la-manchester", "demo-la-leeds"}
    assert of_kind(rendered("prod"), "Secret") == []


def test_nats_servers_take_their_users_from_a_secret_in_prod_only() -> None:
    prod = _values("values.yaml")
    assert prod["config"]["merge"]["$include"] == "../nats-auth/auth.conf"
    volumes = [p["value"] for p in prod["podTemplate"]["patch"] if p["path"] == "/spec/volumes/-"]
    assert volumes == [{"name": "haven-nats-auth", "secret": {"secretName": "haven-nats-auth"}}]
    mounts = [p["value"] for p in prod["container"]["patch"] if p["path"] == "/volumeMounts/-"]
    assert [(m["name"], m["mountPath"]) for m in mounts] == [("haven-nats-auth", "/etc/nats-auth")]
    assert not _keys_named(prod, "password"), "NATS passwords only in the Secret haven-nats-auth"
    dev = _values("values.yaml", "values-dev.yaml")
    assert dev["config"]["merge"].get("$include") is None
    assert dev["container"]["patch"] == [] and dev["podTemplate"]["patch"] == []
