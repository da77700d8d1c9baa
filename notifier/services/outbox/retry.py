"""Staff decisions: send chosen failed (and in-doubt) rows again."""

from collections.abc import Iterable

from django.db.models import Q

from notifier.models import Delivery
from notifier.services.dispatch import deliveries_dispatch, group_by_kind
from notifier.services.outbox.groups import _make_due

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
