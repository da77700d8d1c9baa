"""A Delivery's recipient, group and template must exist, whoever writes it.

On PostgreSQL statement-level triggers check them (a million-row launch
checks each distinct reference once, not each row); on SQLite the foreign key
constraints do. Both refuse the same writes, checked here against the
database itself (raw statements, past the ORM's PROTECT).
"""

import threading
import time

import pytest
from django.db import IntegrityError, OperationalError, connection, transaction

from notifier.models import Delivery, DeliveryGroup, Recipient, Template
from tests.notifier.factories import DeliveryFactory, RecipientFactory, TemplateFactory

MISSING = 987_654_321

pytestmark = pytest.mark.django_db(transaction=True)


def _create(**fields) -> None:
    """Insert one Delivery in a transaction of its own (SQLite checks its
    deferred constraints at commit)."""
    with transaction.atomic():
        Delivery.objects.create(
            kind=Delivery.Kind.TRANSACTIONAL, subject="s", html_body="<p>x</p>", **fields
        )


@pytest.mark.parametrize("reference", ["recipient_id", "template_id", "run_id"])
def test_a_delivery_naming_a_row_that_does_not_exist_is_refused(reference):
    fields = {"recipient_id": RecipientFactory().pk, "template_id": TemplateFactory().pk}
    fields[reference] = MISSING
    with pytest.raises(IntegrityError):
        _create(**fields)
    assert not Delivery.objects.exists()


def test_a_set_based_insert_with_one_missing_recipient_writes_none_of_its_rows():
    people = [RecipientFactory() for _ in range(3)]
    template = TemplateFactory()
    rows = [
        Delivery(recipient_id=pk, template=template, kind=Delivery.Kind.CAMPAIGN)
        for pk in [p.pk for p in people] + [MISSING]
    ]
    with pytest.raises(IntegrityError), transaction.atomic():
        Delivery.objects.bulk_create(rows)
    assert not Delivery.objects.exists()
    with transaction.atomic():
        Delivery.objects.bulk_create(rows[:3])
    assert Delivery.objects.count() == 3


@pytest.mark.parametrize("reference", ["recipient_id", "template_id", "run_id"])
def test_moving_a_delivery_to_a_row_that_does_not_exist_is_refused(reference):
    delivery = DeliveryFactory(run_id=7)
    with pytest.raises(IntegrityError), transaction.atomic():
        Delivery.objects.filter(pk=delivery.pk).update(**{reference: MISSING})
    delivery.refresh_from_db()
    assert getattr(delivery, reference) != MISSING


@pytest.mark.parametrize("model", [Recipient, Template, DeliveryGroup])
def test_a_row_a_delivery_names_cannot_be_deleted_past_the_orm(model):
    delivery = DeliveryFactory(run_id=7)
    named = {Recipient: delivery.recipient_id, Template: delivery.template_id, DeliveryGroup: 7}
    with pytest.raises(IntegrityError), transaction.atomic():
        # _raw_delete: one DELETE statement, without the ORM's PROTECT.
        model.objects.filter(pk=named[model])._raw_delete(connection.alias)
    assert model.objects.filter(pk=named[model]).exists()
    # A row nobody names goes.
    spare = {Recipient: RecipientFactory, Template: TemplateFactory}.get(model)
    spare = spare() if spare else DeliveryGroup.objects.create(owner="test")
    with transaction.atomic():
        model.objects.filter(pk=spare.pk)._raw_delete(connection.alias)
    assert not model.objects.filter(pk=spare.pk).exists()


# --- Concurrency: the referenced rows are locked, as a foreign key check locks them --


def _in_thread(work, errors: list) -> threading.Thread:
    def run():
        try:
            work()
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.postgresql
def test_a_delete_racing_an_uncommitted_insert_waits_for_it_and_is_refused():
    person, template = RecipientFactory(), TemplateFactory()
    inserted, release = threading.Event(), threading.Event()
    insert_errors, delete_errors = [], []

    def insert():
        with transaction.atomic():
            Delivery.objects.create(recipient=person, template=template, subject="s")
            inserted.set()
            release.wait(10)

    def delete():
        with transaction.atomic():
            Recipient.objects.filter(pk=person.pk)._raw_delete(connection.alias)

    inserting = _in_thread(insert, insert_errors)
    assert inserted.wait(10)
    deleting = _in_thread(delete, delete_errors)
    deleting.join(1.0)
    assert deleting.is_alive(), "the delete must wait for the inserting transaction"
    release.set()
    inserting.join(10)
    deleting.join(10)
    assert insert_errors == []
    assert [type(e) for e in delete_errors] == [IntegrityError]
    assert Recipient.objects.filter(pk=person.pk).exists()
    assert Delivery.objects.filter(recipient=person).count() == 1


@pytest.mark.postgresql
def test_an_insert_racing_an_uncommitted_delete_of_its_recipient_is_refused():
    person, template = RecipientFactory(), TemplateFactory()
    deleted, release = threading.Event(), threading.Event()
    insert_errors, delete_errors = [], []

    def delete():
        with transaction.atomic():
            Recipient.objects.filter(pk=person.pk)._raw_delete(connection.alias)
            deleted.set()
            release.wait(10)

    def insert():
        with transaction.atomic():
            Delivery.objects.create(recipient_id=person.pk, template=template, subject="s")

    deleting = _in_thread(delete, delete_errors)
    assert deleted.wait(10)
    inserting = _in_thread(insert, insert_errors)
    time.sleep(0.5)
    assert inserting.is_alive(), "the insert's check must wait for the deleting transaction"
    release.set()
    deleting.join(10)
    inserting.join(10)
    assert delete_errors == []
    assert [type(e) for e in insert_errors] == [IntegrityError]
    assert not Delivery.objects.exists()


def _repeatable_read(cursor) -> None:
    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")


@pytest.mark.postgresql
def test_in_repeatable_read_a_writer_is_still_checked_and_a_deleter_is_refused():
    template = TemplateFactory()
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        _repeatable_read(cursor)
        Delivery.objects.create(recipient_id=MISSING, template=template, subject="s")
    person = RecipientFactory()
    with transaction.atomic(), connection.cursor() as cursor:
        _repeatable_read(cursor)
        Delivery.objects.create(recipient=person, template=template, subject="s")
    spare = RecipientFactory()
    with pytest.raises(OperationalError), transaction.atomic(), connection.cursor() as cursor:
        _repeatable_read(cursor)
        Recipient.objects.filter(pk=spare.pk)._raw_delete(connection.alias)
    assert Recipient.objects.filter(pk=spare.pk).exists()
    assert Delivery.objects.count() == 1


@pytest.mark.postgresql  # SQLite has no TRUNCATE
def test_a_table_whose_rows_deliveries_name_cannot_be_truncated_without_them():
    delivery = DeliveryFactory(run_id=7)
    for statement in (
        "TRUNCATE notifier_deliverygroup",
        "TRUNCATE notifier_template CASCADE",
        "TRUNCATE notifier_recipient CASCADE",
    ):
        with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement)
    assert Delivery.objects.filter(pk=delivery.pk).exists()
    assert DeliveryGroup.objects.filter(pk=7).exists()
    # With the deliveries in the same statement (as Django's flush does) it goes.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("TRUNCATE notifier_deliverygroup, notifier_delivery CASCADE")
    assert not DeliveryGroup.objects.exists() and not Delivery.objects.exists()
