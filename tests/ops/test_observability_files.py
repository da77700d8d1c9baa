"""The Grafana dashboard and the Prometheus alert rules in deploy/ only use
metrics that exist: those /metrics serves and those each worker serves."""

import json
import re

import pytest
import yaml
from django.utils import timezone
from prometheus_client import REGISTRY, generate_latest

from notifier.heartbeat import beat_heartbeat_record
from tests.conftest import ROOT
from tests.notifier.factories import DeliveryFactory

METRIC = re.compile(r"\bnotifier_[a-z_]+\b")
DEPLOY = ROOT / "deploy"


def _names(exposition: str) -> set[str]:
    """Every series name an exposition can carry: counters as name and
    name_total, histograms with their _bucket/_sum/_count series."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            base = name.removesuffix("_total")
            names |= {name, base}
            if kind == "counter":
                names.add(f"{base}_total")
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(line.split("{")[0].split(" ")[0])
    return names


def _alert_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "notifier-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


@pytest.mark.django_db
def test_every_metric_the_dashboard_and_alerts_use_exists(client):
    # Data for the series that appear only when there is something to report.
    beat_heartbeat_record()
    DeliveryFactory(status="pending", next_attempt_at=timezone.now())
    served = client.get("/metrics").content.decode()
    workers = generate_latest(REGISTRY).decode()  # what a worker serves (notifier.instruments)
    known = _names(served) | _names(workers)

    used = {name for expr in _alert_exprs() + _dashboard_exprs() for name in METRIC.findall(expr)}
    assert len(used) >= 10
    assert used <= known, f"not served by anything: {sorted(used - known)}"
    for name in ("notifier_oldest_due_seconds", "notifier_beat_heartbeat_age_seconds"):
        assert re.search(rf"^{name}(\{{| )", served, re.M), name


def test_the_alert_rules_cover_what_operators_watch():
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    names = {rule["alert"] for group in alerts["groups"] for rule in group["rules"]}
    assert {
        "NotifierQueueBacklog",
        "NotifierDueMessagesWaiting",
        "NotifierMessagesInDoubt",
        "NotifierTransportFailing",
        "NotifierSweeperStalled",
        "NotifierTaskFailures",
    } <= names
    for group in alerts["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
