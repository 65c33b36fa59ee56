"""The container deployment (docker-compose.yml, Dockerfile) agrees with the code it runs.

Docker need not be installed: the files are parsed and checked against the settings object,
the console scripts of pyproject.toml and the ports the services listen on.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from pixpipe.settings import NetworkSettings, Settings, environment_variables

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

PREFIX = "PIXPIPE_"
KNOWN_VARIABLES = frozenset(environment_variables())

# The services built from our image and the console script each must run.
APP_SERVICES = {
    "migrate": "pixpipe-migrate",
    "ingest": "pixpipe-ingest",
    "worker": "pixpipe-worker",
    "notifier": "pixpipe-notifier",
    "gateway": "pixpipe-gateway",
}
# The services other containers reach, and the network settings field holding the port each
# listens on.
LISTENING_PORT_FIELD = {"ingest": "ingest_port", "notifier": "status_port",
                        "gateway": "gateway_port"}
# The long-running services that wait for the schema and for JetStream.
GATED_SERVICES = ("ingest", "worker", "notifier", "gateway")
HEALTH_CHECKED = ("nats", "postgres", "ingest", "notifier", "gateway")
# Read by boto3 for object storage: the standard names, as every S3 tool expects them.
AWS_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")

Service = dict[str, Any]


# --- reading the files ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    assert COMPOSE_FILE.is_file(), f"{COMPOSE_FILE.name} is missing at the top of the repository"
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict) and isinstance(document.get("services"), dict), (
        f"{COMPOSE_FILE.name} has no 'services' mapping")
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Service]:
    return dict(compose["services"])


@pytest.fixture(scope="module")
def console_scripts() -> dict[str, str]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    return dict(project.get("scripts", {}))


@dataclass
class Stage:
    """One build stage of the Dockerfile: its base image, name and instructions."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        return [argument for name, argument in self.instructions if name == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Split the Dockerfile into stages of (INSTRUCTION, arguments), continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    stages: list[Stage] = []
    for line in logical:
        keyword, _, argument = line.partition(" ")
        keyword, argument = keyword.upper(), argument.strip()
        if keyword == "FROM":
            words = [word for word in argument.split() if not word.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"Dockerfile: '{keyword}' comes before the first FROM"
            stages[-1].instructions.append((keyword, argument))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    assert DOCKERFILE.is_file(), f"{DOCKERFILE.name} is missing at the top of the repository"
    stages = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    assert stages, "the Dockerfile has no FROM"
    return stages


def dockerfile_env(stage: Stage) -> dict[str, str]:
    """The ENV of one stage (``ENV K=V K2=V2`` or the legacy ``ENV K V``)."""
    environment: dict[str, str] = {}
    for argument in stage.arguments("ENV"):
        words = shlex.split(argument)
        if words and "=" not in words[0]:
            environment[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            environment[key] = value
    return environment


def exec_form(argument: str) -> list[str]:
    """CMD/ENTRYPOINT arguments, JSON (exec) form or shell form."""
    if argument.startswith("["):
        words = json.loads(argument)
        assert isinstance(words, list)
        return [str(word) for word in words]
    return shlex.split(argument)


# --- compose semantics: interpolation, environment, ports, volumes -------------------------

_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+=])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")


def interpolated_names(text: str) -> list[str]:
    return [match["braced"] or match["bare"] for match in _INTERPOLATION.finditer(text)
            if match["braced"] or match["bare"]]


def interpolate(text: str) -> str:
    """The value compose gives ``text`` when the host sets none of the variables it names."""

    def replace(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        if match["op"] in ("-", ":-", "=", ":="):
            return interpolate(match["arg"])
        return ""

    return _INTERPOLATION.sub(replace, text)


def compose_scalar(value: object) -> str | None:
    """How compose turns an environment value into a string (None: taken from the host)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return interpolate(str(value))


def compose_environment(service: Service) -> dict[str, str | None]:
    """A service's ``environment`` (mapping or list form), interpolated."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs: dict[str, str | None] = {}
        for item in environment:
            key, equals, value = str(item).partition("=")
            pairs[key] = interpolate(value) if equals else None
        return pairs
    return {str(key): compose_scalar(value) for key, value in environment.items()}


def uses_our_image(service: Service) -> bool:
    return "build" in service


def effective_environment(service: Service, stages: list[Stage]) -> dict[str, str]:
    """What a container of this service sees: the image's ENV, then the compose environment."""
    environment = dict(dockerfile_env(stages[-1])) if uses_our_image(service) else {}
    for key, value in compose_environment(service).items():
        if value is not None:
            environment[key] = value
    return environment


def settings_of(name: str, service: Service, stages: list[Stage],
                monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a container of this service builds, from its environment alone."""
    for variable in list(os.environ):
        if variable.startswith(PREFIX):
            monkeypatch.delenv(variable)
    for key, value in effective_environment(service, stages).items():
        if key.startswith(PREFIX):
            monkeypatch.setenv(key, value)
    try:
        return Settings()
    except Exception as error:
        pytest.fail(f"service '{name}': its environment is not valid for Settings: {error}")


def command_words(service: Service) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    if isinstance(command, list):
        return [str(word) for word in command]
    return shlex.split(str(command))


@dataclass(frozen=True)
class PortMapping:
    host: str | None
    container: int


def port_mappings(service: Service) -> list[PortMapping]:
    mappings: list[PortMapping] = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            published = entry.get("published")
            mappings.append(PortMapping(None if published is None else str(published),
                                        int(entry["target"])))
            continue
        text = interpolate(str(entry)).split("/")[0]
        host, _, container = text.rpartition(":")
        mappings.append(PortMapping(host or None, int(container)))
    return mappings


@dataclass(frozen=True)
class Mount:
    source: str | None
    target: str
    named_volume: bool


def mounts(service: Service) -> list[Mount]:
    result: list[Mount] = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            source = entry.get("source")
            result.append(Mount(source, str(entry["target"]),
                                entry.get("type", "volume") == "volume" and bool(source)))
            continue
        parts = interpolate(str(entry)).split(":")
        if len(parts) == 1:
            result.append(Mount(None, parts[0], False))  # an anonymous volume
            continue
        source, target = parts[0], parts[1]
        named = not source.startswith((".", "/", "~"))
        result.append(Mount(source, target, named))
    return result


def depends_on(service: Service) -> dict[str, str | None]:
    """Dependency → condition (None for the list form, which waits for nothing)."""
    dependencies = service.get("depends_on") or {}
    if isinstance(dependencies, list):
        return dict.fromkeys(map(str, dependencies))
    return {str(name): (spec or {}).get("condition") for name, spec in dependencies.items()}


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text: str) -> float:
    """A compose duration such as ``30s`` or ``1m30s``."""
    assert re.fullmatch(rf"(?:{_DURATION.pattern})+", text), (
        f"'{text}' is not a compose duration like '30s' or '1m30s'")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION.findall(text))


def walk(node: object, path: str) -> Iterator[tuple[str, str]]:
    """Every mapping key, ``KEY=value`` list item and ``${NAME}`` reference, with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, str(key)
            yield from walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            if isinstance(item, str) and re.match(r"[A-Za-z_][A-Za-z0-9_]*=", item):
                yield f"{path}[{index}]", item.partition("=")[0]
            yield from walk(item, f"{path}[{index}]")
    elif isinstance(node, str):
        for name in interpolated_names(node):
            yield path, name


def require_service(services: Mapping[str, Service], name: str) -> Service:
    assert name in services, (
        f"docker-compose.yml has no '{name}' service (it has: {', '.join(services)})")
    return services[name]


# --- 1. environment variables -----------------------------------------------------------------

def test_every_pixpipe_variable_names_a_setting(compose: dict[str, Any],
                                                stages: list[Stage]) -> None:
    places: dict[str, list[str]] = {}
    for where, name in walk(compose, ""):
        if name.startswith(PREFIX) and name not in KNOWN_VARIABLES:
            places.setdefault(name, []).append(where or "top level")
    # An anchor merged into several services shows up once per service; name the first place.
    unknown = [f"{name} (docker-compose.yml, at {where[0]}"
               + (f" and {len(where) - 1} more places)" if len(where) > 1 else ")")
               for name, where in sorted(places.items())]
    for stage in stages:
        unknown += [f"{name} (Dockerfile, ENV of the stage FROM {stage.base})"
                    for name in dockerfile_env(stage)
                    if name.startswith(PREFIX) and name not in KNOWN_VARIABLES]
    assert not unknown, (
        "these variables are not fields of pixpipe.settings.Settings, so the services would "
        "silently ignore them: " + "; ".join(unknown))


def test_app_services_are_configured_only_through_settings(
        services: dict[str, Service]) -> None:
    for name in APP_SERVICES:
        spec = require_service(services, name)
        assert uses_our_image(spec), f"service '{name}' must be built from ./Dockerfile"
        assert "env_file" not in spec, (
            f"service '{name}' uses env_file, whose variables this test cannot check; "
            "put them under environment")
        foreign = sorted(key for key in compose_environment(spec)
                         if not key.startswith((PREFIX, *AWS_VARIABLES)))
        assert not foreign, (
            f"service '{name}' sets {', '.join(foreign)}, which pixpipe never reads; "
            "its configuration is PIXPIPE_* variables and the standard AWS credentials only")


def test_each_service_environment_is_valid_settings(
        services: dict[str, Service], stages: list[Stage],
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in APP_SERVICES:
        settings_of(name, require_service(services, name), stages, monkeypatch)


def test_one_image_serves_every_app_service(services: dict[str, Service]) -> None:
    images = {name: require_service(services, name).get("image") for name in APP_SERVICES}
    builds = {name: json.dumps(require_service(services, name).get("build"), sort_keys=True)
              for name in APP_SERVICES}
    assert len(set(images.values())) == 1, f"the app services use different images: {images}"
    assert len(set(builds.values())) == 1, f"the app services build differently: {builds}"


# --- 2. commands ------------------------------------------------------------------------------

def _check_console_script(script: str, where: str, scripts: dict[str, str]) -> None:
    assert script in scripts, (
        f"{where} runs '{script}', which is not a console script in pyproject.toml "
        f"[project.scripts] (declared: {', '.join(sorted(scripts))})")
    module_name, _, attribute_path = scripts[script].partition(":")
    module = importlib.import_module(module_name)
    target: object = module
    for attribute in attribute_path.split("."):
        assert hasattr(target, attribute), (
            f"{where}: console script '{script}' points at {scripts[script]}, "
            f"but {module_name} has no '{attribute_path}'")
        target = getattr(target, attribute)
    assert callable(target), f"{where}: {scripts[script]} is not callable"


def test_service_commands_are_console_scripts(services: dict[str, Service],
                                              console_scripts: dict[str, str]) -> None:
    for name, expected in APP_SERVICES.items():
        words = command_words(require_service(services, name))
        assert words, f"service '{name}' sets no command; it must run '{expected}'"
        assert words[0] == expected, (
            f"service '{name}' runs '{words[0]}' but should run '{expected}'")
        _check_console_script(words[0], f"service '{name}'", console_scripts)


def test_image_default_command_is_a_console_script(stages: list[Stage],
                                                   console_scripts: dict[str, str]) -> None:
    commands = stages[-1].arguments("CMD")
    assert commands, "the final Dockerfile stage has no CMD"
    words = exec_form(commands[-1])
    _check_console_script(words[0], "the Dockerfile CMD", console_scripts)


# --- 3. ports and addresses -------------------------------------------------------------------

def test_published_ports_are_the_ports_the_services_listen_on(
        services: dict[str, Service], stages: list[Stage],
        monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = NetworkSettings.model_fields
    for name, port_field in LISTENING_PORT_FIELD.items():
        spec = require_service(services, name)
        settings = settings_of(name, spec, stages, monkeypatch)
        port = getattr(settings.network, port_field)
        assert port == defaults[port_field].default, (
            f"service '{name}' listens on {port}, not on the documented default "
            f"{defaults[port_field].default} (PIXPIPE_{port_field.upper()})")
        assert settings.network.bind_host == "0.0.0.0", (
            f"service '{name}' binds {settings.network.bind_host}; other containers reach it "
            "only if PIXPIPE_BIND_HOST is 0.0.0.0")
        containers = [mapping.container for mapping in port_mappings(spec)]
        assert port in containers, (
            f"service '{name}' listens on {port} but publishes container ports {containers}")
        assert not set(containers) - {port}, (
            f"service '{name}' publishes container ports {containers}; it listens only on {port}")


def _resolve_address(address: str, services: dict[str, Service]) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    assert host in services, (
        f"address '{address}' names host '{host}', which is not a compose service "
        f"(services: {', '.join(services)})")
    return host, int(port)


def test_gateway_addresses_point_at_the_grpc_services(
        services: dict[str, Service], stages: list[Stage],
        monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = settings_of("gateway", require_service(services, "gateway"), stages, monkeypatch)
    for variable, address, script, port_field in (
            ("PIXPIPE_INGEST_ADDRESS", gateway.network.resolved_ingest_address,
             "pixpipe-ingest", "ingest_port"),
            ("PIXPIPE_STATUS_ADDRESS", gateway.network.resolved_status_address,
             "pixpipe-notifier", "status_port")):
        host, port = _resolve_address(address, services)
        words = command_words(services[host])
        assert words[:1] == [script], (
            f"the gateway's {variable}={address} points at service '{host}', which runs "
            f"{words[:1]} instead of '{script}'")
        listening = getattr(settings_of(host, services[host], stages, monkeypatch).network,
                            port_field)
        assert port == listening, (
            f"the gateway's {variable}={address} uses port {port}, but '{host}' listens on "
            f"{listening}")


def test_database_and_nats_urls_point_at_their_services(
        services: dict[str, Service], stages: list[Stage],
        monkeypatch: pytest.MonkeyPatch) -> None:
    postgres_env = compose_environment(require_service(services, "postgres"))
    nats_command = command_words(require_service(services, "nats"))
    nats_port = (int(nats_command[nats_command.index("-p") + 1])
                 if "-p" in nats_command else 4222)
    for name in APP_SERVICES:
        settings = settings_of(name, services[name], stages, monkeypatch)
        assert settings.storage.database_url, (
            f"service '{name}' has no PIXPIPE_DATABASE_URL; it would use a private SQLite file")
        database = urlsplit(settings.storage.database_url)
        assert database.scheme.startswith("postgres"), (
            f"service '{name}': PIXPIPE_DATABASE_URL is {database.scheme}, not PostgreSQL")
        assert database.hostname == "postgres" and (database.port or 5432) == 5432, (
            f"service '{name}': PIXPIPE_DATABASE_URL points at {database.hostname}:"
            f"{database.port}, not at the 'postgres' service on 5432")
        expected = (postgres_env.get("POSTGRES_USER"), postgres_env.get("POSTGRES_PASSWORD"),
                    postgres_env.get("POSTGRES_DB"))
        actual = (database.username, database.password, database.path.lstrip("/"))
        assert actual == expected, (
            f"service '{name}': PIXPIPE_DATABASE_URL has user/password/database {actual}, "
            f"but the postgres service creates {expected}")
        assert settings.nats.url, (
            f"service '{name}' has no PIXPIPE_NATS_URL; it would look for an embedded server")
        for server in settings.nats.url.split(","):
            nats = urlsplit(server.strip())
            assert (nats.hostname, nats.port or 4222) == ("nats", nats_port), (
                f"service '{name}': PIXPIPE_NATS_URL server {server} is not the 'nats' "
                f"service on {nats_port}")


# --- 4. services, health checks, start order, scaling ----------------------------------------

def _python_snippet(test: list[str]) -> str | None:
    for index, word in enumerate(test[:-1]):
        if word.endswith(("python", "python3")) and test[index + 1] == "-c":
            return test[index + 2]
    return None


def test_required_services_have_health_checks(
        services: dict[str, Service], stages: list[Stage],
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in HEALTH_CHECKED:
        check = require_service(services, name).get("healthcheck") or {}
        test = check.get("test")
        assert test and not check.get("disable") and test != ["NONE"], (
            f"service '{name}' has no health check")
        words = test if isinstance(test, list) else ["CMD-SHELL", str(test)]
        assert words[0] in ("CMD", "CMD-SHELL"), (
            f"service '{name}': a health check test starts with CMD or CMD-SHELL, not {words[0]}")
        snippet = _python_snippet(words)
        if snippet is not None:
            compile(snippet, f"<{name} health check>", "exec")
        if name in LISTENING_PORT_FIELD:
            port = getattr(settings_of(name, services[name], stages, monkeypatch).network,
                           LISTENING_PORT_FIELD[name])
            assert f":{port}" in " ".join(words), (
                f"service '{name}' listens on {port}, but its health check probes "
                f"{' '.join(words)!r}")


def test_migrate_runs_once_and_gates_the_services(services: dict[str, Service]) -> None:
    migrate = require_service(services, "migrate")
    assert migrate.get("restart") == "no", (
        f"service 'migrate' must be one-shot with restart: \"no\" (quoted, or YAML reads it as "
        f"false); it has restart: {migrate.get('restart')!r}")
    assert depends_on(migrate).get("postgres") == "service_healthy", (
        "service 'migrate' must depend on postgres with condition: service_healthy")
    for name in GATED_SERVICES:
        conditions = depends_on(require_service(services, name))
        assert conditions.get("migrate") == "service_completed_successfully", (
            f"service '{name}' must depend on migrate with condition: "
            f"service_completed_successfully (it has {conditions.get('migrate')!r})")
        assert conditions.get("nats") == "service_healthy", (
            f"service '{name}' must depend on nats with condition: service_healthy "
            f"(it has {conditions.get('nats')!r})")


def test_worker_can_be_scaled(services: dict[str, Service], stages: list[Stage],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    worker = require_service(services, "worker")
    assert "container_name" not in worker, (
        "service 'worker' sets container_name, so `docker compose up --scale worker=N` fails")
    assert not port_mappings(worker), (
        "service 'worker' publishes ports; replicas would fight over them and it serves "
        "nothing")
    replicas = (worker.get("deploy") or {}).get("replicas")
    assert replicas is None or int(replicas) >= 2, (
        f"service 'worker' runs {replicas} replica; several are expected")
    grace = settings_of("worker", worker, stages, monkeypatch).lifecycle.shutdown_grace_seconds
    stop = duration_seconds(str(worker.get("stop_grace_period", "10s")))
    assert stop > grace, (
        f"service 'worker' is killed {stop:g} s after SIGTERM but gives the jobs in hand "
        f"{grace:g} s (PIXPIPE_SHUTDOWN_GRACE_SECONDS); raise stop_grace_period")


# --- 5. the Dockerfile ------------------------------------------------------------------------

def test_dockerfile_builds_a_slim_non_root_image(stages: list[Stage]) -> None:
    assert len(stages) >= 2, "the Dockerfile must be multi-stage (build stage, runtime stage)"
    for stage in stages:
        assert "slim" in stage.base, f"stage FROM {stage.base} is not a slim base image"
    final = stages[-1]
    builders = {stage.name for stage in stages[:-1] if stage.name}
    copied_from = {match[1] for argument in final.arguments("COPY")
                   for match in re.finditer(r"--from=(\S+)", argument)}
    assert copied_from & builders, (
        f"the final stage copies nothing from the build stages {sorted(builders)}")
    users = final.arguments("USER")
    assert users, "the final Dockerfile stage sets no USER, so the services run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"the final stage runs as USER {users[-1]}"
    if not user.isdigit():
        assert any(("useradd" in run or "adduser" in run) and user in run
                   for run in final.arguments("RUN")), (
            f"the final stage runs as USER {user} but never creates that user")
    environment = dockerfile_env(final)
    for variable in ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"):
        assert environment.get(variable) == "1", f"the final stage should set {variable}=1"
    data_dir = environment.get("PIXPIPE_DATA_DIR")
    assert data_dir, "the final stage should set PIXPIPE_DATA_DIR to a directory it owns"
    assert any("chown" in run and data_dir in run for run in final.arguments("RUN")), (
        f"PIXPIPE_DATA_DIR={data_dir} is not chowned to the non-root user")
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "[dev]" not in text, "the image must not install the dev extras"


def test_dockerfile_exposes_the_service_ports(stages: list[Stage]) -> None:
    exposed = {int(word.split("/")[0]) for argument in stages[-1].arguments("EXPOSE")
               for word in argument.split()}
    expected = {int(NetworkSettings.model_fields[port_field].default)
                for port_field in LISTENING_PORT_FIELD.values()}
    assert expected <= exposed, (
        f"the Dockerfile EXPOSEs {sorted(exposed)}; missing {sorted(expected - exposed)}")


def test_dockerignore_keeps_the_build_context_small_but_complete() -> None:
    assert DOCKERIGNORE.is_file(), ".dockerignore is missing"
    patterns = {line.strip().strip("/") for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    for needed in (".git", ".venv"):
        assert needed in patterns, f".dockerignore should exclude {needed}"
    for kept in ("src", "services", "pyproject.toml", "README.md"):
        assert kept not in patterns, f".dockerignore excludes {kept}, which the build needs"


# --- 6. shared state --------------------------------------------------------------------------

def _mount_holding(path: PurePosixPath, spec: Service) -> Mount | None:
    covering = [mount for mount in mounts(spec)
                if path == PurePosixPath(mount.target)
                or PurePosixPath(mount.target) in path.parents]
    return max(covering, key=lambda mount: len(mount.target), default=None)


def test_workers_and_gateway_share_the_images_volume_or_bucket(
        compose: dict[str, Any], services: dict[str, Service], stages: list[Stage],
        monkeypatch: pytest.MonkeyPatch) -> None:
    declared = set(compose.get("volumes") or {})
    settings = {name: settings_of(name, require_service(services, name), stages, monkeypatch)
                for name in ("worker", "gateway")}
    buckets = {name: (each.storage.url, each.storage.s3_endpoint_url)
               for name, each in settings.items()}
    if any(storage_url for storage_url, _ in buckets.values()):
        assert buckets["worker"] == buckets["gateway"], (
            f"workers write images to {buckets['worker']} but the gateway reads "
            f"{buckets['gateway']}")
        return
    sources = {}
    for name in ("worker", "gateway"):
        images_dir = PurePosixPath(settings[name].storage.images_dir)
        mount = _mount_holding(images_dir, services[name])
        assert mount is not None, (
            f"service '{name}' keeps processed images in {images_dir}, which is on no volume: "
            "they vanish with the container and the others never see them")
        assert mount.named_volume and mount.source in declared, (
            f"service '{name}' keeps processed images on '{mount.source}:{mount.target}'; "
            "it must be a named volume declared under the top-level volumes")
        sources[name] = mount.source
    assert sources["worker"] == sources["gateway"], (
        f"workers write images to volume '{sources['worker']}' but the gateway serves them "
        f"from '{sources['gateway']}'")


def test_nats_and_postgres_keep_their_state_on_volumes(
        compose: dict[str, Any], services: dict[str, Service]) -> None:
    declared = set(compose.get("volumes") or {})
    nats_command = command_words(require_service(services, "nats"))
    assert "-js" in nats_command or "--jetstream" in nats_command, (
        f"nats runs {nats_command} without JetStream (-js)")
    store_flag = next((flag for flag in ("-sd", "--store_dir") if flag in nats_command), None)
    assert store_flag, "nats sets no JetStream storage directory (-sd)"
    for name, directory in (
            ("nats", nats_command[nats_command.index(store_flag) + 1]),
            ("postgres", "/var/lib/postgresql/data")):
        mount = _mount_holding(PurePosixPath(directory), services[name])
        assert mount is not None and mount.named_volume and mount.source in declared, (
            f"service '{name}' keeps its state in {directory}, which is not on a named volume")
