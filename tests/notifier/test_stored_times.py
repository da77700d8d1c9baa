"""Times Python cannot read back never stop the outbox.

``send()`` refuses a ``send_at`` outside now - 1 day .. now + 1 year; the
database refuses a ``next_attempt_at`` outside 2000..9000 (CHECK). A row
written before that CHECK existed is simulated by dropping the CHECK inside
the test's transaction (rolled back with it) and writing the time in SQL, as
PostgreSQL accepted it from ``"send_at": "0001-01-01T00:00:00+14:00"``.
"""

import importlib
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from django.apps import apps as django_apps
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from notifier import send
from notifier.errors import InvalidSchedule, NotifierError
from notifier.models import Delivery
from notifier.sending import deliveries_send_batch
from notifier.services.retries import deliveries_recover_expired, deliveries_sweep
from notifier.services.unreadable import UNREADABLE_REASON
from tests.api.conftest import ApiClient
from tests.notifier.factories import TemplateFactory

pytestmark = pytest.mark.django_db

YEAR_0 = "0001-01-01T00:00:00+14:00"  # 1 BC in UTC: "timestamp too small"
YEAR_10000 = "9999-12-31T23:59:59-14:00"  # "timestamp too large"


def _queue(n: int) -> list[Delivery]:
    template = TemplateFactory()
    return [
        send(template=template, to=f"user{i}@example.com", context={"code": i}) for i in range(n)
    ]


def _drop_range_check() -> None:
    with connection.cursor() as cursor:
        # Deferred foreign key checks would keep the table from being altered.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(
            "ALTER TABLE notifier_delivery DROP CONSTRAINT delivery_next_attempt_at_range"
        )


def _write_time(delivery: Delivery, value: str, column: str = "next_attempt_at") -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE notifier_delivery SET {column} = %s::timestamptz WHERE id = %s",
            [value, delivery.id],
        )


def _assert_failed_unreadable(delivery: Delivery) -> None:
    delivery.refresh_from_db()  # readable again
    assert delivery.status == Delivery.Status.FAILED
    assert delivery.status_reason == UNREADABLE_REASON
    assert delivery.last_error
    assert delivery.next_attempt_at is None
    assert delivery.claim_token is None


# --- Refused on the way in ---------------------------------------------------------


@pytest.mark.parametrize(
    "send_at",
    [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, tzinfo=UTC),
        "now-2d",
        "now+366d",
    ],
)
def test_send_refuses_a_send_at_outside_the_window(send_at):
    if send_at == "now-2d":
        send_at = timezone.now() - timedelta(days=2)
    elif send_at == "now+366d":
        send_at = timezone.now() + timedelta(days=366)
    with pytest.raises(InvalidSchedule, match="send_at must be between"):
        send(subject="s", text="t", to="a@example.com", send_at=send_at)
    assert issubclass(InvalidSchedule, NotifierError)
    assert not Delivery.objects.exists()


def test_send_accepts_a_send_at_inside_the_window():
    for send_at in (timezone.now() - timedelta(hours=23), timezone.now() + timedelta(days=364)):
        send(subject="s", text="t", to="a@example.com", send_at=send_at)
    assert Delivery.objects.count() == 2


@pytest.mark.postgresql  # writes what only PostgreSQL stores and cannot give back
@pytest.mark.parametrize(
    "value", [YEAR_0, YEAR_10000, "1999-12-31T23:59:59Z", "9000-01-01T00:00:00Z"]
)
def test_the_database_refuses_a_next_attempt_outside_the_stored_range(value):
    (delivery,) = _queue(1)
    with (
        pytest.raises(IntegrityError, match="delivery_next_attempt_at_range"),
        transaction.atomic(),
    ):
        _write_time(delivery, value)
    delivery.refresh_from_db()
    assert delivery.next_attempt_at.year > 2000


# --- A row that cannot be read back -----------------------------------------------


@pytest.mark.postgresql  # writes what only PostgreSQL stores and cannot give back
def test_a_batch_fails_an_unreadable_row_and_sends_the_others(fake_esp):
    first, bad, last = _queue(3)
    _drop_range_check()
    _write_time(bad, YEAR_0)  # due: the claim takes it

    counts = deliveries_send_batch(delivery_ids=[first.id, bad.id, last.id])

    assert counts == {"sent": 2}
    assert sorted(m["To"] for m in fake_esp.messages) == ["user0@example.com", "user2@example.com"]
    _assert_failed_unreadable(bad)
    assert "too small" in bad.last_error


@pytest.mark.postgresql  # writes what only PostgreSQL stores and cannot give back
def test_the_sweep_recovers_a_claim_holding_an_unreadable_row(fake_esp):
    good, bad = _queue(2)
    Delivery.objects.filter(id__in=[good.id, bad.id]).update(
        status="sending",
        claim_token="00000000-0000-0000-0000-00000000dead",
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )
    _drop_range_check()
    _write_time(bad, YEAR_10000)

    counts = deliveries_recover_expired()

    # No journal and no hand-off mark: the good row never left, so it is due again.
    assert counts == {"pending": 1}
    good.refresh_from_db()
    assert good.status == Delivery.Status.PENDING
    _assert_failed_unreadable(bad)
    assert "too large" in bad.last_error


@pytest.mark.postgresql  # writes what only PostgreSQL stores and cannot give back
def test_the_sweep_fails_a_row_due_in_year_10000_and_every_page_reads_it(admin_client):
    api_token = importlib.import_module("api.services").api_token_create(service="billing")[1]
    api = ApiClient(api_token)
    ids = [
        api.post(
            "/api/v1/messages", {"to": f"p{i}@example.com", "subject": "s", "text": "t"}
        ).json()["id"]
        for i in range(2)
    ]
    good, bad = (Delivery.objects.get(uuid=i) for i in ids)
    _drop_range_check()
    _write_time(bad, YEAR_10000)
    # The API reads only what it shows: the message can be read even now.
    assert api.get(f"/api/v1/messages/{bad.uuid}").status_code == 200

    counts = deliveries_sweep()

    assert counts["failed_out_of_range"] == 1
    assert counts["dispatched"] == 1  # the good row went on
    _assert_failed_unreadable(bad)
    answer = api.get(f"/api/v1/messages/{bad.uuid}")
    assert answer.status_code == 200
    assert answer.json()["status"] == "failed"
    assert admin_client.get("/admin/notifier/delivery/").status_code == 200
    assert admin_client.get(f"/admin/notifier/delivery/{bad.id}/change/").status_code == 200
    good.refresh_from_db()
    assert good.status == Delivery.Status.PENDING


@pytest.mark.postgresql  # writes what only PostgreSQL stores and cannot give back
def test_the_migration_fails_rows_written_before_the_check():
    kept, bad_pending, bad_sent = _queue(3)
    _drop_range_check()
    _write_time(bad_pending, YEAR_0)
    Delivery.objects.filter(pk=bad_sent.pk).update(status="sent")
    _write_time(bad_sent, YEAR_10000)
    migration = importlib.import_module(
        "notifier.migrations.0004_stored_time_range_recipient_owner"
    )

    migration.fail_rows_out_of_range(django_apps, None)

    for delivery in (kept, bad_pending, bad_sent):
        delivery.refresh_from_db()
    assert kept.status == "pending" and kept.next_attempt_at is not None
    assert (bad_pending.status, bad_pending.next_attempt_at) == ("failed", None)
    assert bad_pending.status_reason == UNREADABLE_REASON
    assert (bad_sent.status, bad_sent.next_attempt_at) == ("sent", None)


SQLITE_PROBE = """
from django.db import IntegrityError, connection, transaction
from notifier import send
delivery = send(subject="s", text="t", to="a@example.com")
for value in ["0001-01-01 00:00:00", "10000-01-01 00:00:00", "1999-12-31 23:59:59", "2026-06-01 00:00:00"]:
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "UPDATE notifier_delivery SET next_attempt_at = %s WHERE id = %s", [value, delivery.pk]
            )
        print("accepted", value)
    except IntegrityError:
        print("refused", value)
"""


def test_the_range_check_holds_on_sqlite_too(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.local",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }

    def manage(*args):
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert manage("migrate", "--noinput").returncode == 0
    probe = manage("shell", "--no-imports", "-c", SQLITE_PROBE)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines()[-4:] == [
        "refused 0001-01-01 00:00:00",
        "refused 10000-01-01 00:00:00",
        "refused 1999-12-31 23:59:59",
        "accepted 2026-06-01 00:00:00",
    ]
