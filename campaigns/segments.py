"""Segment conditions: a fixed vocabulary compiled to a ``Q`` over Recipient.

Staff pick a field, an operator and a value; nothing they type becomes SQL
or an ORM lookup path. Attribute names are passed to the database as
parameters of JSON key transforms, and values only ever as parameters.
"""

import re
from datetime import datetime, time

from django.db.models import F, Q
from django.db.models.fields.json import HasKey, KeyTextTransform
from django.db.models.lookups import IContains, IEndsWith, IExact, IStartsWith
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from notifier.models import Recipient

TEXT_FIELDS = {"email", "name", "locale", "time_zone"}
TEXT_OPERATORS = {
    "equals",
    "not_equals",
    "contains",
    "not_contains",
    "starts_with",
    "ends_with",
    "in",
}
OPERATORS_BY_FIELD = {
    **dict.fromkeys(TEXT_FIELDS, TEXT_OPERATORS),
    "status": {"equals", "not_equals", "in"},
    "created_at": {"before", "after"},
    "attribute": TEXT_OPERATORS | {"is_set", "is_not_set"},
}
NO_VALUE_OPERATORS = {"is_set", "is_not_set"}
ATTRIBUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LOOKUPS = {
    "equals": IExact,
    "contains": IContains,
    "starts_with": IStartsWith,
    "ends_with": IEndsWith,
}


class SegmentError(ValueError):
    """A condition outside the vocabulary; the message says what is wrong."""


def _parse_moment(value: str) -> datetime:
    moment = parse_datetime(value.strip())
    if moment is None:
        day = parse_date(value.strip())
        if day is None:
            raise SegmentError(f"{value!r} is not a date (use YYYY-MM-DD or YYYY-MM-DD HH:MM).")
        moment = datetime.combine(day, time.min)
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


def condition_check(*, field: str, attribute: str, operator: str, value: str) -> None:
    """Raise SegmentError unless the condition is in the vocabulary."""
    allowed = OPERATORS_BY_FIELD.get(field)
    if allowed is None:
        raise SegmentError(f"Unknown field {field!r}.")
    if operator not in allowed:
        raise SegmentError(f"The operator {operator!r} cannot be used with {field}.")
    if field == "attribute":
        if not ATTRIBUTE_NAME.match(attribute or ""):
            raise SegmentError(
                "Attribute names are 1-64 letters, digits, '_', '-' or '.', "
                "starting with a letter or digit."
            )
    elif attribute:
        raise SegmentError("An attribute name is only used with the Attribute field.")
    if operator not in NO_VALUE_OPERATORS and not (value or "").strip():
        raise SegmentError("This operator needs a value.")
    if field == "status":
        unknown = set(_split(value)) - set(Recipient.Status.values)
        if unknown:
            raise SegmentError(
                f"Unknown status {', '.join(sorted(unknown))}; "
                f"use one of {', '.join(Recipient.Status.values)}."
            )
    if field == "created_at":
        _parse_moment(value)


def _split(value: str) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def condition_q(*, field: str, attribute: str, operator: str, value: str) -> Q:
    """The Q for one condition (checked first)."""
    condition_check(field=field, attribute=attribute, operator=operator, value=value)
    if field == "created_at":
        moment = _parse_moment(value)
        return Q(created_at__lt=moment) if operator == "before" else Q(created_at__gte=moment)
    if field == "attribute":
        target = KeyTextTransform(attribute, "attributes")
        has_key = Q(HasKey(F("attributes"), attribute))
        if operator == "is_set":
            return has_key
        if operator == "is_not_set":
            return ~has_key
    else:
        target = F(field)
        has_key = None
    if operator == "in":
        values = _split(value)
        if field == "status":
            return Q(status__in=values)
        # Case-insensitive membership: one IExact per value.
        match = Q()
        for item in values:
            match |= Q(IExact(target, item))
        return match
    if field == "status":
        return Q(status=value.strip()) if operator == "equals" else ~Q(status=value.strip())
    negate = operator.startswith("not_")
    lookup = LOOKUPS[operator.removeprefix("not_")]
    match = Q(lookup(target, value.strip()))
    if not negate:
        return match
    if has_key is None:
        return ~match
    # A recipient without the attribute does not equal / contain the value.
    return ~has_key | ~match


def segment_q(segment) -> Q:
    """The Q selecting a segment's recipients (matches nobody without conditions)."""
    conditions = list(segment.conditions.all())
    if not conditions:
        return Q(pk__in=[])
    combined = None
    for condition in conditions:
        q = condition_q(
            field=condition.field,
            attribute=condition.attribute,
            operator=condition.operator,
            value=condition.value,
        )
        if combined is None:
            combined = q
        elif segment.match == segment.Match.ANY:
            combined |= q
        else:
            combined &= q
    return combined
