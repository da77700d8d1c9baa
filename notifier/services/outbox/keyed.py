"""Writing rows that each carry their own idempotency key (digests), many in
one statement: what every row shares is sent once, not once per row."""

import json

from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.utils import timezone

from notifier.models import Delivery
from notifier.services.outbox.materialise import _uuid_sql

# The fields a row may give itself; every other one is shared, or its default.
ROW_FIELDS = (
    "recipient_id",
    "idempotency_key",
    "context",
    "next_attempt_at",
    "status",
    "status_reason",
)


def _field(name: str):
    return Delivery._meta.get_field(name.removesuffix("_id"))


def _postgresql_insert(*, rows: list[dict], shared: dict) -> dict[str, int]:
    """One ``INSERT ... SELECT FROM jsonb_to_recordset(...)``: the rows as one
    JSON document (one parameter, dumped at C speed), the shared values as
    single parameters. A key that exists already raises IntegrityError."""
    q = connection.ops.quote_name
    record = [f"{q(name)} {_field(name).db_type(connection)}" for name in ROW_FIELDS]
    columns, values, params = [], [], []
    for field in Delivery._meta.concrete_fields:
        if field.primary_key:
            continue
        if field.attname in ROW_FIELDS:
            columns.append(q(field.column))
            values.append(f"r.{q(field.attname)}")
            continue
        if field.name == "uuid":
            sql, value_params = _uuid_sql(), []
        elif field.name in shared or field.attname in shared:
            value = shared.get(field.name, shared.get(field.attname))
            sql, value_params = "%s", [field.get_db_prep_save(value, connection)]
        elif field.null:
            sql, value_params = "NULL", []
        else:
            default = field.get_default()
            if default is None:
                if getattr(field, "db_default", None) is not None:
                    continue
                raise ImproperlyConfigured(f"Delivery.{field.name} has no default.")
            sql, value_params = "%s", [field.get_db_prep_save(default, connection)]
        columns.append(q(field.column))
        values.append(sql)
        params.extend(value_params)
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
