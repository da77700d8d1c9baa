"""The outbox of grouped mail: the only writer of DeliveryGroup rows and of
the Delivery rows of a group (a campaign run) outside the sending engine.

* ``delivery_group_open``     the group a run sends with (its shared context)
* ``deliveries_materialise``  one Delivery per audience member, set-based:
                              one ``INSERT ... SELECT ... ON CONFLICT DO
                              NOTHING``; the audience never enters Python;
                              each row due at once, or when its recipient's
                              time zone says (``DueByZone``)
* ``delivery_group_pause``    hold the pending rows (``next_attempt_at =
                              NULL``: neither a batch nor the sweeper claims
                              them); batches in flight see the state and hand
                              theirs back the same way
* ``delivery_group_resume``   make the held rows due again
* ``delivery_group_cancel``   cancel the pending rows
* ``deliveries_retry``        staff: send chosen failed / in-doubt rows again
* ``delivery_group_release_held``  rows a batch held after a resume, due again
* ``deliveries_analyze``      refresh the table statistics after a big launch

The owner (campaigns) keeps its own state and fans the due rows out; a
group's state is what the sending engine reads, through notifier's own table.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.core.exceptions import EmptyResultSet, ImproperlyConfigured
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from notifier.models import Delivery, DeliveryGroup
from notifier.services.dispatch import deliveries_dispatch, group_by_kind
from notifier.services.suppressions import suppression_reason_sql

# What staff may send again. Transient errors that exhausted their attempts;
# rejections by the ESP / SMTP server and broken renders; and rows handed
# over with no answer recorded (retrying those may duplicate).
RETRY_KINDS = {
    "transient": Q(
        status=Delivery.Status.FAILED, failure_kind=Delivery.FailureKind.TRANSIENT_EXHAUSTED
    ),
    "permanent": Q(status=Delivery.Status.FAILED)
    & ~Q(failure_kind=Delivery.FailureKind.TRANSIENT_EXHAUSTED),
    "unknown": Q(status=Delivery.Status.UNKNOWN),
}
RETRY_REASON = "Retry requested by staff"


@dataclass(frozen=True)
class DueByZone:
    """When a group's rows become due, by their recipient's time zone: the
    moment of ``by_zone`` for their zone name, else ``default``."""

    by_zone: dict[str, datetime]
    default: datetime


# --- Groups ----------------------------------------------------------------------


def delivery_group_open(
    *, group_id: int, owner: str, label: str = "", context: dict | None = None
) -> DeliveryGroup:
    """The active group ``group_id`` with this shared context (created, or
    updated if it exists: opening twice is harmless).

    The id is the owner's (a campaign run's id), so a Delivery's ``run_id``
    names both; groups never take ids from their own sequence.
    """
    group = DeliveryGroup(
        pk=group_id,
        owner=owner,
        label=label,
        context=context or {},
        state=DeliveryGroup.State.ACTIVE,
    )
    # One upsert statement (a launch counts its queries).
    DeliveryGroup.objects.bulk_create(
        [group],
        update_conflicts=True,
        unique_fields=["id"],
        update_fields=["owner", "label", "context", "state"],
    )
    return group


def _set_state(group_id: int, state: str) -> None:
    DeliveryGroup.objects.filter(pk=group_id).update(state=state)


def delivery_group_pause(*, group_id: int) -> int:
    """Hold the group's pending rows. Returns how many were held."""
    with transaction.atomic():
        _set_state(group_id, DeliveryGroup.State.PAUSED)
        return Delivery.objects.filter(run_id=group_id, status=Delivery.Status.PENDING).update(
            next_attempt_at=None, dispatched_at=None, updated_at=timezone.now()
        )


def delivery_group_resume(*, group_id: int, due: DueByZone | None = None) -> int:
    """Make the held rows due again (the owner fans them out), or, with
    ``due``, each at its zone's moment if that is still to come (left to the
    sweeper then). Returns how many."""
    with transaction.atomic():
        _set_state(group_id, DeliveryGroup.State.ACTIVE)
        pending = Delivery.objects.filter(run_id=group_id, status=Delivery.Status.PENDING)
        count = _make_due(pending)
        if due is not None:
            _make_due_later(pending, due)
        return count


def _make_due_later(pending: QuerySet, due: DueByZone) -> None:
    """Give rows whose zone's moment is still to come that moment, one
    UPDATE per distinct moment (set-based: a handful of statements)."""
    now = timezone.now()
    zones_by_moment: dict[datetime, list[str]] = {}
    for zone, moment in due.by_zone.items():
        zones_by_moment.setdefault(moment, []).append(zone)
    later = {
        moment: pending.filter(recipient__time_zone__in=zones)
        for moment, zones in zones_by_moment.items()
    }
    later[due.default] = pending.exclude(recipient__time_zone__in=list(due.by_zone))
    for moment, rows in later.items():
        if moment > now:
            rows.update(next_attempt_at=moment, dispatched_at=None, updated_at=now)


def delivery_group_cancel(
    *, group_id: int, reason: str = "Not sent: the run was cancelled."
) -> int:
    """Cancel the group's pending rows (in-flight batches see the state)."""
    with transaction.atomic():
        _set_state(group_id, DeliveryGroup.State.CANCELLED)
        return Delivery.objects.filter(run_id=group_id, status=Delivery.Status.PENDING).update(
            status=Delivery.Status.CANCELLED,
            status_reason=reason,
            next_attempt_at=None,
            updated_at=timezone.now(),
        )


def delivery_group_release_held(*, group_id: int) -> int:
    """Make due the rows a batch held (it saw the group paused) after the
    group was resumed. The owner's maintenance calls it for active groups."""
    return _make_due(
        Delivery.objects.filter(
            run_id=group_id, status=Delivery.Status.PENDING, next_attempt_at__isnull=True
        ),
        dispatched_at=None,
    )


def _make_due(queryset: QuerySet, **extra) -> int:
    now = timezone.now()
    return queryset.update(
        **{"next_attempt_at": now, "dispatched_at": now, "updated_at": now, **extra}
    )


# --- Retry -------------------------------------------------------------------------


def retry_selection(kinds: Iterable[str]) -> Q:
    """The rows of the chosen retry kinds; ValueError for an unknown kind."""
    kinds = list(kinds)
    unknown = set(kinds) - set(RETRY_KINDS)
    if not kinds or unknown:
        raise ValueError(f"Choose what to retry among: {', '.join(RETRY_KINDS)}.")
    selection = Q()
    for kind in kinds:
        selection |= RETRY_KINDS[kind]
    return selection


def deliveries_retry(
    *, kinds: Iterable[str], ids: Iterable[int] | None = None, group_id: int | None = None
) -> int:
    """Staff decision: send the chosen failed (and/or in-doubt) rows again,
    among ``ids`` or of the group ``group_id``.

    Attempts start again from zero; the previous error stays in ``last_error``
    until the next outcome. Rows picked by id are dispatched here; a group's
    rows are left to its owner's fan-out (marked dispatched). Returns how many
    rows were queued.
    """
    selection = retry_selection(kinds)
    rows = Delivery.objects.filter(selection)
    if ids is not None:
        rows = rows.filter(id__in=list(ids))
    if group_id is not None:
        rows = rows.filter(run_id=group_id)
    fields = {
        "status": Delivery.Status.PENDING,
        "attempts": 0,
        "failure_kind": Delivery.FailureKind.NONE,
        "status_reason": RETRY_REASON,
    }
    if group_id is not None:
        return _make_due(rows, **fields)
    picked = list(rows.values_list("id", "kind"))
    if not picked:
        return 0
    _make_due(
        Delivery.objects.filter(selection, id__in=[pk for pk, _ in picked]),
        dispatched_at=None,
        **fields,
    )
    deliveries_dispatch(ids_by_kind=group_by_kind(picked))
    return len(picked)


# --- Materialise ---------------------------------------------------------------------


def _uuid_sql() -> str:
    if connection.vendor == "postgresql":
        # Time-ordered (UUID version 7: milliseconds, then 74 random bits), so
        # a million-row launch appends to the uuid index instead of writing
        # all over it.
        return (
            "encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing "
            "substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) "
            "FROM 3) FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid"
        )
    # SQLite stores UUIDs as 32 hex digits: a random version-4 UUID.
    return (
        "lower(hex(randomblob(6)) || '4' || substr(hex(randomblob(2)), 2)"
        " || substr('89ab', (abs(random()) %% 4) + 1, 1)"
        " || substr(hex(randomblob(2)), 2) || hex(randomblob(6)))"
    )


def _not_flattened_sql() -> str:
    """A clause that keeps the planner from flattening the audience subquery
    into the INSERT, so each member's reason is looked up once.

    PostgreSQL takes a bare ``OFFSET 0``; SQLite's grammar needs a LIMIT before
    an OFFSET (``LIMIT -1`` is "no limit"), and a LIMIT stops its flattening too.
    """
    if connection.vendor == "postgresql":
        return "OFFSET 0"
    return "LIMIT -1 OFFSET 0"


def _prep(name: str, value):
    return Delivery._meta.get_field(name).get_db_prep_save(value, connection)


def _insert_sql(*, explicit: dict, audience_sql: str, audience_params: list) -> tuple:
    """The INSERT ... SELECT writing one Delivery per audience member.

    Every concrete column gets a value here (Django defaults are not database
    defaults): the ``explicit`` ones, and each other field's Django default.
    """
    q = connection.ops.quote_name
    # The reason a member is not mailed ('' when they are).
    reason_sql, reason_params = suppression_reason_sql(email="m.email", status="m.status")
    explicit = {
        "uuid": (_uuid_sql(), []),
        "recipient": ("a.id", []),
        "status": (
            "CASE WHEN a.reason = '' THEN %s ELSE %s END",
            [Delivery.Status.PENDING, Delivery.Status.SUPPRESSED],
        ),
        "status_reason": ("a.reason", []),
        **explicit,
    }
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
                    f"Delivery.{field.name} has no default: the campaign launch cannot fill it."
                )
            sql, field_params = "%s", [field.get_db_prep_save(default, connection)]
        columns.append(q(field.column))
        values.append(sql)
        params.extend(field_params)
    sql = f"""
        INSERT INTO {q(Delivery._meta.db_table)} ({", ".join(columns)})
        SELECT {", ".join(values)}
        FROM (
            SELECT m.id AS id, m.time_zone AS time_zone, {reason_sql} AS reason
            FROM ({audience_sql}) m
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
) -> int:
    """Write one Delivery of ``group`` per member of ``audience`` (a Recipient
    queryset) in one set-based statement; suppressed members get a
    ``suppressed`` row, so a group's totals equal its rows. Rows are written
    dispatched (the owner fans them out). Idempotent: the unique (run,
    recipient) constraint makes a second call add nothing. Returns rows added.

    With ``due``, each row is due when its recipient's time zone says (one
    ``CASE`` over the zone in the same statement)."""
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
            # Hash a million members in memory, not in temporary files.
            cursor.execute("SET LOCAL work_mem = '256MB'")
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
