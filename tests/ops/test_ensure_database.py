"""`make run` against a PostgreSQL database that does not exist yet: created,
or one clear line when the server cannot be used (never a traceback)."""

import os
import subprocess
import sys
import uuid

import psycopg
import pytest
from django.db import connection

from tests.conftest import ROOT
from tests.ops.private_services import free_port

pytestmark = [pytest.mark.postgresql, pytest.mark.django_db]


def _ensure_database(database_url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.local"}
    env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "manage.py", "ensure_database"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _server_url(database: str) -> str:
    d = connection.settings_dict
    return f"postgres://{d['USER']}@{d['HOST'] or '127.0.0.1'}:{d['PORT'] or 5432}/{database}"


def test_a_missing_database_is_created_once():
    name = f"notifier_new_{uuid.uuid4().hex[:8]}"
    try:
        first = _ensure_database(_server_url(name))
        assert first.returncode == 0, first.stderr
        assert f"Created the database '{name}'" in first.stdout
        with psycopg.connect(_server_url(name)) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (name,)
        again = _ensure_database(_server_url(name))
        assert again.returncode == 0 and again.stdout == "" and again.stderr == ""
    finally:
        with psycopg.connect(_server_url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def test_a_server_that_does_not_answer_is_explained_in_one_line():
    result = _ensure_database(f"postgres://postgres@127.0.0.1:{free_port()}/notifier")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Cannot use PostgreSQL at 127.0.0.1:" in lines[0]
    assert "apt-get install postgresql" in lines[0]
    assert "Traceback" not in result.stderr
