"""Delivery groups (a campaign run's rows): open, pause, resume, cancel,
release held rows; and ``DueByZone``, when a group's rows become due."""

from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from notifier.models import Delivery, DeliveryGroup


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
