"""Production settings: clean ``check --deploy`` with the documented variables,
and a refusal to start without a secret, with unauthenticated webhooks, or
with DEBUG on."""

import pytest

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
