"""Writing a group's rows: one set-based ``INSERT ... SELECT`` per launch."""

from datetime import datetime

from django.core.exceptions import EmptyResultSet, ImproperlyConfigured
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from notifier.models import Delivery, DeliveryGroup
from notifier.services.outbox.groups import DueByZone
from notifier.services.suppressions import suppression_reason_sql

# --- Materialise ---------------------------------------------------------------------


def uuid_sql() -> str:
    if connection.vendor == "postgresql":
        # Time-ordered (UUID version 7: 48 bits of milliseconds, the version,
        # 74 random bits under the variant), so a million-row launch appends
        # to the uuid index instead of writing all over it. Built as two
        # bigints from random(), not from gen_random_uuid(): the strong
        # generator cost 4 s of CPU per million rows, this 1.5 s. The uuid
        # names a message (Message-ID, the ESP's metadata) and grants nothing;
        # the unique index rules out a duplicate.
        return (
            "encode(int8send((floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint << 16)"
            " | 28672 | floor(random() * 4096)::bigint)"
            " || int8send(-9223372036854775808"
            " | (floor(random() * 2147483648)::bigint << 31)"
            " | floor(random() * 2147483648)::bigint), 'hex')::uuid"
        )
    # SQLite stores UUIDs as 32 hex digits: a random version-4 UUID.
    return (
        "lower(hex(randomblob(6)) || '4' || substr(hex(randomblob(2)), 2)"
        " || substr('89ab', (abs(random()) %% 4) + 1, 1)"
        " || substr(hex(randomblob(2)), 2) || hex(randomblob(6)))"
    )


def _not_flattened_sql() -> str:
    """A clause that keeps the planner from flattening the audience subquery
    into the INSERT, so each member's reason (a COALESCE over the joined
    suppression) is computed once, not once per column that reads it.

    PostgreSQL takes a bare ``OFFSET 0``; SQLite's grammar needs a LIMIT before
    an OFFSET (``LIMIT -1`` is "no limit"), and a LIMIT stops its flattening too.
    """
    if connection.vendor == "postgresql":
        return "OFFSET 0"
    return "LIMIT -1 OFFSET 0"


def _prep(name: str, value):
    return Delivery._meta.get_field(name).get_db_prep_save(value, connection)


def delivery_columns_sql(explicit: dict[str, tuple[str, list]]) -> tuple[list, list, list]:
    """(columns, value expressions, their parameters) of a set-based INSERT of
    Delivery rows: every concrete column gets a value, the ``explicit`` ones
    (field name -> SQL and parameters), and each other field's Django
    default (Django defaults are not database defaults), NULL where it may."""
    q = connection.ops.quote_name
    columns, values, params = [], [], []
    for field in Delivery._meta.concrete_fields:
        if field.primary_key:
            continue
        if field.name in explicit:
            sql, field_params = explicit[field.name]
        elif field.null:
            sql, field_params = "NULL", []
        else:
            default = field.get_default()
            if default is None:
                if getattr(field, "db_default", None) is not None:
                    continue
                raise ImproperlyConfigured(
                    f"Delivery.{field.name} has no default: a set-based insert cannot fill it."
                )
            sql, field_params = "%s", [field.get_db_prep_save(default, connection)]
        columns.append(q(field.column))
        values.append(sql)
        params.extend(field_params)
    return columns, values, params


def _insert_sql(*, explicit: dict, audience_sql: str, audience_params: list) -> tuple:
    """The INSERT ... SELECT writing one Delivery per audience member
    (see ``delivery_columns_sql``)."""
    q = connection.ops.quote_name
    # The reason a member is not mailed ('' when they are).
    join_sql, reason_sql, reason_params = suppression_reason_sql(email="m.email", status="m.status")
    explicit = {
        "uuid": (uuid_sql(), []),
        "recipient": ("a.id", []),
        "status": (
            "CASE WHEN a.reason = '' THEN %s ELSE %s END",
            [Delivery.Status.PENDING, Delivery.Status.SUPPRESSED],
        ),
        "status_reason": ("a.reason", []),
        **explicit,
    }
    columns, values, params = delivery_columns_sql(explicit)
    sql = f"""
        INSERT INTO {q(Delivery._meta.db_table)} ({", ".join(columns)})
        SELECT {", ".join(values)}
        FROM (
            SELECT m.id AS id, m.time_zone AS time_zone, {reason_sql} AS reason
            FROM ({audience_sql}) m
            {join_sql}
            {_not_flattened_sql()}
        ) a
        WHERE true
        ON CONFLICT DO NOTHING
    """
    return sql, [*params, *reason_params, *audience_params]


def _by_zone_sql(field: str, values: dict[str, object], default) -> tuple[str, list]:
    """A value of ``field`` chosen by the member's time zone, in SQL."""
    if not values:
        return "%s", [default]
    whens = " ".join("WHEN %s THEN %s" for _zone in values)
    params = [param for zone in sorted(values) for param in (zone, values[zone])]
    sql = f"CASE a.time_zone {whens} ELSE %s END"
    if connection.vendor == "postgresql":
        # A CASE of NULLs alone would be text to PostgreSQL. (SQLite stores
        # the value as given; a CAST there would turn the text into a number.)
        sql = f"CAST({sql} AS {Delivery._meta.get_field(field).db_type(connection)})"
    return sql, [*params, default]


def _timing_sql(*, due: DueByZone | None, now: datetime) -> dict[str, tuple[str, list]]:
    """``next_attempt_at`` and ``dispatched_at`` of the new rows: due now and
    left to the owner's fan-out; or due at their zone's moment, and, if that
    is still to come, not dispatched (the sweeper dispatches them when due)."""
    stamp = _prep("next_attempt_at", now)
    if due is None:
        return {"next_attempt_at": ("%s", [stamp]), "dispatched_at": ("%s", [stamp])}

    def dispatched(moment: datetime):
        return stamp if moment <= now else None

    return {
        "next_attempt_at": _by_zone_sql(
            "next_attempt_at",
            {zone: _prep("next_attempt_at", moment) for zone, moment in due.by_zone.items()},
            _prep("next_attempt_at", due.default),
        ),
        "dispatched_at": _by_zone_sql(
            "dispatched_at",
            {zone: dispatched(moment) for zone, moment in due.by_zone.items()},
            dispatched(due.default),
        ),
    }


def deliveries_materialise(
    *,
    group: DeliveryGroup,
    audience: QuerySet,
    kind: str,
    template_id: int,
    from_email: str,
    transport: str,
    due: DueByZone | None = None,
    subject: str = "",
    context: dict | None = None,
) -> int:
    """Write one Delivery of ``group`` per member of ``audience`` (a Recipient
    queryset) in one set-based statement; suppressed members get a
    ``suppressed`` row, so a group's totals equal its rows. Rows are written
    dispatched (the owner fans them out). Idempotent: the unique (run,
    recipient) constraint makes a second call add nothing. Returns rows added.

    With ``due``, each row is due when its recipient's time zone says (one
    ``CASE`` over the zone in the same statement). ``subject`` (a subject
    source that wins over the template's) and ``context`` (the row's own
    layer of context) are the same for every row written: an A/B variant's."""
    # The audience query yields what the reason and the due time need:
    # recipients are read once.
    audience = audience.values("id", "email", "status", "time_zone")
    try:
        audience_sql, audience_params = audience.query.get_compiler(using="default").as_sql()
    except EmptyResultSet:
        return 0
    now = timezone.now()
    sql, params = _insert_sql(
        explicit={
            "kind": ("%s", [kind]),
            "template": ("%s", [template_id]),
            "from_email": ("%s", [from_email]),
            "transport": ("%s", [transport]),
            "subject": ("%s", [subject]),
            "context": ("%s", [_prep("context", context or {})]),
            "run": ("%s", [group.pk]),
            **_timing_sql(due=due, now=now),
            "created_at": ("%s", [_prep("created_at", now)]),
            "updated_at": ("%s", [_prep("updated_at", now)]),
        },
        audience_sql=audience_sql,
        audience_params=list(audience_params),
    )
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Hash a million members in memory, not in temporary files; and
            # no JIT: compiling costs half a second at a million members (the
            # planner counts every member's suppression probe) and speeds up
            # nothing here, where the time goes into writing rows and indexes.
            cursor.execute(
                "SELECT set_config('work_mem', '256MB', true), set_config('jit', 'off', true)"
            )
        cursor.execute(sql, params)
        return max(cursor.rowcount, 0)


def deliveries_analyze() -> None:
    """Refresh the Delivery table's statistics (PostgreSQL).

    A big launch turns them stale at once (they may say no row is pending); a
    planner that believes them claims each batch, and each transactional
    send, by scanning the due index instead of looking ids up by key.
    Autovacuum would catch up later.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {Delivery._meta.db_table}")
