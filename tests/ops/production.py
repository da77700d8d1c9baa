"""The production environment as documented, for tests that start processes."""

import os
import re
import secrets
import subprocess
import sys

from tests.conftest import ROOT


def documented_env() -> dict[str, str]:
    """deploy/notifier.env.example with every <placeholder> filled in."""
    env = {}
    for line in (ROOT / "deploy" / "notifier.env.example").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, value = line.split("=", 1)
        value = value.removeprefix('"').removesuffix('"')
        env[name] = re.sub(r"<[^>@]*>", lambda _m: secrets.token_urlsafe(40), value)
    return env


def production_env(**overrides: str | None) -> dict[str, str]:
    """This process's environment without test settings, plus the documented
    variables, plus ``overrides`` (None removes a variable)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "PYTEST")) and k != "DEBUG"
    }
    env.update(documented_env())
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def manage(*args: str, env: dict[str, str], check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=check,
    )
