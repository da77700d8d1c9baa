"""Writing rows that each carry their own idempotency key (digests), many in
one statement: what every row shares is sent once, not once per row."""

import json

from django.db import connection
from django.utils import timezone

from notifier.models import Delivery
from notifier.services.outbox.materialise import delivery_columns_sql, uuid_sql

# The fields a row may give itself; every other one is shared, or its default.
ROW_FIELDS = (
    "recipient_id",
    "idempotency_key",
    "context",
    "next_attempt_at",
    "status",
    "status_reason",
    "dispatched_at",
)


def _field(name: str):
    return Delivery._meta.get_field(name)  # a field's name or its column's (recipient_id)


def _postgresql_insert(*, rows: list[dict], shared: dict) -> dict[str, int]:
    """One ``INSERT ... SELECT FROM jsonb_to_recordset(...)``: the rows as one
    JSON document (one parameter, dumped at C speed), the shared values as
    single parameters. A key that exists already raises IntegrityError."""
    q = connection.ops.quote_name
    record = [f"{q(name)} {_field(name).db_type(connection)}" for name in ROW_FIELDS]
    explicit = {_field(name).name: (f"r.{q(name)}", []) for name in ROW_FIELDS}
    explicit["uuid"] = (uuid_sql(), [])
    for name, value in shared.items():
        field = _field(name)
        explicit[field.name] = ("%s", [field.get_db_prep_save(value, connection)])
    columns, values, params = delivery_columns_sql(explicit)
    document = json.dumps(
        [{name: row[name] for name in ROW_FIELDS} for row in rows],
        default=lambda value: value.isoformat(),  # the datetimes, to the microsecond
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {q(Delivery._meta.db_table)} ({", ".join(columns)})
            SELECT {", ".join(values)}
            FROM jsonb_to_recordset(%s::jsonb) AS r({", ".join(record)})
            RETURNING {q("id")}, {q("idempotency_key")}
            """,
            [*params, document],
        )
        return {key: pk for pk, key in cursor.fetchall()}


def deliveries_insert_keyed(*, rows: list[dict], shared: dict) -> dict[str, int]:
    """Write one Delivery per row: each row gives the ``ROW_FIELDS`` (its
    ``idempotency_key`` unique and set), ``shared`` the fields every row
    has (``kind``, the sources, ``transport``, ...), the rest is each
    field's default. Returns idempotency key -> the new row's id.

    In the caller's transaction; a key that exists raises IntegrityError and
    writes nothing. PostgreSQL writes them in one statement; elsewhere (SQLite)
    one ``bulk_create``.
    """
    if not rows:
        return {}
    now = timezone.now()
    shared = {"created_at": now, "updated_at": now, **shared}
    if connection.vendor == "postgresql":
        return _postgresql_insert(rows=rows, shared=shared)
    deliveries = [Delivery(**shared, **{name: row[name] for name in ROW_FIELDS}) for row in rows]
    Delivery.objects.bulk_create(deliveries)
    return {delivery.idempotency_key: delivery.pk for delivery in deliveries}
