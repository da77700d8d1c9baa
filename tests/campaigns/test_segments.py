"""Segment conditions: a safe vocabulary compiled to a filter."""

import pytest
from django.core.exceptions import ValidationError

from campaigns.models import SegmentCondition
from campaigns.segments import SegmentError, condition_q
from notifier.models import Recipient
from tests.campaigns.factories import SegmentConditionFactory, SegmentFactory
from tests.notifier.factories import RecipientFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def people():
    return {
        "ann": RecipientFactory(email="ann@shop.example", name="Ann", attributes={"plan": "Pro"}),
        "bob": RecipientFactory(email="bob@mail.example", name="Bob", attributes={"plan": "free"}),
        "cy": RecipientFactory(email="cy@shop.example", name="Cy", attributes={}, locale="fr"),
        "dee": RecipientFactory(
            email="dee@mail.example", name="Dee", attributes={"plan": "pro"}, status="bounced"
        ),
    }


def _match(**condition) -> set[str]:
    condition.setdefault("attribute", "")
    condition.setdefault("value", "")
    q = condition_q(**condition)
    return {r.name for r in Recipient.objects.filter(q)}


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (
            {"field": "attribute", "attribute": "plan", "operator": "equals", "value": "PRO"},
            {"Ann", "Dee"},
        ),
        (
            {"field": "attribute", "attribute": "plan", "operator": "not_equals", "value": "pro"},
            {"Bob", "Cy"},
        ),
        ({"field": "attribute", "attribute": "plan", "operator": "is_set"}, {"Ann", "Bob", "Dee"}),
        ({"field": "attribute", "attribute": "plan", "operator": "is_not_set"}, {"Cy"}),
        (
            {"field": "attribute", "attribute": "plan", "operator": "in", "value": "free, pro"},
            {"Ann", "Bob", "Dee"},
        ),
        ({"field": "email", "operator": "ends_with", "value": "@shop.example"}, {"Ann", "Cy"}),
        ({"field": "email", "operator": "not_contains", "value": "shop"}, {"Bob", "Dee"}),
        ({"field": "name", "operator": "starts_with", "value": "b"}, {"Bob"}),
        ({"field": "locale", "operator": "equals", "value": "fr"}, {"Cy"}),
        (
            {"field": "status", "operator": "in", "value": "active,bounced"},
            {"Ann", "Bob", "Cy", "Dee"},
        ),
        ({"field": "status", "operator": "not_equals", "value": "active"}, {"Dee"}),
        (
            {"field": "created_at", "operator": "after", "value": "2000-01-01"},
            {"Ann", "Bob", "Cy", "Dee"},
        ),
        ({"field": "created_at", "operator": "before", "value": "2000-01-01"}, set()),
    ],
)
def test_conditions(people, condition, expected):
    assert _match(**condition) == expected


def test_values_are_data_not_sql(people):
    assert _match(field="name", operator="equals", value="x' OR '1'='1") == set()
    assert _match(field="attribute", attribute="plan", operator="contains", value="%") == set()


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ({"field": "password", "operator": "equals", "value": "x"}, "Unknown field"),
        ({"field": "email", "operator": "before", "value": "x"}, "cannot be used"),
        (
            {
                "field": "attribute",
                "attribute": "a__b') OR 1=1",
                "operator": "equals",
                "value": "x",
            },
            "Attribute names",
        ),
        ({"field": "attribute", "attribute": "", "operator": "is_set"}, "Attribute names"),
        (
            {"field": "email", "attribute": "plan", "operator": "equals", "value": "x"},
            "only used with",
        ),
        ({"field": "email", "operator": "equals", "value": " "}, "needs a value"),
        ({"field": "status", "operator": "equals", "value": "vip"}, "Unknown status"),
        ({"field": "created_at", "operator": "after", "value": "yesterday"}, "not a date"),
    ],
)
def test_conditions_outside_the_vocabulary_are_refused(condition, message):
    condition.setdefault("attribute", "")
    condition.setdefault("value", "")
    with pytest.raises(SegmentError, match=message):
        condition_q(**condition)
    with pytest.raises(ValidationError):
        SegmentCondition(segment=SegmentFactory.build(), **condition).full_clean()


def test_any_and_all(people):
    from campaigns.segments import segment_q

    segment = SegmentFactory(match="all")
    SegmentConditionFactory(segment=segment, attribute="plan", operator="equals", value="pro")
    SegmentConditionFactory(
        segment=segment, field="status", attribute="", operator="equals", value="active"
    )
    assert {r.name for r in Recipient.objects.filter(segment_q(segment))} == {"Ann"}
    segment.match = "any"
    assert {r.name for r in Recipient.objects.filter(segment_q(segment))} == {
        "Ann",
        "Bob",
        "Cy",
        "Dee",
    }
    assert not Recipient.objects.filter(segment_q(SegmentFactory())).exists()  # no conditions
