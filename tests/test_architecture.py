"""Architecture rules that import-linter cannot see.

The import contracts (notifier imports no other app, ops is never imported by
notifier, production code never imports devtools) live in pyproject.toml and
run as ``lint-imports`` in make lint and make test; the tests here check that
they are configured and kept, and add the rules about *writes*: only
notifier's services and the sending engine write Delivery rows.
"""

import ast
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT

PRODUCTION_PACKAGES = ("notifier", "campaigns", "journeys", "api", "ops", "config")
# The only places allowed to write Delivery rows.
DELIVERY_WRITERS = ("notifier/services/", "notifier/sending/")
WRITE_METHODS = {
    "update",
    "create",
    "bulk_create",
    "bulk_update",
    "delete",
    "get_or_create",
    "update_or_create",
    "save",
}
SQL_WRITE_WORDS = ("INSERT INTO", "UPDATE ", "DELETE FROM")
# WebhookDelivery is an outbox too: written only by notifier.services.webhooks.
OUTBOX_MODELS = {"Delivery", "DeliveryGroup", "WebhookDelivery"}


def _is_delivery_manager(node: ast.AST) -> bool:
    """``Delivery.objects`` (or ``Delivery._base_manager``)."""
    return (
        isinstance(node, ast.Attribute)
        and node.attr in {"objects", "_base_manager", "_default_manager"}
        and isinstance(node.value, ast.Name)
        and node.value.id in OUTBOX_MODELS
    )


def _chain(node: ast.AST):
    """The receivers of a method chain, outermost first: a.b().c() -> c(), .c, b(), .b, a."""
    while True:
        yield node
        if isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Attribute | ast.Subscript):
            node = node.value
        else:
            return


def _mentions_delivery_table(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if (
            isinstance(sub, ast.Constant)
            and isinstance(sub.value, str)
            and "notifier_delivery" in sub.value
            and "notifier_deliveryevent" not in sub.value
        ):
            return True
        if (
            isinstance(sub, ast.Attribute)
            and sub.attr == "db_table"
            and isinstance(sub.value, ast.Attribute)
            and sub.value.attr == "_meta"
            and isinstance(sub.value.value, ast.Name)
            and sub.value.value.id in OUTBOX_MODELS
        ):
            return True
    return False


def delivery_writes(source: str) -> list[int]:
    """Line numbers of statements in ``source`` that write Delivery rows.

    Found: write methods on a chain starting at ``Delivery.objects``, or on a
    name (or a module function's parameter) bound to such a chain; ``Delivery(...)``
    instances (made to be saved); raw SQL that writes the delivery table.
    """
    tree = ast.parse(source)
    functions = {
        node.name: node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    tainted_params: dict[str, set[str]] = {}
    lines: set[int] = set()

    def is_delivery_rows(node: ast.AST, names: set[str]) -> bool:
        return any(
            _is_delivery_manager(n) or (isinstance(n, ast.Name) and n.id in names)
            for n in _chain(node)
        )

    def scan(scope: ast.AST, names: set[str]) -> None:
        names = set(names)
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and is_delivery_rows(node.value, names):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        for node in ast.walk(scope):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in OUTBOX_MODELS:
                    lines.add(node.lineno)
                if (
                    isinstance(func, ast.Attribute)
                    and func.attr in WRITE_METHODS
                    and is_delivery_rows(func.value, names)
                ):
                    lines.add(node.lineno)
                if isinstance(func, ast.Name) and func.id in functions:
                    params = [a.arg for a in functions[func.id].args.args]
                    for index, arg in enumerate(node.args):
                        if index < len(params) and is_delivery_rows(arg, names):
                            tainted_params.setdefault(func.id, set()).add(params[index])
            if isinstance(node, ast.Constant | ast.JoinedStr):
                text = (
                    node.value
                    if isinstance(node, ast.Constant)
                    else "".join(
                        v.value
                        for v in node.values
                        if isinstance(v, ast.Constant) and isinstance(v.value, str)
                    )
                )
                if (
                    isinstance(text, str)
                    and any(word in text.upper() for word in SQL_WRITE_WORDS)
                    and _mentions_delivery_table(node)
                ):
                    lines.add(node.lineno)

    scan(tree, set())
    # Querysets handed to a helper in the same module: scan the helper with
    # its parameter bound (one level is what the code base uses).
    for name, params in tainted_params.items():
        scan(functions[name], params)
    return sorted(lines)


def _production_modules():
    for package in PRODUCTION_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if "/migrations/" in relative:
                continue
            yield relative, path


# Writers outside the allowed places (none: campaigns call the outbox).
KNOWN_EXCEPTIONS: set[str] = set()


def test_only_notifier_services_and_the_sender_write_delivery_rows():
    """Delivery and DeliveryGroup rows: campaigns go through the outbox."""
    offenders = {}
    for relative, path in _production_modules():
        if relative.startswith(DELIVERY_WRITERS):
            continue
        lines = delivery_writes(path.read_text())
        if lines:
            offenders[relative] = lines
    assert set(offenders) == KNOWN_EXCEPTIONS, offenders


@pytest.mark.parametrize(
    "source",
    [
        "Delivery.objects.filter(pk=1).update(status='sent')",
        "Delivery.objects.create(recipient=r)",
        "rows = Delivery.objects.filter(run_id=1)\nrows.delete()",
        "def _due(qs):\n    return qs.update(x=1)\n_due(Delivery.objects.filter(a=1))",
        "Delivery.objects.bulk_create([Delivery(recipient=r)])",
        'cursor.execute(f"UPDATE {Delivery._meta.db_table} SET status = %s", [s])',
        "cursor.execute('DELETE FROM notifier_delivery WHERE id = 1')",
        "DeliveryGroup.objects.filter(pk=1).update(state='paused')",
    ],
)
def test_the_write_check_sees_each_kind_of_write(source):
    assert delivery_writes(source)


@pytest.mark.parametrize(
    "source",
    [
        "Delivery.objects.filter(run_id=1).values_list('id', flat=True)",
        "Delivery.objects.filter(run_id=1).aggregate(n=Count('id'))",
        "Campaign.objects.filter(pk=1).update(status='done')",
        'cursor.execute(f"SELECT id FROM {Delivery._meta.db_table}")',
        "cursor.execute('UPDATE notifier_deliveryevent SET x = 1')",
    ],
)
def test_the_write_check_leaves_reads_alone(source):
    assert not delivery_writes(source)


def test_import_contracts_are_configured_and_kept():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    forbidden = {
        tuple(c["source_modules"]): set(c["forbidden_modules"])
        for c in config["contracts"]
        if c["type"] == "forbidden"
    }
    assert {"campaigns", "journeys", "api", "ops", "devtools"} <= forbidden[("notifier",)]
    assert "journeys" in forbidden[("notifier", "campaigns")]
    assert any("devtools" in targets and "config" in src for src, targets in forbidden.items())
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_does_not_install_devtools():
    """Production settings, loaded as production loads them: no devtools app
    and none of its commands; the local and test settings have them."""
    from tests.ops.production import manage, production_env

    env = production_env(DATABASE_URL="postgres://notifier@127.0.0.1:5432/notifier")
    result = manage(
        "shell", "-c", "from django.conf import settings; print(settings.INSTALLED_APPS)", env=env
    )
    assert result.returncode == 0, result.stderr
    assert "'notifier'" in result.stdout and "devtools" not in result.stdout
    commands = manage("help", "--commands", env=env)
    assert "fake_esp" not in commands.stdout.split() and "demo_setup" not in commands.stdout.split()
    for name in ("local", "test"):
        assert "devtools" in importlib.import_module(f"config.settings.{name}").INSTALLED_APPS
