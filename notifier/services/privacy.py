"""GDPR: export everything about a recipient, erase a recipient.

Both walk the model registry instead of a hand-kept list, so a table added
later (in any app) is covered without anyone remembering it: a model is
*about* a recipient when a chain of foreign keys (at most ``MAX_HOPS``) leads
from it to ``Recipient`` (deliveries, their events, notifications,
preferences, list memberships, consents, journey places, webhook calls...).
notifier imports no other app; it finds their models through
``django.apps``.

Erasing, in one transaction:

* the recipient row keeps its id (other rows point at it) but loses its
  address, name and attributes (``erased-<public id>@erased.invalid``) and
  becomes ``erased``; its pending mail is cancelled;
* in every row about the recipient, every text column has the address and the
  name replaced, JSON columns too (message contexts, headers, ESP event
  payloads, notification data and attributes are emptied outright), IP
  addresses are cleared;
* ESP events found by address, and any other table's text or JSON column
  holding the address (the admin's change log, API replay records) are
  scrubbed the same way;
* the address's suppressions keep only a keyed hash (``email_hash``), and an
  active ``erased`` suppression by hash makes sure it is never mailed again:
  ``recipient_get_or_create`` (``send()``, ``notify()``, the API), the CSV
  import and signup forms refuse it until staff lift that suppression;
* a ``RecipientErasure`` row records who erased and when.
"""

import json
import re
from collections import deque
from collections.abc import Iterable

from django.apps import apps
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.crypto import salted_hmac

from notifier.models import (
    Delivery,
    DeliveryEvent,
    Notification,
    Recipient,
    RecipientErasure,
    Suppression,
)
from notifier.services.recipients import normalize_email

MAX_HOPS = 3
HASH_SALT = "notifier.privacy.email_hash"
TEXT_FIELDS = (models.CharField, models.TextField)
# JSON columns that are the person's data as a whole: emptied, not searched.
EMPTIED_JSON = {
    (Recipient, "attributes"),
    (Delivery, "context"),
    (Delivery, "headers"),
    (DeliveryEvent, "payload"),
    (Notification, "data"),
}
ERASED_NAME = "[erased]"
# Staff accounts are not recipients' data, even when a recipient's address
# is also a staff user's.
NOT_SEARCHED_APPS = {"auth"}


# --- The address's hash -----------------------------------------------------------


def _keyed_hash(normalized: str, secret: str | None = None) -> str:
    return salted_hmac(HASH_SALT, normalized, secret=secret, algorithm="sha256").hexdigest()


def email_hash(email: str) -> str:
    """A keyed one-way hash of the normalised address (HMAC-SHA256 with a key
    derived from SECRET_KEY): the same address always gives the same hash,
    and the hash cannot be turned back into the address."""
    return _keyed_hash(normalize_email(email))


def email_hashes(normalized: str) -> list[str]:
    """A normalised address's hash under the current key and every fallback
    key, so a rotated SECRET_KEY still recognises erased addresses. (No
    validation here: the batch path hashes hundreds of stored addresses.)"""
    secrets = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    value = normalized.strip().lower()
    return [_keyed_hash(value, secret) for secret in secrets]


def address_erased(email: str) -> bool:
    """True when ``email`` belongs to an erased recipient whose suppression
    staff have not lifted."""
    return Suppression.objects.filter(
        email_hash__in=email_hashes(email), lifted_at__isnull=True
    ).exists()


def erased_addresses(emails: Iterable[str]) -> set[str]:
    """Which of ``emails`` (normalised) are erased and still suppressed: one query."""
    by_hash = {h: email for email in emails for h in email_hashes(email)}
    if not by_hash:
        return set()
    found = Suppression.objects.filter(
        email_hash__in=list(by_hash), lifted_at__isnull=True
    ).values_list("email_hash", flat=True)
    return {by_hash[h] for h in found}


# --- Which tables are about a recipient -------------------------------------------


def _fk_fields(model) -> list[models.Field]:
    return [
        field
        for field in model._meta.concrete_fields
        if field.is_relation and (field.many_to_one or field.one_to_one) and field.related_model
    ]


def recipient_paths(model) -> list[str]:
    """The ORM paths (``recipient``, ``delivery__recipient``...) from ``model``
    to a Recipient, following foreign keys at most ``MAX_HOPS`` deep."""
    if model is Recipient:
        return ["pk"]
    paths = []
    queue = deque([(model, "", 0)])
    while queue:
        current, prefix, depth = queue.popleft()
        if depth >= MAX_HOPS:
            continue
        for field in _fk_fields(current):
            path = f"{prefix}{field.name}"
            if field.related_model is Recipient:
                paths.append(path)
            elif field.related_model is not current:
                queue.append((field.related_model, f"{path}__", depth + 1))
    return paths


def recipient_models() -> list[tuple[type[models.Model], list[str]]]:
    """Every installed model about a recipient, with its paths to one."""
    found = []
    for model in apps.get_models(include_auto_created=True):
        paths = recipient_paths(model)
        if paths:
            found.append((model, paths))
    return found


def _rows_about(model, paths: list[str], recipient_id: int) -> models.QuerySet:
    condition = Q()
    for path in paths:
        condition |= Q(**{path: recipient_id})
    return model._base_manager.filter(condition).distinct()


# --- Export -----------------------------------------------------------------------


def _row_data(obj: models.Model) -> dict:
    data = {}
    for field in obj._meta.concrete_fields:
        value = field.value_from_object(obj)
        data[field.attname] = value
        if field.is_relation and value is not None and field.related_model is not Recipient:
            # What the id points at, for people (a list's name, a topic's).
            target = getattr(obj, field.name, None)
            data[f"{field.name}_label"] = str(target) if target is not None else None
    return data


def recipient_export(*, recipient: Recipient) -> dict:
    """Everything stored about ``recipient``, as JSON-ready data: one entry
    per table (``app_label.model``), each a list of rows."""
    tables: dict[str, list[dict]] = {}
    for model, paths in recipient_models():
        relations = [f.name for f in _fk_fields(model)]
        rows = _rows_about(model, paths, recipient.pk).select_related(*relations).order_by("pk")
        tables[model._meta.label_lower] = [_row_data(row) for row in rows]
    by_address = {
        "notifier.suppression": [
            _row_data(s)
            for s in Suppression.objects.filter(
                Q(email=recipient.email) | Q(email_hash__in=email_hashes(recipient.email))
            )
        ],
        "notifier.deliveryevent": [
            _row_data(e)
            for e in DeliveryEvent.objects.filter(email=recipient.email, delivery__isnull=True)
        ],
    }
    document = {
        "format": "notifier-recipient-export/1",
        "exported_at": timezone.now(),
        "recipient": _row_data(recipient),
        "tables": tables,
        "by_address": by_address,
    }
    # Plain JSON types only (datetimes, UUIDs and decimals as strings).
    return json.loads(json.dumps(document, cls=DjangoJSONEncoder))


# --- Erase ------------------------------------------------------------------------


class AlreadyErased(ValueError):
    pass


def _scrubber(*needles: str, replacement: dict[str, str]):
    needles = [n for n in needles if n and len(n.strip()) >= 2]
    if not needles:
        return lambda value: value
    pattern = re.compile(
        "|".join(re.escape(n) for n in sorted(needles, key=len, reverse=True)), re.I
    )

    def scrub(value):
        if isinstance(value, str):
            return pattern.sub(lambda m: replacement.get(m.group(0).lower(), ERASED_NAME), value)
        if isinstance(value, dict):
            return {scrub(k): scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value

    return scrub


def _scrub_rows(rows: Iterable[models.Model], scrub, *, empty_json: bool) -> int:
    """Rewrite every text and JSON column of ``rows`` through ``scrub``; IP
    addresses are cleared. Returns how many rows changed."""
    changed = 0
    for obj in rows:
        model = type(obj)
        updates = {}
        for field in model._meta.concrete_fields:
            if field.primary_key or field.is_relation:
                continue
            value = field.value_from_object(obj)
            if isinstance(field, models.GenericIPAddressField):
                new = None if field.null else "0.0.0.0"
            elif isinstance(field, models.JSONField):
                if empty_json and (model, field.name) in EMPTIED_JSON:
                    new = type(value)() if isinstance(value, dict | list) else {}
                else:
                    new = scrub(value)
            elif isinstance(field, TEXT_FIELDS) and isinstance(value, str):
                new = scrub(value)
            else:
                continue
            if new != value:
                updates[field.attname] = new
        if updates:
            model._base_manager.filter(pk=obj.pk).update(**updates)
            changed += 1
    return changed


def _search_text(model, email: str) -> Q:
    condition = Q()
    for field in model._meta.concrete_fields:
        if field.primary_key or field.is_relation:
            continue
        if isinstance(field, (*TEXT_FIELDS, models.JSONField)):
            condition |= Q(**{f"{field.name}__icontains": email})
    return condition


def recipient_erase(*, recipient: Recipient, by: str, user=None) -> RecipientErasure:
    """Erase ``recipient`` (see the module docstring). ``by`` says who asks
    ("staff:<username>", "api:<service>"); ``user`` is the staff user, if any."""
    with transaction.atomic():
        recipient = Recipient.objects.select_for_update().get(pk=recipient.pk)
        if recipient.status == Recipient.Status.ERASED:
            raise AlreadyErased("This recipient was erased already.")
        email, name = recipient.email, recipient.name
        hashed = email_hash(email)
        anonymous = f"erased-{recipient.public_id.hex}@erased.invalid"
        scrub = _scrubber(email, name, replacement={email.lower(): anonymous})
        now = timezone.now()
        counts: dict[str, int] = {}

        counts["cancelled_deliveries"] = Delivery.objects.filter(
            recipient=recipient, status=Delivery.Status.PENDING
        ).update(status=Delivery.Status.CANCELLED, status_reason="Recipient erased", updated_at=now)

        # The address's suppressions keep only its hash; one active
        # "erased" suppression (or the active one it had) keeps it unmailed.
        already = Suppression.objects.filter(email_hash=hashed, lifted_at__isnull=True).exists()
        if already:  # erased before, then re-added by staff: one active row per hash
            Suppression.objects.filter(email=email, lifted_at__isnull=True).update(
                lifted_at=now, lifted_reason="Merged into the erased address's suppression"
            )
        Suppression.objects.filter(email=email).update(email="", email_hash=hashed)
        if not Suppression.objects.filter(email_hash=hashed, lifted_at__isnull=True).exists():
            Suppression.objects.create(
                email_hash=hashed, reason=Suppression.Reason.ERASED, note=f"Erased by {by}"
            )

        for model, paths in recipient_models():
            if model is Recipient:
                continue
            rows = _rows_about(model, paths, recipient.pk)
            n = _scrub_rows(rows.iterator(), scrub, empty_json=True)
            if n:
                counts[model._meta.label_lower] = n

        events = DeliveryEvent.objects.filter(email=email)
        counts["notifier.deliveryevent (by address)"] = events.count()
        _scrub_rows(events, scrub, empty_json=True)
        events.update(email="")

        # Tables not about a recipient by key that may still quote the address.
        about = {model for model, _ in recipient_models()}
        for model in apps.get_models(include_auto_created=True):
            if model in about or model is Suppression or not model._meta.managed:
                continue
            if model._meta.app_label in NOT_SEARCHED_APPS:
                continue
            condition = _search_text(model, email)
            if not condition:
                continue
            n = _scrub_rows(model._base_manager.filter(condition), scrub, empty_json=False)
            if n:
                counts[model._meta.label_lower] = n

        Recipient.objects.filter(pk=recipient.pk).update(
            email=anonymous,
            name="",
            attributes={},
            status=Recipient.Status.ERASED,
            created_by="",
            updated_at=now,
        )
        return RecipientErasure.objects.create(
            recipient=recipient,
            email_hash=hashed,
            erased_by=user,
            erased_by_name=by[:200],
            rows_changed=counts,
        )
