"""Reads of the delivery engine's data."""

from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce

from notifier.models import Delivery, Preference, Recipient, Suppression, Topic

S = Delivery.Status


def delivery_event_totals(*, run_id: int) -> dict[str, int]:
    """What happened to a campaign run's messages after they were sent (one query).

    ``delivered`` counts messages the ESP delivered (a complaint implies
    delivery); ``opened`` / ``clicked`` count messages opened / clicked at
    least once; ``opens`` / ``clicks`` count every open and click.
    """
    return Delivery.objects.filter(run_id=run_id).aggregate(
        delivered=Count("id", filter=Q(status__in=[S.DELIVERED, S.COMPLAINED])),
        bounced=Count("id", filter=Q(status=S.BOUNCED)),
        complained=Count("id", filter=Q(status=S.COMPLAINED)),
        opened=Count("id", filter=Q(opens__gt=0)),
        clicked=Count("id", filter=Q(clicks__gt=0)),
        opens=Coalesce(Sum("opens"), 0),
        clicks=Coalesce(Sum("clicks"), 0),
    )


def recipient_topic_frequencies(*, recipient: Recipient) -> list[tuple[Topic, str]]:
    """Every topic with the recipient's frequency for it (the topic's default if unset)."""
    chosen = dict(
        Preference.objects.filter(recipient=recipient).values_list("topic_id", "frequency")
    )
    return [(topic, chosen.get(topic.pk, topic.default_frequency)) for topic in Topic.objects.all()]


def active_suppression(*, email: str) -> Suppression | None:
    return Suppression.objects.filter(email=email, lifted_at__isnull=True).first()
