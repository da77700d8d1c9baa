"""/health/: one run of the checks per burst of probes; details only for operators."""

import threading
import time

import pytest
from django.contrib.auth.models import User
from django.test import Client

from ops import health

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fresh_report(monkeypatch):
    monkeypatch.setattr(health, "_last_report", None, raising=False)


@pytest.fixture
def broadcasts(monkeypatch):
    """Count the workers check's Celery broadcasts, each as slow as a real one."""
    calls = []

    def run(self):
        calls.append(threading.get_ident())
        time.sleep(0.5)

    monkeypatch.setattr(health.Ping, "run", run)
    return calls


def test_ten_parallel_probes_do_one_broadcast(broadcasts, settings):
    settings.HEALTH_CACHE_SECONDS = 60
    statuses = []

    def probe():
        statuses.append(Client().get("/health/").status_code)

    threads = [threading.Thread(target=probe) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(statuses) == 10 and len(set(statuses)) == 1
    assert len(broadcasts) == 1


def test_the_report_is_run_again_once_it_is_stale(broadcasts, settings):
    settings.HEALTH_CACHE_SECONDS = 0
    Client().get("/health/")
    Client().get("/health/")
    assert len(broadcasts) == 2


def test_error_details_only_for_operators(broadcasts, settings):
    settings.METRICS_TOKEN = "s3cret"
    settings.HEALTH_CACHE_SECONDS = 60
    anonymous = Client().get("/health/").json()
    assert set(anonymous["checks"]["database"]) == {"ok"}
    assert "beat" in anonymous["checks"] and anonymous["status"] == "unhealthy"

    with_token = Client().get("/health/", headers={"Authorization": "Bearer s3cret"}).json()
    assert with_token["checks"]["beat"]["error"]  # no sweep ran in this test
    wrong_token = Client().get("/health/", headers={"Authorization": "Bearer nope"}).json()
    assert set(wrong_token["checks"]["beat"]) == {"ok"}

    staff = Client()
    staff.force_login(User.objects.create_user("op", password="pw", is_staff=True))
    assert "error" in staff.get("/health/").json()["checks"]["beat"]
    not_staff = Client()
    not_staff.force_login(User.objects.create_user("joe", password="pw"))
    assert set(not_staff.get("/health/").json()["checks"]["beat"]) == {"ok"}
