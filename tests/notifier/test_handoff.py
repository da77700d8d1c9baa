"""The hand-off mark in the database: after Redis lost a claim's journal, the
rows that never left go back to pending and only the marked ones are in
doubt (then settled by asking the ESP), so nothing is sent twice."""

from datetime import timedelta

import pytest
from django.utils import timezone

from notifier.models import Delivery
from notifier.sending import deliveries_send_batch, engine, journal
from notifier.services.indoubt import deliveries_resolve_in_doubt
from notifier.services.retries import deliveries_recover_expired
from tests.notifier.factories import DeliveryFactory, RecipientFactory

pytestmark = pytest.mark.django_db


def _rows(n: int) -> list[Delivery]:
    return [
        DeliveryFactory(recipient=RecipientFactory(email=f"h{i}@example.com")) for i in range(n)
    ]


def test_every_handed_over_row_carries_its_claims_mark(fake_esp, settings):
    settings.NOTIFIER_HANDOFF_MARK_AHEAD = 2
    rows = _rows(5)
    assert deliveries_send_batch(delivery_ids=[d.pk for d in rows]) == {"sent": 5}
    marks = set(Delivery.objects.values_list("handoff_token", flat=True))
    assert len(marks) == 1 and None not in marks


class WorkerDied(BaseException):
    """The worker process is gone: nothing after this point runs."""


def test_after_a_lost_journal_only_marked_rows_are_in_doubt(fake_esp, settings, monkeypatch):
    settings.NOTIFIER_HANDOFF_MARK_AHEAD = 3
    settings.NOTIFIER_INDOUBT_INDEX_DELAY = 0
    settings.NOTIFIER_SEND_THREADS = 1  # one message per hand-over
    settings.NOTIFIER_SEND_AHEAD = 1
    esp = settings.NOTIFIER_TRANSPORTS["esp"]
    settings.NOTIFIER_TRANSPORTS = {**settings.NOTIFIER_TRANSPORTS, "esp": {**esp, "BATCH_SIZE": 1}}
    rows = _rows(6)
    hand_over = engine._Batch.hand_over

    def dies_at_the_third(batch, ready):
        if any(delivery.pk == rows[2].pk for delivery, _message in ready):
            raise WorkerDied
        hand_over(batch, ready)

    # The worker hands two messages over, then dies before writing anything.
    monkeypatch.setattr(engine._Batch, "hand_over", dies_at_the_third)
    monkeypatch.setattr(engine._Batch, "finish", lambda batch: None)
    with pytest.raises(WorkerDied):
        deliveries_send_batch(delivery_ids=[d.pk for d in rows])
    monkeypatch.undo()
    assert len(fake_esp.messages) == 2
    (token,) = set(Delivery.objects.values_list("claim_token", flat=True))

    # Redis loses its data; the lease runs out; the sweeper recovers the claim.
    journal.journal_close(token)
    Delivery.objects.update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert deliveries_recover_expired() == {"unknown": 3, "pending": 3}
    status = dict(Delivery.objects.values_list("pk", "status"))
    assert [status[d.pk] for d in rows] == ["unknown"] * 3 + ["pending"] * 3
    left = Delivery.objects.get(pk=rows[4].pk)
    assert "not been handed over" in left.status_reason and left.attempts == 0

    # The ESP has the two it took; the third (marked, never sent) is sent once.
    assert deliveries_resolve_in_doubt() == {"found": 2, "resent": 1}
    assert deliveries_send_batch(delivery_ids=[d.pk for d in rows]) == {"sent": 4}
    assert Delivery.objects.filter(status="sent").count() == 6
    sent = sorted(m["Metadata"]["delivery"] for m in fake_esp.messages)
    assert sent == sorted(str(d.uuid) for d in rows)  # each exactly once


def test_a_mark_left_by_an_earlier_claim_does_not_count(fake_esp):
    (delivery,) = _rows(1)
    token = "00000000-0000-0000-0000-00000000dead"
    Delivery.objects.filter(pk=delivery.pk).update(
        status="sending",
        claim_token=token,
        lease_expires_at=timezone.now() - timedelta(seconds=1),
        handoff_token="00000000-0000-0000-0000-0000000000e1",
    )
    assert deliveries_recover_expired() == {"pending": 1}
