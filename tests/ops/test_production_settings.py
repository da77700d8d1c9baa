"""Production settings: clean ``check --deploy`` with the documented variables,
and a refusal to start without a secret, with unauthenticated webhooks, or
with DEBUG on."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.ops.production import manage, production_env


def _manage(*args: str, **overrides: str | None):
    overrides.setdefault("DATABASE_URL", "postgres://notifier@127.0.0.1:5432/notifier")
    return manage(*args, env=production_env(**overrides))


def test_check_deploy_is_clean_with_the_documented_variables():
    result = _manage("check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"SECRET_KEY": None}, "SECRET_KEY"),
        ({"SECRET_KEY": ""}, "SECRET_KEY"),
        ({"SECRET_KEY": "too-short"}, "SECRET_KEY must be a random string"),
        ({"ANYMAIL_WEBHOOK_SECRET": None}, "ANYMAIL_WEBHOOK_SECRET is required"),
        ({"ANYMAIL_WEBHOOK_SECRET": "no-colon-in-this-secret-value"}, "ANYMAIL_WEBHOOK_SECRET"),
        ({"DEBUG": "true"}, "DEBUG must be off"),
        ({"DATABASE_URL": "sqlite:////tmp/x.sqlite3"}, "PostgreSQL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    ],
)
def test_production_refuses_to_start(overrides, message):
    result = _manage("check", **overrides)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr or "Error" in result.stderr
    assert message in result.stderr


@pytest.mark.parametrize("token", [None, "", "short"])
def test_check_deploy_fails_without_a_metrics_token(token):
    result = _manage("check", "--deploy", METRICS_TOKEN=token)
    assert result.returncode != 0
    assert "ops.E001" in result.stderr and "METRICS_TOKEN" in result.stderr


def _python(code: str, **overrides: str | None) -> subprocess.CompletedProcess:
    overrides.setdefault("DATABASE_URL", "postgres://notifier@127.0.0.1:5432/notifier")
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=production_env(**overrides),
        capture_output=True,
        text=True,
        timeout=120,
    )


ENTRY_POINTS = {
    "wsgi": "import config.wsgi",
    "asgi": "import config.asgi",
    "celery": "from config.celery import app; from django.conf import settings; settings.DEBUG",
}


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_every_entry_point_defaults_to_production_settings(entry_point):
    code = ENTRY_POINTS[entry_point] + (
        "; from django.conf import settings; print(settings.SETTINGS_MODULE, settings.DEBUG)"
    )
    configured = _python(code, DJANGO_SETTINGS_MODULE=None)
    assert configured.stdout.split() == ["config.settings.production", "False"], configured.stderr

    # Started by mistake, without the production environment: it refuses to run.
    mistake = _python(code, DJANGO_SETTINGS_MODULE=None, SECRET_KEY=None)
    assert mistake.returncode != 0 and "SECRET_KEY" in mistake.stderr


def test_manage_py_defaults_to_production_settings():
    result = _manage("check", DJANGO_SETTINGS_MODULE=None, SECRET_KEY=None)
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr
    assert _manage("check", DJANGO_SETTINGS_MODULE=None).returncode == 0
