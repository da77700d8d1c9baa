"""The delivery engine's data.

The outbox (``Delivery``) is the source of truth for every message: one row
per message per recipient, written before anything is handed to Celery or the
ESP, and updated with every outcome. Its status machine is documented on
``Delivery``; ``notifier.services`` (the outbox for grouped mail) and the
sending engine ``notifier.sending`` are its only writers. A ``DeliveryGroup``
(a campaign run) holds what its rows share: state and template context.
"""

import unicodedata
import uuid
import zoneinfo
from datetime import UTC, datetime, time

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from notifier.email_html import DEFAULT_LAYOUT, LAYOUT_CHOICES


def validate_time_zone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(
            f"Unknown time zone {value!r} (use an IANA name such as Europe/Paris)."
        )


# Every timestamp a caller can set is kept inside this range by a CHECK (on
# PostgreSQL and SQLite alike): PostgreSQL stores times Python cannot read back
# (years 0 and 10000 and beyond), and one such row would break every query that
# loads it. Generous on purpose: a caller's own limits are narrower.
STORED_TIME_MIN = datetime(2000, 1, 1, tzinfo=UTC)
STORED_TIME_MAX = datetime(9000, 1, 1, tzinfo=UTC)


def time_in_stored_range(field: str) -> Q:
    return Q(**{f"{field}__isnull": True}) | Q(
        **{f"{field}__gte": STORED_TIME_MIN, f"{field}__lt": STORED_TIME_MAX}
    )


# Control characters (C0, DEL, C1) and the Unicode line and paragraph
# separators: in a name they end up in a To header, where they split or
# mangle it.
_NAME_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot be a recipient's name, or None."""
    for position, char in enumerate(value):
        if unicodedata.category(char) in _NAME_FORBIDDEN_CATEGORIES:
            return (
                f"The name contains a control character (U+{ord(char):04X} at position "
                f"{position + 1}); names are one line of visible text."
            )
    return None


def validate_recipient_name(value: str) -> None:
    problem = name_problem(value)
    if problem is not None:
        raise ValidationError(problem)


class RandomUUID(models.Func):
    """A random UUID made by the database (rows inserted by bulk SQL get one too)."""

    output_field = models.UUIDField()

    def as_sql(self, compiler, connection, **extra_context):
        return "gen_random_uuid()", []  # PostgreSQL 13+

    def as_sqlite(self, compiler, connection, **extra_context):
        return "lower(hex(randomblob(16)))", []  # how Django stores a UUID in SQLite


class Weekday(models.IntegerChoices):
    # Python's numbering (date.weekday()): Monday is 0.
    MONDAY = 0, "Monday"
    TUESDAY = 1, "Tuesday"
    WEDNESDAY = 2, "Wednesday"
    THURSDAY = 3, "Thursday"
    FRIDAY = 4, "Friday"
    SATURDAY = 5, "Saturday"
    SUNDAY = 6, "Sunday"


class QuietHoursMode(models.TextChoices):
    HOLD = "hold", "Send them when my quiet hours end"
    DIGEST = "digest", "Put them in my next daily digest"


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
    name = models.CharField(max_length=200, blank=True, validators=[validate_recipient_name])
    attributes = models.JSONField(default=dict, blank=True)
    # Who created the row: "api:<service>" for an HTTP API caller (only that
    # caller may set its name later); empty for staff, imports and code in
    # this process. A database default: bulk imports insert without it.
    created_by = models.CharField(
        max_length=64, blank=True, default="", db_default="", editable=False
    )
    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone])
    locale = models.CharField(max_length=16, default="en", blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    # What links in emails name the recipient by: random, so a link reveals
    # nothing about other recipients (the id is sequential).
    public_id = models.UUIDField(
        default=uuid.uuid4, db_default=RandomUUID(), unique=True, editable=False
    )
    # When the weekly digest goes out, in the recipient's time zone (chosen on
    # the preference page).
    weekly_digest_day = models.PositiveSmallIntegerField(
        choices=Weekday.choices, default=Weekday.MONDAY, db_default=Weekday.MONDAY
    )
    weekly_digest_time = models.TimeField(default=time(8, 0), db_default=time(8, 0))
    # No notification email between these local times (start > end spans
    # midnight); unset: only the installation's and topics' quiet hours apply.
    quiet_hours_start = models.TimeField(null=True, blank=True)
    quiet_hours_end = models.TimeField(null=True, blank=True)
    # What happens to an instant notification that falls inside them.
    quiet_hours_mode = models.CharField(
        max_length=8,
        choices=QuietHoursMode.choices,
        default=QuietHoursMode.HOLD,
        db_default=QuietHoursMode.HOLD,
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["email"]
        indexes = [models.Index(fields=["status"], name="recipient_status_idx")]

    def __str__(self) -> str:
        return f"{self.name} <{self.email}>" if self.name else self.email


class Template(models.Model):
    """Subject, HTML (or MJML) and text in the Django template language.

    Rendered by ``notifier.templating`` in a locked-down engine: autoescape on,
    no loaders, no ``{% load %}``/``{% include %}``/``{% debug %}``, and a
    context holding only plain data. ``clean()`` compiles all three parts so a
    syntax error is reported on save, not at send time.

    ``html_body`` is what staff write; ``compiled_html`` is what is sent: the
    body in its layout, MJML compiled, CSS inlined (``notifier.email_html``),
    made once by ``notifier.services.templates`` on every save.
    """

    class SourceFormat(models.TextChoices):
        HTML = "html", "HTML"
        MJML = "mjml", "MJML (responsive email markup)"

    class Kind(models.TextChoices):
        # Used by send(), the HTTP API and topics: password resets, receipts.
        # Changing one needs the manage_transactional_template permission.
        TRANSACTIONAL = "transactional", "Transactional (send(), API, topics)"
        # Used by campaigns only; the Marketing group writes these.
        CAMPAIGN = "campaign", "Campaign"

    name = models.CharField(max_length=200, unique=True)
    # The database default serves processes of the previous version, which
    # insert templates without a kind while an upgrade migrates.
    kind = models.CharField(
        max_length=16,
        choices=Kind.choices,
        default=Kind.TRANSACTIONAL,
        db_default=Kind.TRANSACTIONAL,
    )
    subject = models.CharField(max_length=500)
    source_format = models.CharField(
        "written in",
        max_length=8,
        choices=SourceFormat.choices,
        default=SourceFormat.HTML,
        db_default=SourceFormat.HTML,
    )
    layout = models.CharField(
        max_length=16,
        choices=LAYOUT_CHOICES,
        default=DEFAULT_LAYOUT,
        db_default=DEFAULT_LAYOUT,
        help_text="The page the HTML body is placed in (MJML and complete HTML documents "
        "bring their own).",
    )
    html_body = models.TextField("HTML body")
    text_body = models.TextField(
        "text body", blank=True, help_text="Leave empty to derive it from the HTML body."
    )
    # Empty for rows written before it existed: the sender then compiles.
    compiled_html = models.TextField(blank=True, default="", db_default="", editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        permissions = [
            (
                "manage_transactional_template",
                "Can see, add, change and delete transactional templates",
            )
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from notifier.email_html import EmailHtmlProblem, email_html_compile
        from notifier.templating import TemplateSyntaxProblem, check_syntax

        errors = {}
        for field in ("subject", "html_body", "text_body"):
            try:
                check_syntax(getattr(self, field) or "")
            except TemplateSyntaxProblem as exc:
                errors[field] = str(exc)
        if "html_body" not in errors:
            try:
                check_syntax(
                    email_html_compile(
                        source=self.html_body,
                        source_format=self.source_format,
                        layout=self.layout,
                        title=self.subject,
                    )
                )
            except (EmailHtmlProblem, TemplateSyntaxProblem) as exc:
                errors["html_body"] = str(exc)
        if (
            self.pk
            and self.kind == self.Kind.CAMPAIGN
            and Topic.objects.filter(instant_template=self).exists()
        ):
            errors["kind"] = "A topic sends this template: it must stay transactional."
        if errors:
            raise ValidationError(errors)


class TemplateRevision(models.Model):
    """One saved version of a template: who saved it, when, and its content.

    Written by ``notifier.services.templates`` on every create, change,
    restore and delete, so a change can be reviewed (the admin shows the diff
    against the previous revision) and rolled back. Kept when the template or
    the user is deleted.
    """

    class Action(models.TextChoices):
        CREATED = "created", "Created"
        CHANGED = "changed", "Changed"
        RESTORED = "restored", "Restored"
        DELETED = "deleted", "Deleted"
        BASELINE = "baseline", "Recorded (content before revisions were kept)"

    template = models.ForeignKey(
        Template, null=True, blank=True, on_delete=models.SET_NULL, related_name="revisions"
    )
    action = models.CharField(max_length=16, choices=Action.choices)
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=16, choices=Template.Kind.choices)
    subject = models.CharField(max_length=500)
    source_format = models.CharField(
        max_length=8,
        choices=Template.SourceFormat.choices,
        default=Template.SourceFormat.HTML,
        db_default=Template.SourceFormat.HTML,
    )
    layout = models.CharField(
        max_length=16, choices=LAYOUT_CHOICES, default=DEFAULT_LAYOUT, db_default=DEFAULT_LAYOUT
    )
    html_body = models.TextField("HTML body")
    text_body = models.TextField("text body", blank=True)
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The username as it was, so the record survives the user's deletion.
    changed_by_name = models.CharField(max_length=150, blank=True)
    restored_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["template", "-id"], name="templaterevision_template_idx")]

    def __str__(self) -> str:
        return f"{self.name}: {self.get_action_display()} {self.created_at:%Y-%m-%d %H:%M}"


class SenderIdentity(models.Model):
    """A From identity staff may send as: one address, or a whole domain.

    Configured by admins. When at least one exists, every From (campaigns,
    test sends, ``send()`` and the API) must be one of them: an address
    identity's exact address, or any address at a domain identity's domain.
    ``DEFAULT_FROM_EMAIL`` is always allowed. See
    ``notifier.services.senders``.
    """

    name = models.CharField(
        "display name", max_length=200, blank=True, help_text="Shown as the sender's name."
    )
    email = models.EmailField(
        "address",
        max_length=254,
        blank=True,
        help_text="One address campaigns can send from. Leave empty for a domain identity.",
    )
    domain = models.CharField(
        max_length=253,
        blank=True,
        help_text="A verified domain: send() and the API may use any address at it. "
        "Leave empty for an address identity.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["email", "domain"]
        verbose_name = "sender identity"
        verbose_name_plural = "sender identities"
        constraints = [
            models.CheckConstraint(
                condition=(Q(email="") & ~Q(domain="")) | (~Q(email="") & Q(domain="")),
                name="senderidentity_address_or_domain",
            ),
            models.UniqueConstraint(
                fields=["email"], condition=~Q(email=""), name="senderidentity_email_uniq"
            ),
            models.UniqueConstraint(
                fields=["domain"], condition=~Q(domain=""), name="senderidentity_domain_uniq"
            ),
        ]

    def __str__(self) -> str:
        if self.domain:
            return f"any address @{self.domain}"
        return self.from_header

    @property
    def from_header(self) -> str:
        """The From header for an address identity ("Name <address>")."""
        from email.utils import formataddr

        return formataddr((self.name, self.email)) if self.name else self.email

    def clean(self) -> None:
        from notifier.services.senders import sender_identity_problems

        errors = sender_identity_problems(identity=self)
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
                                (the worker died); resolved by asking the ESP
                                where it can be asked (services.indoubt), else by staff
        unknown -> sent         the ESP has it;  unknown -> pending  it has not (resent once)
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
    # Indexed by delivery_one_per_run_recipient, which leads with it. The
    # three references are checked per statement by triggers on PostgreSQL,
    # not per row by constraints (migration 0020); SQLite keeps constraints.
    recipient = models.ForeignKey(
        Recipient,
        on_delete=models.PROTECT,
        related_name="deliveries",
        db_index=False,
        db_constraint=False,
    )
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.TRANSACTIONAL)
    # What: a template plus context, or inline content (template is null).
    template = models.ForeignKey(
        Template,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="deliveries",
        db_constraint=False,
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
        db_constraint=False,
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
    # The claim that last marked this row as about to leave (sending.handoff),
    # written per chunk before the hand-off: the record of "may have left"
    # that survives a Redis that lost the claim's journal. Null: it never left.
    handoff_token = models.UUIDField(null=True, blank=True)

    opens = models.PositiveIntegerField(default=0)
    clicks = models.PositiveIntegerField(default=0)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "deliveries"
        ordering = ["-id"]
        permissions = [
            (
                "view_message_content",
                "Can see transactional, notification and digest deliveries and their content",
            )
        ]
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
            models.CheckConstraint(
                condition=time_in_stored_range("next_attempt_at"),
                name="delivery_next_attempt_at_range",
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
        what = self.template.name if self.template_id else self.get_kind_display()
        return f"{what} \u2192 {self.recipient.email}"

    @property
    def message_id(self) -> str:
        """Stable RFC 5322 Message-ID: the same on every attempt."""
        return f"<{self.uuid}@{settings.NOTIFIER_MESSAGE_ID_DOMAIN}>"


class DeliveryResolution(models.Model):
    """What was learnt about an in-doubt delivery, and what was done about it
    (``notifier.services.indoubt``): one row per look-up, shown to staff."""

    class Verdict(models.TextChoices):
        FOUND = "found", "Found at the provider: it was accepted"
        RESENT = "resent", "Not found at the provider: sent again"
        LEFT = "left", "Not found again after a resend: left for staff"
        UNAVAILABLE = "unavailable", "The provider could not answer"

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="resolutions")
    verdict = models.CharField(max_length=16, choices=Verdict.choices)
    detail = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.get_verdict_display()} ({self.created_at:%Y-%m-%d %H:%M})"


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
    """An address nothing is ever sent to while the suppression is active.

    An erased recipient's suppression keeps no address: ``email`` is empty
    and ``email_hash`` holds a keyed one-way hash of it
    (``notifier.services.privacy.email_hash``), enough to recognise the
    address when it comes back, never to read it.
    """

    class Reason(models.TextChoices):
        UNSUBSCRIBED = "unsubscribed", "Unsubscribed"
        HARD_BOUNCE = "hard_bounce", "Hard bounce"
        SOFT_BOUNCES = "soft_bounces", "Repeated soft bounces"
        COMPLAINT = "complaint", "Spam complaint"
        MANUAL = "manual", "Manual"
        ERASED = "erased", "Erased (personal data removed)"

    email = models.EmailField(max_length=254, blank=True)
    email_hash = models.CharField(max_length=64, blank=True, default="", db_index=True)
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
                condition=Q(lifted_at__isnull=True) & ~Q(email=""),
                name="suppression_one_active_per_email",
            ),
            models.UniqueConstraint(
                fields=["email_hash"],
                condition=Q(lifted_at__isnull=True) & ~Q(email_hash=""),
                name="suppression_one_active_per_hash",
            ),
            models.CheckConstraint(
                condition=~Q(email="") | ~Q(email_hash=""),
                name="suppression_address_or_hash",
            ),
        ]

    def __str__(self) -> str:
        shown = self.email or f"erased address #{self.email_hash[:12]}"
        return f"{shown} ({self.get_reason_display()})"


class Frequency(models.TextChoices):
    INSTANT = "instant", "At once"
    HOURLY = "hourly", "Hourly digest"
    DAILY = "daily", "Daily digest"
    WEEKLY = "weekly", "Weekly digest"
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
        Template,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        limit_choices_to={"kind": "transactional"},
    )
    # One entry of the digest's section for this topic (template language,
    # context: the notification's data).
    digest_item = models.TextField(blank=True, default="{{ data }}")
    digest_cap = models.PositiveIntegerField(
        default=20, help_text="Most entries shown for this topic in one digest."
    )
    critical = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Sent at once even in quiet hours (password resets, security alerts).",
    )
    quiet_hours_start = models.TimeField(
        null=True,
        blank=True,
        help_text="No email of this topic from this local time of each recipient ...",
    )
    quiet_hours_end = models.TimeField(
        null=True, blank=True, help_text="... until this one (it may be the next morning)."
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
    # Unique where set (a partial unique index: most events carry none, and
    # a digest's marking of its rows then writes no index entry for them).
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Set in the same transaction that creates the digest Delivery.
    digest = models.ForeignKey(
        Delivery, null=True, blank=True, on_delete=models.SET_NULL, related_name="notifications"
    )
    included_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="notification_idempotency_key_uniq",
            ),
        ]
        indexes = [
            models.Index(
                fields=["frequency", "recipient"],
                condition=Q(included_at__isnull=True),
                name="notification_due_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.topic_id} for {self.recipient_id}"


class TopicEvent(models.Model):
    """Every event ``notify()`` accepted, whatever the recipient's preference
    made of it (an instant email, a digest entry, nothing).

    An append-only log other apps read by id cursor (automations start on an
    event, or end on one as a goal) without notifier knowing them. Pruned
    with included notifications, after the same retention.
    """

    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="+")
    topic = models.ForeignKey(Topic, on_delete=models.CASCADE, related_name="+")
    data = models.JSONField(default=dict, blank=True)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["topic", "id"], name="topicevent_topic_idx"),
            models.Index(fields=["recipient", "topic"], name="topicevent_recipient_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.topic_id} for {self.recipient_id}"


class RecipientErasure(models.Model):
    """The audit of one erase: who, when, and how many rows were changed.

    Holds no personal data: the recipient row it names is anonymised by the
    same erase, and the address survives only as its hash.
    """

    recipient = models.ForeignKey(
        Recipient, null=True, blank=True, on_delete=models.SET_NULL, related_name="erasures"
    )
    email_hash = models.CharField(max_length=64)
    erased_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Who asked, as it was: "staff:<username>" or "api:<service>".
    erased_by_name = models.CharField(max_length=200, blank=True)
    erased_at = models.DateTimeField(auto_now_add=True)
    rows_changed = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-erased_at"]
        verbose_name = "recipient erasure"

    def __str__(self) -> str:
        return (
            f"Erasure #{self.pk} by {self.erased_by_name or '?'} at {self.erased_at:%Y-%m-%d %H:%M}"
        )


class WebhookEndpoint(models.Model):
    """A URL outside that is told about events (see ``services.webhooks``)."""

    class EventType(models.TextChoices):
        SENT = "sent", "Sent"
        DELIVERED = "delivered", "Delivered"
        BOUNCED = "bounced", "Bounced"
        COMPLAINED = "complained", "Complained"
        OPENED = "opened", "Opened"
        CLICKED = "clicked", "Clicked"
        UNSUBSCRIBED = "unsubscribed", "Unsubscribed"
        SUBSCRIBED = "subscribed", "Subscribed"
        JOURNEY_STEP = "journey_step", "Journey step"

    name = models.CharField(max_length=200)
    url = models.URLField(max_length=500)
    # The receiver checks each call's signature with it (README: "Outbound webhooks").
    secret = models.CharField(max_length=200)
    event_types = models.JSONField(default=list, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "webhook endpoint"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        unknown = sorted(set(self.event_types or []) - set(self.EventType.values))
        if not isinstance(self.event_types, list) or unknown:
            raise ValidationError({"event_types": f"Unknown event types: {', '.join(unknown)}"})


class WebhookDelivery(models.Model):
    """One call of one endpoint about one event: the webhook outbox row.

    Written in the transaction of the event that causes it (so a crash loses
    neither or both) and only by ``notifier.services.webhooks``. Status machine::

        pending -> sending -> delivered              the receiver answered 2xx
        sending -> pending                           any other answer, or none:
                                                     next_attempt_at backs off
        sending -> dead                              attempts exhausted
        sending -> pending                           lease expired (worker died)

    A row is claimed with a conditional update and a lease like a Delivery;
    a call whose answer was lost is made again (receivers deduplicate on the
    ``Notifier-Webhook-Id`` header, which is the same on every attempt).
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        SENDING = "sending", "Sending"
        DELIVERED = "delivered", "Delivered"
        DEAD = "dead", "Dead (gave up)"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    event_type = models.CharField(max_length=32)
    # What happened, once per endpoint: "sent:<delivery uuid>", "event:<id>"...
    event_key = models.CharField(max_length=255)
    recipient = models.ForeignKey(
        Recipient, null=True, blank=True, on_delete=models.SET_NULL, related_name="webhook_calls"
    )
    payload = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claim_token = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name = "webhook call"
        constraints = [
            models.UniqueConstraint(
                fields=["endpoint", "event_key"], name="webhookdelivery_once_per_event"
            ),
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status="pending"),
                name="webhookdelivery_due_idx",
            ),
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(status="sending"),
                name="webhookdelivery_lease_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} to {self.endpoint_id} ({self.status})"
