"""The compose stack, checked without a Docker engine.

* ``compose/docker-compose.yml`` against the Compose Specification schema, the copy that
  ``check-jsonschema`` (a PyPI package, a dev dependency) vendors as
  ``vendor.compose-spec`` (compose-spec/compose-spec, Apache-2.0);
* every file and folder the stack mounts or builds from exists in the repository;
* ``promtool check config`` on the compose Prometheus config laid out as the container
  sees it (the rule file beside it), and on the copy ``make stack`` writes;
* Grafana provisioning: structure, and the data source uid the dashboards reference;
* images pinned, ports published on 127.0.0.1 only, healthchecks and ``depends_on``
  conditions, named volumes declared;
* the demo service's command is one ``pyrallel demo`` accepts, and what Prometheus
  scrapes is what it serves.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devtools import stack
from devtools.kafka_broker import DEFAULT_KAFKA_VERSION
from pyrallel import demo
from pyrallel.monitoring import generate
from pyrallel.monitoring.dashboards import PROMETHEUS_DATASOURCE_UID
from pyrallel.observability import http

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO_ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
PROVISIONING = COMPOSE_DIR / "grafana" / "provisioning"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return stack.load_compose(COMPOSE_FILE)


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


# -- the Compose Specification --------------------------------------------------------------


def _check_jsonschema(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_follows_the_compose_specification() -> None:
    result = _check_jsonschema("--builtin-schema", "vendor.compose-spec", COMPOSE_FILE)
    # An "invalid choice" here means a check-jsonschema without the schema (< 0.31).
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    broken = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    broken["services"]["kafka"]["restart_policy"] = "always"  # not a service key
    broken["services"]["grafana"]["depends_on"]["prometheus"]["condition"] = "when_ready"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    result = _check_jsonschema("--builtin-schema", "vendor.compose-spec", path)
    assert result.returncode != 0, result.stdout
    assert "restart_policy" in result.stdout and "when_ready" in result.stdout, result.stdout


# -- files the stack needs ------------------------------------------------------------------


def test_every_bind_mount_source_exists(compose: dict[str, Any]) -> None:
    mounts = {
        (name, target): source
        for name, service in _services(compose).items()
        for target, source in stack.bind_mounts(service, COMPOSE_DIR).items()
    }
    assert len(mounts) >= 5, mounts  # prometheus 2, grafana 3: the reader found them
    missing = {k: v for k, v in mounts.items() if not v.exists()}
    assert not missing, f"mounted but not in the repository: {missing}"
    for source in mounts.values():
        assert source.is_relative_to(REPO_ROOT), f"{source} is outside the repository"


def test_the_generated_files_are_what_is_mounted(compose: dict[str, Any]) -> None:
    prometheus = stack.bind_mounts(_services(compose)["prometheus"], COMPOSE_DIR)
    assert REPO_ROOT / generate.RULES_PATH in prometheus.values()
    grafana = stack.bind_mounts(_services(compose)["grafana"], COMPOSE_DIR)
    assert REPO_ROOT / generate.DASHBOARDS_DIR in grafana.values()


def _dockerfile_copies() -> list[str]:
    sources = []
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.startswith(("COPY ", "ADD ")):
            words = [w for w in line.split()[1:] if not w.startswith("--")]
            sources += words[:-1]
    return sources


def test_the_demo_image_builds_from_files_that_exist(compose: dict[str, Any]) -> None:
    build = _services(compose)["demo"]["build"]
    context = (COMPOSE_DIR / build["context"]).resolve()
    assert context == REPO_ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    copies = _dockerfile_copies()
    assert copies, "the Dockerfile copies nothing"
    for source in copies:
        assert (context / source).exists(), f"COPY {source}: not in the build context"
    # BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile: an allow-list.
    ignore = (COMPOSE_DIR / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert ignore[ignore.index("*") + 1 :], "no allow-list after '*'"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert {s.rstrip("/") for s in copies} <= allowed, (copies, allowed)


def test_grafana_paths_inside_the_container_are_mounted(compose: dict[str, Any]) -> None:
    grafana = _services(compose)["grafana"]
    mounts = stack.bind_mounts(grafana, COMPOSE_DIR)

    def on_host(container_path: str) -> Path:
        for target, source in mounts.items():
            if container_path == target or container_path.startswith(target + "/"):
                return source / container_path[len(target) :].lstrip("/")
        raise AssertionError(f"{container_path} is not inside any bind mount of grafana")

    home = on_host(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.is_file(), home
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "pyrallel.yml").read_text())
    (entry,) = provider["providers"]
    assert sorted(on_host(entry["options"]["path"]).glob("*.json")) == sorted(
        (REPO_ROOT / generate.DASHBOARDS_DIR).glob("*.json")
    )
    for kind in ("datasources", "dashboards"):
        assert on_host(f"/etc/grafana/provisioning/{kind}") == PROVISIONING / kind


# -- Prometheus -------------------------------------------------------------------------------


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool not found on PATH: install the Debian package `prometheus`")
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=120)


def _lay_out(config: dict[str, Any], beside: dict[str, Path], into: Path) -> Path:
    """The config and the files mounted beside it, copied as the container sees them."""
    into.mkdir(parents=True, exist_ok=True)
    for relative, source in beside.items():
        (into / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, into / relative)
    path = into / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _prometheus(compose: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Path]]:
    config_file, beside = stack.prometheus_files(compose, COMPOSE_DIR)
    assert config_file == COMPOSE_DIR / "prometheus" / "prometheus.yml"
    config: dict[str, Any] = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    return config, beside


def test_promtool_accepts_the_compose_prometheus_config(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    config, beside = _prometheus(compose)
    assert set(config["rule_files"]) == set(beside), "rule files not mounted beside the config"
    result = _promtool("check", "config", _lay_out(config, beside, tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(config['rule_files'])} rule files found" in result.stdout


def test_promtool_rejects_the_config_without_its_rule_file(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    config, _ = _prometheus(compose)
    result = _promtool("check", "config", _lay_out(config, {}, tmp_path))
    assert result.returncode != 0, result.stdout


def test_the_no_docker_copy_keeps_jobs_and_rules(compose: dict[str, Any], tmp_path: Path) -> None:
    config, beside = _prometheus(compose)
    targets = {
        "demo:9464": "127.0.0.1:19465",
        "host.docker.internal:9464": "127.0.0.1:9464",
        "localhost:9090": "127.0.0.1:19090",
    }
    local = stack.local_prometheus_config(config, targets)
    assert [j["job_name"] for j in local["scrape_configs"]] == [
        j["job_name"] for j in config["scrape_configs"]
    ]
    assert local["rule_files"] == config["rule_files"]
    assert {k: v for k, v in local.items() if k != "scrape_configs"} == {
        k: v for k, v in config.items() if k != "scrape_configs"
    }
    assert "127.0.0.1:19465" in json.dumps(local) and "demo:9464" not in json.dumps(local)
    result = _promtool("check", "config", _lay_out(local, beside, tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    with pytest.raises(stack.StackError, match="no local address"):
        stack.local_prometheus_config(config, {"demo:9464": "127.0.0.1:1"})


def _demo_args(compose: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    return stack.demo_command(compose, env or {}, {})


def _flag(args: list[str], flag: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"{flag}=")]
    return value


def test_prometheus_scrapes_what_the_demo_serves(compose: dict[str, Any]) -> None:
    config, _ = _prometheus(compose)
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    args = _demo_args(compose)
    assert jobs["pyrallel-demo"] == [f"demo:{_flag(args, '--metrics-port')}"]
    # A consumer on the host, reached through extra_hosts' host-gateway mapping.
    assert jobs["pyrallel-host"] == [f"host.docker.internal:{http.DEFAULT_PORT}"]
    assert "host.docker.internal:host-gateway" in _services(compose)["prometheus"]["extra_hosts"]


# -- Grafana provisioning ---------------------------------------------------------------------


def _dashboards() -> dict[str, dict[str, Any]]:
    files = sorted((REPO_ROOT / generate.DASHBOARDS_DIR).glob("*.json"))
    assert files
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in files}


def _datasource_refs(node: Any) -> list[Any]:
    """Every ``datasource`` value anywhere in a dashboard."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                found.append(value)
            found += _datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            found += _datasource_refs(item)
    return found


def test_the_provisioned_data_source_is_the_one_the_dashboards_use(
    compose: dict[str, Any],
) -> None:
    provisioned = yaml.safe_load((PROVISIONING / "datasources" / "pyrallel.yml").read_text())
    assert provisioned["apiVersion"] == 1
    (source,) = provisioned["datasources"]
    assert source["uid"] == PROMETHEUS_DATASOURCE_UID
    assert source["type"] == "prometheus" and source["access"] == "proxy"
    assert source["url"] == "http://prometheus:9090", "the compose service name and port"
    config, _ = _prometheus(compose)
    assert source["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]

    for name, dashboard in _dashboards().items():
        (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
        assert variable["query"] == source["type"], name
        assert variable["current"]["value"] == source["uid"], name
        refs = _datasource_refs(dashboard["panels"]) + _datasource_refs(dashboard["templating"])
        uids = {r["uid"] for r in refs if isinstance(r, dict)}
        assert refs and uids <= {"${datasource}", source["uid"]}, (name, uids)
        assert not [r for r in refs if isinstance(r, str)], f"{name}: datasource by name"


def test_the_dashboard_provider_loads_files(compose: dict[str, Any]) -> None:
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "pyrallel.yml").read_text())
    assert provider["apiVersion"] == 1
    (entry,) = provider["providers"]
    assert entry["type"] == "file" and entry["options"]["path"].startswith("/")
    assert entry["allowUiUpdates"] is False, "generated dashboards must not drift in the UI"
    for name, dashboard in _dashboards().items():
        assert dashboard["uid"] and dashboard["title"], name


def test_grafana_lets_anonymous_viewers_in_and_no_more(compose: dict[str, Any]) -> None:
    env = _services(compose)["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


# -- images, ports, health, volumes -----------------------------------------------------------


def _tag(image: str) -> str:
    name, _, tag = image.rpartition(":")
    assert name and "/" not in tag, f"{image}: no tag"
    return tag


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in _services(compose).items():
        image = service.get("image")
        assert image or "build" in service, name
        if image is None:
            continue
        tag = _tag(image)
        assert tag != "latest", f"{name}: {image}"
        if "build" not in service:  # pulled images: a version number
            assert re.search(r"\d+\.\d+", tag), f"{name}: {image} is not a version"
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert froms and all(re.search(r":\S*\d+\.\d+", f) for f in froms), froms


def test_kafka_is_the_version_the_tests_run(compose: dict[str, Any]) -> None:
    assert _services(compose)["kafka"]["image"] == f"apache/kafka:{DEFAULT_KAFKA_VERSION}"


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    published = 0
    for name, service in _services(compose).items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), (name, port)
                assert str(port).count(":") == 2, (name, port)
    assert published >= 4, "kafka, demo, prometheus, grafana publish a port each"


def test_every_service_has_a_healthcheck_and_waits_for_healthy_ones(
    compose: dict[str, Any],
) -> None:
    services = _services(compose)
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs the long form"
        for dependency, spec in depends.items():
            assert spec["condition"] == "service_healthy", (name, dependency)
            assert "healthcheck" in services[dependency], (name, dependency)
    assert services["demo"]["depends_on"].keys() == {"kafka"}
    assert services["grafana"]["depends_on"].keys() == {"prometheus"}


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    used = set()
    for service in _services(compose).values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            if not source.startswith((".", "/")):
                used.add(source)
    assert used and used == set(compose["volumes"]), (used, compose["volumes"])


# -- the demo service ----------------------------------------------------------------------------


def test_the_demo_command_is_a_valid_pyrallel_demo(compose: dict[str, Any]) -> None:
    args = _demo_args(compose)
    assert args[0] == "demo", "the image's entrypoint is `pyrallel`"
    parsed = demo._parser().parse_args(args[1:])
    assert parsed.continuous and parsed.metrics_port == 9464
    assert parsed.poison_key == "", "no poison unless POISON_KEY is set"
    assert parsed.bootstrap_servers == "kafka:19092"
    poisoned = demo._parser().parse_args(_demo_args(compose, {"POISON_KEY": "key-7"})[1:])
    assert poisoned.poison_key == "key-7"


def test_only_the_container_binds_beyond_loopback(compose: dict[str, Any]) -> None:
    # In the container the endpoint must accept Prometheus' connections from another
    # container; the library and CLI defaults stay on loopback.
    assert _flag(_demo_args(compose), "--metrics-host") == "0.0.0.0"
    assert demo._parser().parse_args([]).metrics_host == "127.0.0.1"
    assert inspect.signature(http.serve).parameters["host"].default == "127.0.0.1"


def test_kafka_listeners_match_the_published_port_and_the_demo(compose: dict[str, Any]) -> None:
    kafka = _services(compose)["kafka"]
    env = kafka["environment"]
    advertised = dict(item.split("://", 1) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised["HOST"] == "127.0.0.1:9092"
    assert "127.0.0.1:9092:9092" in kafka["ports"]
    assert advertised["DOCKER"] == _flag(_demo_args(compose), "--bootstrap-servers")
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = {item.split("://", 1)[0] for item in env["KAFKA_LISTENERS"].split(",")}
    assert listeners == set(protocols), (listeners, protocols)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert kafka["hostname"] == advertised["DOCKER"].split(":")[0]
