"""docker-compose.yml, checked without Docker: services, env names, volumes, dependencies."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from stream.settings import PROJECT_ROOT, Settings
from tests.support import dashboards


class ComposeLoader(yaml.SafeLoader):
    """YAML with compose's merge tags (`!reset`, `!override`) read as plain values."""


for _tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(
        _tag,
        lambda loader, node: (
            loader.construct_mapping(node)
            if isinstance(node, yaml.MappingNode)
            else loader.construct_sequence(node)
            if isinstance(node, yaml.SequenceNode)
            else loader.construct_scalar(node)
        ),
    )


def compose(name: str = "docker-compose.yml") -> dict[str, Any]:
    return yaml.load((PROJECT_ROOT / name).read_text(), Loader=ComposeLoader)


SERVICES = compose()["services"]
FIELDS = {f"CLICKSCORE_{name.upper()}" for name in Settings.model_fields}


def _environment(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return dict(env)


def test_the_production_services_are_all_there() -> None:
    expected = {
        "kafka",
        "kafka-topics",
        "postgres",
        "migrate",
        "triton",
        "worker",
        "actions",
        "outcomes",
        "trainer",
        "prometheus",
        "grafana",
    }
    assert expected <= set(SERVICES)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_an_image_or_a_build_that_exists(name: str) -> None:
    service = SERVICES[name]
    assert "image" in service or "build" in service
    build = service.get("build")
    if build is not None:
        context = PROJECT_ROOT / (build if isinstance(build, str) else build.get("context", "."))
        dockerfile = (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert (context / dockerfile).is_file()


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_clickscore_variables_are_settings_fields(name: str) -> None:
    names = {k for k in _environment(SERVICES[name]) if k.startswith("CLICKSCORE_")}
    assert names <= FIELDS, names - FIELDS


def test_the_env_file_example_names_settings_fields_and_holds_the_secrets() -> None:
    lines = (PROJECT_ROOT / ".env.example").read_text().splitlines()
    names = {line.split("=", 1)[0] for line in lines if "=" in line and not line.startswith("#")}
    assert {n for n in names if n.startswith("CLICKSCORE_")} <= FIELDS
    assert "POSTGRES_PASSWORD" in names and "CLICKSCORE_DATABASE_URL" in names


def test_no_secret_is_written_in_the_compose_file() -> None:
    text = (PROJECT_ROOT / "docker-compose.yml").read_text()
    assert re.search(r"PASSWORD:\s*\$\{", text)
    assert not re.search(r"postgresql\+asyncpg://[^@\s]*:[^@\s]*@", text)
    for name, service in SERVICES.items():
        if name in {"migrate", "worker", "actions", "trainer"}:
            assert service.get("env_file") == ".env", name


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_dependencies_wait_on_something_that_can_report(name: str) -> None:
    for target, spec in (SERVICES[name].get("depends_on") or {}).items():
        assert target in SERVICES
        condition = spec["condition"]
        if condition == "service_healthy":
            assert "healthcheck" in SERVICES[target], f"{name} waits on {target}'s health"
        else:
            assert condition == "service_completed_successfully"
            assert SERVICES[target].get("restart") == "no", f"{target} must be one-shot"


def test_volumes_are_declared_or_exist_in_the_project() -> None:
    declared = set(compose().get("volumes") or {})
    for name, service in SERVICES.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (PROJECT_ROOT / source).exists(), f"{name}: {source}"
            else:
                assert source in declared, f"{name}: {source}"


def test_ports_are_valid_and_workers_can_scale() -> None:
    for service in SERVICES.values():
        for port in service.get("ports") or []:
            assert re.fullmatch(r"(\d+\.\d+\.\d+\.\d+:)?\d+(:\d+)?", str(port))
    worker = SERVICES["worker"]
    # Replicas in one consumer group: no fixed name, no host port to collide on.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["deploy"]["replicas"] >= 2


def test_triton_runs_explicit_model_control_on_a_gpu_and_the_cpu_variant_drops_it() -> None:
    triton = SERVICES["triton"]
    assert "--model-control-mode=explicit" in triton["command"]
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert any(v.startswith("./model_repo:") for v in triton["volumes"])
    cpu = compose("docker-compose.cpu.yml")["services"]["triton"]
    assert cpu["deploy"] == {}
    assert not any("config.gpu.pbtxt" in v for v in cpu["volumes"])


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> repository path, for the service's bind mounts of project files."""
    mounts = {}
    for volume in service.get("volumes") or []:
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = source
    return mounts


def _scrape_targets() -> dict[str, list[tuple[str, int]]]:
    """Prometheus job -> (host, port) it scrapes, from static targets and DNS names."""
    jobs: dict[str, list[tuple[str, int]]] = {}
    for job in dashboards.load_yaml(dashboards.PROMETHEUS)["scrape_configs"]:
        found = jobs.setdefault(job["job_name"], [])
        for static in job.get("static_configs") or []:
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                found.append((host, int(port)))
        for dns in job.get("dns_sd_configs") or []:
            found += [(name, int(dns["port"])) for name in dns["names"]]
    return jobs


def test_prometheus_scrapes_the_workers_actions_and_triton_on_their_metrics_ports() -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert _scrape_targets() == {
        "clickscore-worker": [("worker", defaults.metrics_port)],
        "clickscore-actions": [("actions", defaults.actions_metrics_port)],
        "clickscore-outcomes": [("outcomes", defaults.outcomes_metrics_port)],
        "triton": [("triton", defaults.triton_metrics_port)],
    }
    # The services bind their metrics endpoint to every interface in the container.
    for name in ("worker", "actions", "outcomes"):
        assert _environment(SERVICES[name])["CLICKSCORE_METRICS_HOST"] == "0.0.0.0"
    prometheus = SERVICES["prometheus"]
    assert _mounts(prometheus)["/etc/prometheus"] == "./deploy/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_grafana_mounts_its_provisioning_and_logs_in_with_a_password_from_env() -> None:
    grafana = SERVICES["grafana"]
    env = _environment(grafana)
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?.+\}", env["GF_SECURITY_ADMIN_PASSWORD"])
    lines = (PROJECT_ROOT / ".env.example").read_text().splitlines()
    assert any(line.startswith("GRAFANA_ADMIN_PASSWORD=") for line in lines)
    mounts = _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    provider = dashboards.load_yaml(dashboards.DASHBOARD_PROVIDERS)["providers"][0]
    dashboards_dir = PROJECT_ROOT / mounts[provider["options"]["path"]]
    assert dashboards.DASHBOARD.parent == dashboards_dir.resolve()
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    folder, _, name = home.rpartition("/")
    assert (PROJECT_ROOT / mounts[folder] / name).is_file()
    # Published on loopback only: dashboards and metrics are for the people who run it.
    for name in ("prometheus", "grafana"):
        assert all(str(p).startswith("127.0.0.1:") for p in SERVICES[name]["ports"])
