"""deploy/: compose file, systemd units, Procfile and runbook agree with each
other and with the settings (services, commands, environment variables)."""

import configparser
import re
import shlex

import pytest
import yaml
from django.conf import settings

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
QUEUES = [queue.name for queue in settings.CELERY_TASK_QUEUES]
RUNBOOK = (DEPLOY / "README.md").read_text()
DOCUMENTED = RUNBOOK + (ROOT / "README.md").read_text()
ROLES = {"web", "beat", "flower", *(f"worker-{q}" for q in QUEUES)}


def _normalise(command: list[str] | str) -> list[str]:
    words = shlex.split(command) if isinstance(command, str) else list(command)
    if words[:2] == ["nice", "-n"]:  # CPU priority: tested on its own below
        words = words[3:]
    words[0] = words[0].rsplit("/", 1)[-1]  # /opt/notifier/.venv/bin/celery -> celery
    return words


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _compose_commands(compose) -> dict[str, list[str]]:
    return {
        name: _normalise(service["command"])
        for name, service in compose["services"].items()
        if name in ROLES
    }


def _procfile_commands() -> dict[str, list[str]]:
    commands = {}
    for line in (DEPLOY / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, command = line.split(":", 1)
            commands[name.replace("_", "-")] = _normalise(command)
    return commands


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string((DEPLOY / "systemd" / name).read_text())
    return parser


def _systemd_commands() -> dict[str, list[str]]:
    commands = {}
    for role, unit in (
        ("web", "notifier-web.service"),
        ("beat", "notifier-beat.service"),
        ("flower", "notifier-flower.service"),
    ):
        commands[role] = _normalise(_unit(unit)["Service"]["ExecStart"])
    worker = _unit("notifier-worker@.service")["Service"]["ExecStart"].replace("%%", "%")
    for queue in QUEUES:
        commands[f"worker-{queue}"] = _normalise(worker.replace("%i", queue))
    return commands


def _runbook_commands() -> dict[str, list[str]]:
    rows = re.findall(r"^\| `([\w-]+)` \| `([^`]+)` \|", RUNBOOK, re.MULTILINE)
    return {name: _normalise(command) for name, command in rows if name in ROLES}


def test_every_role_runs_the_same_command_everywhere(compose):
    compose_commands = _compose_commands(compose)
    assert set(compose_commands) == ROLES
    assert _procfile_commands() == compose_commands
    assert _systemd_commands() == compose_commands
    assert _runbook_commands() == compose_commands


def test_web_serves_requests_in_parallel_everywhere(compose):
    """One sync worker let ten slow requests queue behind each other."""
    for commands in (_compose_commands(compose), _procfile_commands(), _systemd_commands()):
        web = commands["web"]
        workers = int(web[web.index("--workers") + 1])
        threads = int(web[web.index("--threads") + 1])
        assert workers >= 2 and threads >= 4


def test_campaign_workers_run_at_a_lower_cpu_priority_everywhere(compose):
    """So a big campaign does not hold up transactional mail on a shared host."""
    assert compose["services"]["worker-campaigns"]["command"][:3] == ["nice", "-n", "10"]
    assert compose["services"]["worker-transactional"]["command"][0] == "celery"
    drop_in = _unit("notifier-worker@campaigns.service.d/nice.conf")
    assert drop_in["Service"]["Nice"] == "10"


def test_one_worker_service_per_queue_and_each_consumes_only_its_queue(compose):
    for queue in QUEUES:
        command = compose["services"][f"worker-{queue}"]["command"]
        assert command[command.index("-Q") + 1] == queue


def test_the_stack_has_its_services_and_exactly_one_beat(compose):
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "web", "beat", "flower"} <= set(services)
    assert services["beat"]["deploy"]["replicas"] == 1
    assert "gunicorn" in services["web"]["command"]
    assert services["migrate"]["command"][-2:] == ["migrate", "--noinput"]
    for name in ROLES:
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
        assert services[name]["env_file"] == "notifier.env"
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command
    assert "--maxmemory-policy noeviction" in redis_command


def test_the_image_is_slim_non_root_and_pinned():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.\d+-slim", dockerfile, re.MULTILINE)
    assert re.search(r"^USER notifier", dockerfile, re.MULTILINE)
    assert "pip install --no-compile -r requirements/base.txt" in dockerfile
    assert "collectstatic" in dockerfile
    pinned = [
        line
        for line in (ROOT / "requirements" / "base.txt").read_text().splitlines()
        if line and not line.startswith((" ", "#"))
    ]
    assert pinned and all("==" in line for line in pinned)


def test_units_run_as_notifier_with_the_env_file_and_restart():
    for name in (
        "notifier-web.service",
        "notifier-worker@.service",
        "notifier-beat.service",
        "notifier-flower.service",
    ):
        service = _unit(name)["Service"]
        assert service["User"] == "notifier"
        assert (
            "EnvironmentFile=/etc/notifier/notifier.env" in (DEPLOY / "systemd" / name).read_text()
        )
        assert service["Restart"] == "always"
        assert _unit(name)["Install"]["WantedBy"] == "notifier.target"


def _settings_variables() -> set[str]:
    names = set()
    for path in (ROOT / "config" / "settings").glob("*.py"):
        names |= set(re.findall(r'env(?:\.\w+)?\(\s*"([A-Z][A-Z0-9_]+)"', path.read_text()))
    return names


def _deploy_variables(compose) -> set[str]:
    names = set()
    example = (DEPLOY / "notifier.env.example").read_text()
    names |= set(re.findall(r"^([A-Z][A-Z0-9_]+)=", example, re.MULTILINE))
    for service in compose["services"].values():
        names |= set(service.get("environment", {}))
    for unit in (DEPLOY / "systemd").rglob("*.*"):
        if unit.is_dir():
            continue
        names |= set(re.findall(r"^Environment=([A-Z][A-Z0-9_]+)=", unit.read_text(), re.M))
    return names - {"POSTGRES_DB", "POSTGRES_USER"}  # the postgres image's own


def test_every_variable_is_documented(compose):
    undocumented = {
        name
        for name in _settings_variables() | _deploy_variables(compose)
        if f"`{name}`" not in DOCUMENTED
    }
    assert not undocumented


def test_deploy_files_set_only_variables_something_reads(compose):
    # Django itself, the postgres image, Flower.
    read_elsewhere = {"DJANGO_SETTINGS_MODULE", "POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH"}
    unknown = _deploy_variables(compose) - _settings_variables() - read_elsewhere
    assert not unknown
