"""deploy/ agrees with the code (issue 21): settings, health endpoints, ports, commands, user.

The image, the compose stack and the Kubernetes manifests are parsed, never run: no Docker,
no cluster, no network.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from dicomweb_server.cli import _parser
from dicomweb_server.config import Settings, SettingsError, unknown_variables

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
EXAMPLE_SECRET = "secret.example.yaml"

# DICOMWEB_* names deploy/ may set although no setting reads them yet.
NOT_YET_SETTINGS: set[str] = set()


# -- Dockerfile ----------------------------------------------------------------------------


@dataclass
class Stage:
    """One FROM ... AS name stage: its base image and its instructions in order."""

    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.arguments("ENV"):
            words = shlex.split(args)
            if "=" not in words[0]:  # the legacy `ENV NAME value` form
                values[words[0]] = " ".join(words[1:])
                continue
            for word in words:
                name, _, value = word.partition("=")
                values[name] = value
        return values


def _dockerfile() -> list[Stage]:
    lines: list[str] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue  # comments, also inside continued instructions, as Docker reads them
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def _runtime() -> Stage:
    return _dockerfile()[-1]


def _exposed_port() -> int:
    (expose,) = _runtime().arguments("EXPOSE")
    return int(expose.split("/")[0])


def _healthcheck_command() -> list[str]:
    (healthcheck,) = _runtime().arguments("HEALTHCHECK")
    _options, _, command = healthcheck.partition("CMD ")
    words: list[str] = json.loads(command)
    return words


def _subcommands() -> set[str]:
    for action in _parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("dicomweb-server has no subcommands")


# -- compose -------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return compose


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(name): str(value) for name, value in env.items()}


def _server_replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run our image (built from deploy/Dockerfile)."""
    return {
        name: service
        for name, service in compose["services"].items()
        if isinstance(service.get("build"), dict)
        and service["build"].get("dockerfile") == "deploy/Dockerfile"
    }


_INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _interpolate(value: str, variables: dict[str, str]) -> str:
    """A value as compose would see it with these variables set (`${NAME:-default}` and the like)."""
    return _INTERPOLATION.sub(lambda m: variables.get(m.group(1)) or m.group(3) or "", value)


def _env_example() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


# -- Kubernetes ----------------------------------------------------------------------------


def _manifests(*names: str) -> list[dict[str, Any]]:
    paths = [KUBERNETES / name for name in names] or sorted(KUBERNETES.glob("*.yaml"))
    return [
        document
        for path in paths
        if path.name != "kustomization.yaml"
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def _one(kind: str) -> dict[str, Any]:
    (found,) = [m for m in _manifests() if m["kind"] == kind]
    return found


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    return containers


def _server_container() -> dict[str, Any]:
    (container,) = _containers(_one("Deployment"))
    return container


def _container_port(container: dict[str, Any], port: int | str) -> int:
    """A port given by number or by the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def _config_map() -> dict[str, str]:
    return {str(k): str(v) for k, v in _one("ConfigMap")["data"].items()}


# -- tests ---------------------------------------------------------------------------------


def _dicomweb_names() -> set[str]:
    """Every DICOMWEB_* variable deploy/ sets, wherever it sets it."""
    names = set()
    for stage in _dockerfile():
        names.update(stage.env())
    for service in _compose()["services"].values():
        names.update(_environment(service))
    names.update(_env_example())
    for manifest in _manifests():
        if manifest["kind"] in ("ConfigMap", "Secret"):
            names.update(manifest.get("data") or {})
            names.update(manifest.get("stringData") or {})
        if manifest["kind"] in ("Deployment", "Job"):
            for container in _containers(manifest):
                names.update(item["name"] for item in container.get("env", []))
    return {name for name in names if name.upper().startswith("DICOMWEB_")}


def test_issue21_every_dicomweb_variable_in_deploy_is_a_setting() -> None:
    names = _dicomweb_names()
    assert {"DICOMWEB_DATA_DIR", "DICOMWEB_DATABASE_URL", "DICOMWEB_STORAGE_URL"} <= names
    # The server's own judgement: what it would warn about at start (typos, removed settings).
    assert unknown_variables(dict.fromkeys(names - NOT_YET_SETTINGS, "")) == []


def test_issue21_image_healthcheck_gets_healthz_on_the_exposed_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    command = _healthcheck_command()
    assert command[:2] == ["python", "-c"]
    asked: list[str] = []

    def urlopen(url: str, timeout: float) -> None:
        asked.append(url)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.setenv("DICOMWEB_PORT", _runtime().env()["DICOMWEB_PORT"])
    exec(compile(command[2], "HEALTHCHECK", "exec"), {})
    assert asked == [f"http://127.0.0.1:{_exposed_port()}/healthz"]


def test_issue21_kubernetes_probes_use_healthz_for_liveness_and_readyz_for_readiness() -> None:
    container = _server_container()
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    if "startupProbe" in container:
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    caddyfile = (DEPLOY / "Caddyfile").read_text()
    assert re.search(r"^\s*health_uri\s+/healthz\s*$", caddyfile, re.MULTILINE)


def test_issue21_one_port_from_expose_to_service_probes_and_proxy() -> None:
    port = _exposed_port()
    assert int(_runtime().env()["DICOMWEB_PORT"]) == port
    assert int(_config_map().get("DICOMWEB_PORT", port)) == port
    container = _server_container()
    assert [p["containerPort"] for p in container["ports"]] == [port]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in container:
            assert _container_port(container, container[probe]["httpGet"]["port"]) == port
    for service_port in _one("Service")["spec"]["ports"]:
        assert _container_port(container, service_port["targetPort"]) == port
    # compose: each replica published on its container port, and the proxy's upstreams
    compose = _compose()
    replicas = _server_replicas(compose)
    for service in replicas.values():
        assert [int(str(p).rsplit(":", 1)[1]) for p in service["ports"]] == [port]
    upstreams = re.search(r"reverse_proxy\s+([^{\n]+)", (DEPLOY / "Caddyfile").read_text())
    assert upstreams is not None
    assert sorted(upstreams.group(1).split()) == sorted(f"{name}:{port}" for name in replicas)


def test_issue21_image_runs_the_console_script_and_real_subcommands() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (entrypoint,) = _runtime().arguments("ENTRYPOINT")
    (cmd,) = _runtime().arguments("CMD")
    assert json.loads(entrypoint) == ["dicomweb-server"]
    assert "dicomweb-server" in pyproject["project"]["scripts"]
    subcommands = _subcommands()
    assert json.loads(cmd) == ["serve"] and "serve" in subcommands
    for workload in (_one("Deployment"), _one("Job")):
        for container in _containers(workload):
            assert container["args"][0] in subcommands
    assert _containers(_one("Job"))[0]["args"] == ["migrate"]


def test_issue21_runtime_stage_runs_as_a_fixed_non_root_uid() -> None:
    (user,) = _runtime().arguments("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric: runAsNonRoot can check it
    for workload in (_one("Deployment"), _one("Job")):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == int(uid)


def test_issue21_runtime_stage_is_slim_and_holds_only_the_built_venv() -> None:
    build, runtime = _dockerfile()
    assert runtime.base == build.base == "python:3.11-slim"  # the venv links to its python
    copies = runtime.arguments("COPY")
    assert copies and all(args.startswith(f"--from={build.name} /opt/venv") for args in copies)
    assert "[test]" not in (DEPLOY / "Dockerfile").read_text()
    env = runtime.env()
    assert (env["DICOMWEB_HOST"], env["DICOMWEB_DATA_DIR"]) == ("0.0.0.0", "/data")
    assert any("/data" in volume for volume in runtime.arguments("VOLUME"))


def test_issue21_build_context_has_what_the_image_copies_and_no_secrets() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "/data", "**/.env"} <= ignored
    for stage in _dockerfile():
        for args in stage.arguments("COPY"):
            words = [w for w in args.split() if not w.startswith("--")]
            if "--from=" in args:
                continue
            for source in words[:-1]:
                assert (ROOT / source).exists(), source
                assert source not in ignored and f"/{source}" not in ignored, source


def test_issue21_compose_replicas_share_one_database_and_one_bucket() -> None:
    compose = _compose()
    services = compose["services"]
    replicas = _server_replicas(compose)
    assert len(replicas) == 2
    environments = [_environment(service) for service in replicas.values()]
    for name in ("DICOMWEB_DATABASE_URL", "DICOMWEB_STORAGE_URL", "DICOMWEB_S3_ENDPOINT_URL"):
        assert len({env[name] for env in environments}) == 1, name
    env = {name: _interpolate(value, _env_example()) for name, value in environments[0].items()}
    database = urlparse(env["DICOMWEB_DATABASE_URL"])
    assert database.scheme == "postgresql" and database.hostname in services
    assert urlparse(env["DICOMWEB_STORAGE_URL"]).scheme == "s3"
    store = urlparse(env["DICOMWEB_S3_ENDPOINT_URL"]).hostname
    assert store in services
    # 0 workers would mean one per core of the host, whatever the container is given
    assert int(env["DICOMWEB_WORKERS"]) > 0
    assert services[database.hostname]["image"].startswith("postgres:16")
    for backend in (database.hostname, store):
        assert services[backend]["healthcheck"]["test"]
        assert services[backend]["volumes"]
    for service in replicas.values():
        conditions = {name: dep["condition"] for name, dep in service["depends_on"].items()}
        assert conditions[database.hostname] == conditions[store] == "service_healthy"
        assert "service_completed_successfully" in conditions.values()  # the bucket job


def test_issue21_compose_takes_secrets_from_the_environment() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    for service in _compose()["services"].values():
        for name, value in _environment(service).items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY|DATABASE_URL", name):
                assert "${" in value, f"{name} is written into compose.yaml"
    # every variable compose requires (no default) is in .env.example, with an example value
    example = _env_example()
    for match in _INTERPOLATION.finditer(text):
        if not (match.group(2) or "").endswith("-"):  # no default: compose needs it set
            assert match.group(1) in example, match.group(1)
    assert example and all("example" in value for value in example.values())
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


def test_issue21_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml", EXAMPLE_SECRET}
    assert sorted(kustomization["resources"]) == sorted(files)
    secret = _manifests(EXAMPLE_SECRET)
    assert [m["kind"] for m in secret] == ["Secret"]
    assert all("CHANGE-ME" in value for value in secret[0]["stringData"].values())


def test_issue21_deployment_is_hardened_and_stops_within_its_grace_period() -> None:
    deployment = _one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = _server_container()
    assert deployment["spec"]["replicas"] == 2
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume
    # Service links would inject DICOMWEB_SERVER_PORT=tcp://... into our settings' namespace
    for workload in (deployment, _one("Job")):
        assert workload["spec"]["template"]["spec"]["enableServiceLinks"] is False
    # settings from the ConfigMap and the Secret
    refs = {next(iter(ref)): next(iter(ref.values()))["name"] for ref in container["envFrom"]}
    assert refs["configMapRef"] == _one("ConfigMap")["metadata"]["name"]
    assert refs["secretRef"] == _manifests(EXAMPLE_SECRET)[0]["metadata"]["name"]
    config = _config_map()
    assert int(config["DICOMWEB_WORKERS"]) > 0
    # the preStop pause, then SIGTERM and the server's own grace, all within the pod's grace
    pause = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    grace = int(config["DICOMWEB_SHUTDOWN_GRACE_SECONDS"])
    assert grace == 30
    assert pod["terminationGracePeriodSeconds"] >= int(pause[1]) + grace


def test_issue21_service_hpa_and_pdb_act_on_the_server_pods() -> None:
    deployment = _one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert _one("Service")["spec"]["selector"].items() <= labels.items()
    pdb = _one("PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == 1 and pdb["selector"]["matchLabels"].items() <= labels.items()
    hpa = _one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    assert hpa["minReplicas"] == deployment["spec"]["replicas"]


def test_image_requirements_include_the_tracing_extra_and_never_the_test_one() -> None:
    """The build stage's requirement list, run as Docker runs it: runtime dependencies plus the
    EXTRAS build argument's groups (tracing by default, so DICOMWEB_TRACING works in the image)."""
    build = _dockerfile()[0]
    (default,) = [args for args in build.arguments("ARG") if args.startswith("EXTRAS=")]
    (command,) = [args for args in build.arguments("RUN") if "tomllib" in args]
    code = shlex.split(command.split(">", 1)[0])[2]  # python -c "<code>"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def listed(extras: str) -> list[str]:
        env = {**os.environ, "EXTRAS": extras}
        ran = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert ran.returncode == 0, ran.stderr
        return ran.stdout.splitlines()

    with_tracing = listed(default.partition("=")[2])
    assert with_tracing == pyproject["dependencies"] + pyproject["optional-dependencies"]["tracing"]
    assert listed("") == pyproject["dependencies"]
    tools = {
        d
        for d in pyproject["optional-dependencies"]["test"]
        if d.startswith(("pytest", "ruff", "mypy"))
    }
    assert tools and not tools & set(with_tracing)


def _start(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings `serve` would start with in exactly this environment, checked as it checks
    them before listening (SettingsError if it would refuse to start)."""
    for name in list(os.environ):
        if name.upper().startswith("DICOMWEB_"):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    settings.check()
    return settings


def _image_environment() -> dict[str, str]:
    return {k: v for k, v in _runtime().env().items() if k.startswith("DICOMWEB_")}


def test_image_compose_and_kubernetes_environments_start_with_access_control(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The image listens on every address, so DICOMWEB_AUTH=none would refuse to start there:
    each deployment's environment (the image's ENV plus what compose or the manifests add)
    must pass serve's start-up checks with credentials required."""
    environments = {"image alone": _image_environment()}
    for name, service in _server_replicas(_compose()).items():
        env = {k: _interpolate(v, _env_example()) for k, v in _environment(service).items()}
        environments[f"compose {name}"] = {**_image_environment(), **env}
    secret = {str(k): str(v) for k, v in _manifests(EXAMPLE_SECRET)[0]["stringData"].items()}
    for workload in (_one("Deployment"), _one("Job")):
        for container in _containers(workload):
            env = {item["name"]: str(item["value"]) for item in container.get("env", [])}
            environments[f"{workload['kind']} {container['name']}"] = {
                **_image_environment(),
                **_config_map(),
                **secret,
                **env,
            }
    for where, environment in environments.items():
        try:
            settings = _start(environment, monkeypatch)
        except SettingsError as exc:
            pytest.fail(f"{where} cannot start: {exc}")
        assert settings.auth_methods == {"apikey"}, where
        assert not settings.insecure_no_auth, where
