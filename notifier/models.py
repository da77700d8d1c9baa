"""The delivery engine's data.

The outbox (``Delivery``) is the source of truth for every message: one row
per message per recipient, written before anything is handed to Celery or the
ESP, and updated with every outcome. Its status machine is documented on
``Delivery``; ``notifier.services`` (the outbox for grouped mail) and the
sending engine ``notifier.sending`` are its only writers. A ``DeliveryGroup``
(a campaign run) holds what its rows share: state and template context.
"""

import uuid
import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q


def validate_time_zone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(
            f"Unknown time zone {value!r} (use an IANA name such as Europe/Paris)."
        )


class Recipient(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        UNSUBSCRIBED = "unsubscribed", "Unsubscribed"
        BOUNCED = "bounced", "Bounced"
        COMPLAINED = "complained", "Complained"
        ERASED = "erased", "Erased"

    # Normalised by notifier.services.recipients.normalize_email (lower case,
    # IDNA domain); unique so one person is one row.
    email = models.EmailField(max_length=254, unique=True)
    name = models.CharField(max_length=200, blank=True)
    attributes = models.JSONField(default=dict, blank=True)
    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone])
    locale = models.CharField(max_length=16, default="en", blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["email"]
        indexes = [models.Index(fields=["status"], name="recipient_status_idx")]

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>" if self.name else self.email


class Template(models.Model):
    """Subject, HTML and text in the Django template language.

    Rendered by ``notifier.templating`` in a locked-down engine: autoescape on,
    no loaders, no ``{% load %}``/``{% include %}``/``{% debug %}``, and a
    context holding only plain data. ``clean()`` compiles all three parts so a
    syntax error is reported on save, not at send time.
    """

    name = models.CharField(max_length=200, unique=True)
    subject = models.CharField(max_length=500)
    html_body = models.TextField("HTML body")
    text_body = models.TextField(
        "text body", blank=True, help_text="Leave empty to derive it from the HTML body."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from notifier.templating import TemplateSyntaxProblem, check_syntax

        errors = {}
        for field in ("subject", "html_body", "text_body"):
            try:
                check_syntax(getattr(self, field) or "")
            except TemplateSyntaxProblem as exc:
                errors[field] = str(exc)
        if errors:
            raise ValidationError(errors)


class DeliveryGroup(models.Model):
    """Deliveries sent as one unit: a campaign run today (a digest window or a
    test send could be others). The batch reads a group's ``state`` (a paused
    group's rows are handed back and held, a cancelled group's are cancelled)
    and renders every row with the group's shared ``context`` (stored once,
    not copied into every row; a row's own context wins). Written only by
    ``notifier.services.outbox``.

    ``owner`` names what the group belongs to (``campaigns.run``), ``label``
    says which for people. A campaign run's group has the run's id, so a
    Delivery's ``run_id`` names both; notifier never reads the owner's tables.
    """

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"
        CANCELLED = "cancelled", "Cancelled"

    owner = models.CharField(max_length=64)
    label = models.CharField(max_length=200, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    context = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return self.label or f"{self.owner} {self.pk}"


class Delivery(models.Model):
    """One message to one recipient: the outbox row.

    Status machine (the only transitions services make)::

        pending -> sending -> sent -> delivered | bounced | complained
        sending -> pending      transient error, next_attempt_at in the future
        sending -> failed       permanent error, or attempts exhausted
        sending -> unknown      handed to the transport, answer never recorded
                                (the worker died); never resent automatically
        pending -> suppressed | cancelled
        sent | unknown -> delivered -> bounced -> complained
                                ESP events (services.events), only forwards;
                                an event proves an in-doubt message was sent
        failed | unknown -> pending     staff retry (services.outbox.deliveries_retry)

    A row in ``sending`` is owned by the batch whose ``claim_token`` it carries
    until ``lease_expires_at``; after that the sweeper recovers it.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        SENT = "sent", "Sent"
        DELIVERED = "delivered", "Delivered"
        BOUNCED = "bounced", "Bounced"
        COMPLAINED = "complained", "Complained"
        FAILED = "failed", "Failed"
        UNKNOWN = "unknown", "Unknown (in doubt)"
        SUPPRESSED = "suppressed", "Suppressed"
        CANCELLED = "cancelled", "Cancelled"

    class FailureKind(models.TextChoices):
        # Why a row is ``failed`` (blank otherwise): data to filter on; the
        # human sentence stays in status_reason.
        NONE = "", "-"
        TRANSIENT_EXHAUSTED = "transient_exhausted", "Transient errors, attempts exhausted"
        PERMANENT = "permanent", "Permanent error"
        RENDER = "render", "Could not render"

    class Kind(models.TextChoices):
        TRANSACTIONAL = "transactional", "Transactional"
        CAMPAIGN = "campaign", "Campaign"
        DIGEST = "digest", "Digest"
        NOTIFICATION = "notification", "Notification"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # Indexed by delivery_one_per_run_recipient, which leads with it.
    recipient = models.ForeignKey(
        Recipient, on_delete=models.PROTECT, related_name="deliveries", db_index=False
    )
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.TRANSACTIONAL)
    # What: a template plus context, or inline content (template is null).
    template = models.ForeignKey(
        Template, null=True, blank=True, on_delete=models.PROTECT, related_name="deliveries"
    )
    subject = models.CharField(max_length=500, blank=True)
    html_body = models.TextField(blank=True)
    text_body = models.TextField(blank=True)
    context = models.JSONField(default=dict, blank=True)
    from_email = models.CharField(max_length=320, blank=True)
    headers = models.JSONField(default=dict, blank=True)
    transport = models.CharField(max_length=32, default="esp")
    # Why: the group it was sent with (a campaign run: see DeliveryGroup), or
    # an idempotency key for transactional mail and digests. Indexed by
    # delivery_run_status_idx, which leads with it.
    run = models.ForeignKey(
        DeliveryGroup,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="deliveries",
        db_column="run_id",
        db_index=False,
    )
    # Unique where set (a partial unique index: campaign rows carry none).
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    status_reason = models.CharField(max_length=500, blank=True)
    failure_kind = models.CharField(
        max_length=24, choices=FailureKind.choices, default=FailureKind.NONE, blank=True
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    esp_message_id = models.CharField(max_length=255, blank=True)
    # Ownership of a row in `sending` (see class docstring).
    claim_token = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # When a Celery task was last asked to send this row (null: nobody was).
    dispatched_at = models.DateTimeField(null=True, blank=True)

    opens = models.PositiveIntegerField(default=0)
    clicks = models.PositiveIntegerField(default=0)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "deliveries"
        ordering = ["-id"]
        constraints = [
            # One row per recipient per run (rows without a run never clash:
            # NULLs are distinct); also the index of a recipient's deliveries.
            models.UniqueConstraint(
                fields=["recipient", "run"], name="delivery_one_per_run_recipient"
            ),
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="delivery_idempotency_key_uniq",
            ),
        ]
        # Partial indexes: a row enters only the ones for its current state,
        # so the claim, the outcome write and a million-row launch each update
        # fewer indexes (every status change is a non-HOT update).
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status="pending"),
                name="delivery_due_idx",
            ),
            models.Index(
                fields=["claim_token"],
                condition=Q(claim_token__isnull=False),
                name="delivery_claim_idx",
            ),
            models.Index(
                fields=["esp_message_id"],
                condition=~Q(esp_message_id=""),
                name="delivery_esp_id_idx",
            ),
            models.Index(fields=["run", "status"], name="delivery_run_status_idx"),
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(status="sending"),
                name="delivery_lease_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"Delivery {self.pk} to {self.recipient_id} ({self.status})"

    @property
    def message_id(self) -> str:
        """Stable RFC 5322 Message-ID: the same on every attempt."""
        return f"<{self.uuid}@{settings.NOTIFIER_MESSAGE_ID_DOMAIN}>"


class DeliveryEvent(models.Model):
    """One ESP tracking event, stored once (deduplicated on ``event_key``)."""

    delivery = models.ForeignKey(
        Delivery, null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    # The ESP's event id, or a stable hash of the event when it has none.
    event_key = models.CharField(max_length=255, unique=True)
    event_type = models.CharField(max_length=32)
    esp_message_id = models.CharField(max_length=255, blank=True, db_index=True)
    email = models.CharField(max_length=320, blank=True)
    description = models.TextField(blank=True)
    occurred_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    payload = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            # Soft bounces of one address within a window (events.soft_bounce_limit_reached).
            models.Index(
                fields=["email", "event_type", "occurred_at"], name="deliveryevent_email_type_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.email}"


class Suppression(models.Model):
    """An address nothing is ever sent to while the suppression is active."""

    class Reason(models.TextChoices):
        UNSUBSCRIBED = "unsubscribed", "Unsubscribed"
        HARD_BOUNCE = "hard_bounce", "Hard bounce"
        SOFT_BOUNCES = "soft_bounces", "Repeated soft bounces"
        COMPLAINT = "complaint", "Spam complaint"
        MANUAL = "manual", "Manual"

    email = models.EmailField(max_length=254)
    reason = models.CharField(max_length=16, choices=Reason.choices)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_reason = models.TextField(blank=True)
    lifted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["email"],
                condition=Q(lifted_at__isnull=True),
                name="suppression_one_active_per_email",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.email} ({self.get_reason_display()})"


class Frequency(models.TextChoices):
    INSTANT = "instant", "At once"
    HOURLY = "hourly", "Hourly digest"
    DAILY = "daily", "Daily digest"
    OFF = "off", "Off"


class Topic(models.Model):
    """A kind of notification recipients can choose how often to get."""

    key = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    default_frequency = models.CharField(
        max_length=8, choices=Frequency.choices, default=Frequency.INSTANT
    )
    instant_template = models.ForeignKey(
        Template, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # One entry of the digest's section for this topic (template language,
    # context: the notification's data).
    digest_item = models.TextField(blank=True, default="{{ data }}")
    digest_cap = models.PositiveIntegerField(
        default=20, help_text="Most entries shown for this topic in one digest."
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Preference(models.Model):
    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="preferences")
    topic = models.ForeignKey(Topic, on_delete=models.CASCADE, related_name="preferences")
    frequency = models.CharField(max_length=8, choices=Frequency.choices)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["recipient", "topic"], name="preference_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.recipient_id}/{self.topic_id}: {self.frequency}"


class Notification(models.Model):
    """An event from ``notify()`` waiting for (or included in) a digest."""

    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="notifications")
    topic = models.ForeignKey(Topic, on_delete=models.CASCADE, related_name="notifications")
    data = models.JSONField(default=dict, blank=True)
    frequency = models.CharField(max_length=8, choices=Frequency.choices)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Set in the same transaction that creates the digest Delivery.
    digest = models.ForeignKey(
        Delivery, null=True, blank=True, on_delete=models.SET_NULL, related_name="notifications"
    )
    included_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["frequency", "recipient"],
                condition=Q(included_at__isnull=True),
                name="notification_due_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.topic_id} for {self.recipient_id}"
