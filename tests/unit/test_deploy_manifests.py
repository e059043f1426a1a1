"""deploy/ and Dockerfile.server, read as the tools that run them would read them (docs/scaling-out.md).

- every Kubernetes manifest in deploy/kubernetes validates against the API's JSON schemas (strict: no field
  the API does not know) of the oldest Kubernetes the manifests support (grpc probes are GA from 1.27) and
  of the newest that kubernetes-validate bundles, and the objects agree with each other (selectors, ports,
  Secret names and keys, the signing key's path);
- deploy/compose.yaml has the services, environment, secret and health checks the docs promise;
- Dockerfile.server copies every folder of pyproject.toml's package-dir, installs the postgres extra and
  takes the database from EDGEFLEET_DB;
- the gRPC health check that the image and the compose file run passes against a real controller and
  fails where none listens.
No engine or cluster runs them here: `docker-compose config` is run too where it is installed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import tomllib
import yaml

from ..conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "deploy" / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile.server"
KUBERNETES_VERSIONS = ("1.27", "1.37")
"""The oldest Kubernetes the manifests are for (grpc probes are GA from 1.27), and the newest schemas
kubernetes-validate 1.37.0 bundles."""
NOT_APPLIED = {"kustomization.yaml", "secrets.example.yaml"}
"""Files `kubectl apply -k` does not apply as resources: the kustomization itself, and the placeholder
Secrets (applying them again would overwrite the real ones)."""
HEALTH_ADDRESS = "127.0.0.1:50051"


def kubernetes_validate():
    """The kubernetes-validate package (the dev extra): skipped without it, failed under CI."""
    try:
        import kubernetes_validate
    except ModuleNotFoundError:
        message = "kubernetes-validate is not installed: pip install kubernetes-validate==1.37.0 (the dev extra)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI is set: a missing validator fails instead of skipping", pytrace=False)
        pytest.skip(message)
    return kubernetes_validate


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def objects(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def all_objects() -> dict[tuple[str, str], dict]:
    found: dict[tuple[str, str], dict] = {}
    for path in manifest_files():
        for obj in objects(path):
            key = (obj["kind"], obj["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = obj
    return found


# ---- Kubernetes ----

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schemas(path, version):
    validator = kubernetes_validate()
    docs = objects(path)
    assert docs, f"{path.name} holds no object"
    invalid = []
    for doc in docs:
        try:
            validator.validate(doc, version, strict=True)
        except validator.ValidationError as err:
            where = ".".join(str(part) for part in err.path)
            invalid.append(f"{doc['kind']}/{doc['metadata']['name']} at {where}: {err.message}")
    assert not invalid, f"{path.name} against Kubernetes {version}:\n" + "\n".join(invalid)


def test_kustomization_applies_every_manifest_but_the_placeholder_secrets():
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    expected = sorted(p.name for p in manifest_files() if p.name not in NOT_APPLIED)
    assert sorted(kustomization["resources"]) == expected
    namespaces = {obj["metadata"].get("namespace", kustomization["namespace"])
                  for obj in all_objects().values() if obj["kind"] != "Namespace"}
    assert namespaces == {kustomization["namespace"]}


def controller_deployment() -> tuple[dict, dict]:
    """The Deployment and its one container."""
    deployment = all_objects()[("Deployment", "edgefleet-controller")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


def option(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def test_deployment_runs_two_replicas_probed_on_grpc_health():
    deployment, container = controller_deployment()
    assert deployment["spec"]["replicas"] == 2
    grpc_port = {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"]
    assert option(container["args"], "--listen").endswith(f":{grpc_port}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port, probe
        assert container[probe]["grpc"].get("service", "") == "", f"{probe}: the controller reports health on ''"


def test_selectors_of_the_services_and_the_budget_match_the_pods():
    deployment, container = controller_deployment()
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in container["ports"]}
    selectors = {"Deployment": deployment["spec"]["selector"]["matchLabels"]}
    for (kind, name), obj in all_objects().items():
        if kind == "Service":
            selectors[f"Service {name}"] = obj["spec"]["selector"]
            assert {p["targetPort"] for p in obj["spec"]["ports"]} <= port_names, name
        elif kind == "PodDisruptionBudget":
            selectors[f"PodDisruptionBudget {name}"] = obj["spec"]["selector"]["matchLabels"]
    assert {"Deployment", "Service edgefleet-controller", "PodDisruptionBudget edgefleet-controller"} <= set(selectors)
    for what, selector in selectors.items():
        assert selector.items() <= pod_labels.items(), f"{what} selects {selector}, the pods have {pod_labels}"


def test_secrets_give_the_database_url_and_one_signing_key_file():
    deployment, container = controller_deployment()
    secrets = {name: obj for (kind, name), obj in all_objects().items() if kind == "Secret"}
    (db_env,) = [e for e in container["env"] if e["name"] == "EDGEFLEET_DB"]
    ref = db_env["valueFrom"]["secretKeyRef"]
    assert urlsplit(secrets[ref["name"]]["stringData"][ref["key"]]).scheme == "postgresql"
    key_path = Path(option(container["args"], "--signing-key"))
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == key_path.parent]
    assert mount["readOnly"] is True
    secret_name = volumes[mount["name"]]["secret"]["secretName"]
    assert key_path.name in secrets[secret_name]["stringData"]


# ---- compose ----

def interpolate(value, env: dict[str, str]):
    """Compose's ${NAME}, ${NAME:-default}, ${NAME:?message} and $$, throughout a loaded document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, how, rest = match.group(1), match.group(2) or "", match.group(3) or ""
        if name in env:
            return env[name]
        assert how != ":?", f"${{{name}}} is required: {rest}"
        return rest

    return re.sub(r"\$\$|\$\{(\w+)(:[-?])?([^}]*)\}", one, value)


def compose(env: dict[str, str] | None = None) -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), {"EDGEFLEET_PG_PASSWORD": "pw-1", **(env or {})})


def test_compose_requires_the_database_password():
    with pytest.raises(AssertionError, match="EDGEFLEET_PG_PASSWORD"):
        interpolate(yaml.safe_load(COMPOSE.read_text()), {})


def test_compose_runs_two_controllers_on_its_postgres():
    doc = compose()
    services = doc["services"]
    assert set(services) == {"postgres", "controller-a", "controller-b"}
    db = services["postgres"]["environment"]
    controllers = [services["controller-a"], services["controller-b"]]
    for ctl in controllers:
        url = urlsplit(ctl["environment"]["EDGEFLEET_DB"])
        assert (url.scheme, url.hostname, url.port) == ("postgresql", "postgres", 5432)
        assert (url.username, url.password, url.path) == (db["POSTGRES_USER"], "pw-1", "/" + db["POSTGRES_DB"])
        assert ctl["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "--db" not in ctl["command"], "EDGEFLEET_DB is the database; --db would win over it"
    published = [p.split(":")[0] for ctl in controllers for p in ctl["ports"]]
    assert len(published) == len(set(published)), published
    assert services["postgres"]["healthcheck"]["test"][1] == "pg_isready"


def test_compose_controllers_share_one_signing_key_secret():
    doc = compose()
    paths = set()
    for name in ("controller-a", "controller-b"):
        ctl = doc["services"][name]
        (secret,) = ctl["secrets"]
        key = Path(option(ctl["command"], "--signing-key"))
        assert key == Path("/run/secrets") / secret["target"], name
        paths.add((secret["source"], key))
    assert len(paths) == 1, "every replica signs with the same key"
    ((source, _),) = paths
    key_file = COMPOSE.parent / doc["secrets"][source]["file"]
    gitignore = (key_file.parent / ".gitignore").read_text().split()
    assert "*" in gitignore, f"{key_file.parent} keeps keys out of the repository"


@pytest.mark.skipif(not (shutil.which("docker-compose") or shutil.which("docker")),
                    reason="neither docker-compose nor docker is installed: compose's own check not run")
def test_compose_config_accepts_the_file():
    command = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    run = subprocess.run([*command, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True,
                         env={**os.environ, "EDGEFLEET_PG_PASSWORD": "pw-1"}, timeout=60)
    if run.returncode != 0 and command == ["docker", "compose"] and "unknown" in run.stderr:
        pytest.skip("docker has no compose plugin: compose's own check not run")
    assert run.returncode == 0, run.stderr


# ---- Dockerfile.server ----

def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines
            if line and not line.startswith("#")]


def test_image_copies_every_package_folder():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = set(project["tool"]["setuptools"]["package-dir"].values())
    copied = [Path(src) for op, args in dockerfile() if op == "COPY" for src in args.split()[:-1]]
    for folder in sorted(folders):
        assert any(Path(folder).is_relative_to(src) for src in copied), f"{folder}/ is not copied into the image"
    assert {Path("pyproject.toml"), Path(project["project"]["readme"])} <= set(copied)


def test_image_installs_postgres_and_reads_the_database_from_the_environment():
    steps = dockerfile()
    assert any(op == "RUN" and re.search(r"pip install '[^']*\[postgres\]'", args) for op, args in steps)
    env = " ".join(args for op, args in steps if op == "ENV")
    default = Path(re.search(r"EDGEFLEET_DB=(\S+)", env).group(1))
    (volume,) = [json.loads(args) for op, args in steps if op == "VOLUME"]
    assert any(default.is_relative_to(v) for v in volume), "the default SQLite file lives in the volume"
    (cmd,) = [json.loads(args) for op, args in steps if op == "CMD"]
    assert cmd[0] == "serve" and "--db" not in cmd, "EDGEFLEET_DB is the database; --db would win over it"
    (exposed,) = [args for op, args in steps if op == "EXPOSE"]
    assert option(cmd, "--listen").endswith(f":{exposed}") and HEALTH_ADDRESS.endswith(f":{exposed}")


# ---- the health check both run ----

def health_commands() -> dict[str, list[str]]:
    """The image's HEALTHCHECK and the compose controllers' healthcheck, as argv."""
    (healthcheck,) = [args for op, args in dockerfile() if op == "HEALTHCHECK"]
    image = json.loads(healthcheck[healthcheck.index("CMD") + len("CMD"):])
    services = compose()["services"]
    tests = {name: services[name]["healthcheck"]["test"] for name in ("controller-a", "controller-b")}
    assert tests["controller-a"] == tests["controller-b"]
    assert tests["controller-a"][0] == "CMD"
    return {"Dockerfile.server": image, "compose.yaml": tests["controller-a"][1:]}


@pytest.mark.parametrize("source", ["Dockerfile.server", "compose.yaml"])
def test_health_check_passes_on_a_serving_controller_and_fails_without_one(source, controller):
    argv = health_commands()[source]
    assert argv[:2] == ["python", "-c"] and HEALTH_ADDRESS in argv[2]

    def check(address: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", argv[2].replace(HEALTH_ADDRESS, address)],
                              capture_output=True, text=True, timeout=30)

    serving = check(controller.address)
    assert serving.returncode == 0, serving.stderr
    assert check(f"127.0.0.1:{free_port()}").returncode != 0
