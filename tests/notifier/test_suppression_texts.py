"""Why a message was not sent, in a sentence: the same in Python and in SQL."""

import pytest
from django.db import connection

from notifier.models import Recipient, Suppression
from notifier.services.suppressions import (
    suppression_add,
    suppression_reason_sql,
    suppression_reasons,
)
from tests.notifier.factories import RecipientFactory

pytestmark = pytest.mark.django_db


def _sql_reason(recipient: Recipient) -> str:
    join, sql, params = suppression_reason_sql(email="m.email", status="m.status")
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {sql} FROM (SELECT %s AS email, %s AS status) m {join}",
            [*params, recipient.email, recipient.status],
        )
        return cursor.fetchone()[0]


@pytest.mark.parametrize("reason", Suppression.Reason.values)
def test_each_suppression_reason_is_a_sentence(reason):
    recipient = RecipientFactory()
    suppression_add(email=recipient.email, reason=reason)
    recipient.refresh_from_db()
    said = suppression_reasons([recipient])[recipient.pk]
    assert said.startswith("Not sent: the address is suppressed (") and said.endswith(").")
    assert "_" not in said
    assert _sql_reason(recipient) == said


@pytest.mark.parametrize("status", ["unsubscribed", "bounced", "complained", "erased"])
def test_each_recipient_status_is_a_sentence(status):
    recipient = RecipientFactory(status=status)
    said = suppression_reasons([recipient])[recipient.pk]
    assert said.startswith("Not sent: the recipient") and said.endswith(".")
    assert _sql_reason(recipient) == said


def test_an_active_recipient_has_no_reason():
    recipient = RecipientFactory()
    assert suppression_reasons([recipient]) == {}
    assert _sql_reason(recipient) == ""
