"""Lists, segments, campaigns and runs.

A campaign's audience is the union of its contact lists (static membership)
and its segments (saved filters evaluated at launch). Each execution of a
campaign is a ``CampaignRun``; the run owns its ``notifier.Delivery`` rows
through ``Delivery.run_id`` (notifier never imports this app). Services in
``campaigns.services`` are the only writers of statuses and schedules.
"""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django_celery_beat.validators import (
    day_of_month_validator,
    day_of_week_validator,
    hour_validator,
    minute_validator,
    month_of_year_validator,
)

from notifier.models import Recipient, SenderIdentity, Template, validate_time_zone


class ContactList(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    members = models.ManyToManyField(
        Recipient, through="ListMembership", related_name="contact_lists", blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "contact list"

    def __str__(self) -> str:
        return self.name


class ListMembership(models.Model):
    contact_list = models.ForeignKey(
        ContactList, on_delete=models.CASCADE, related_name="memberships"
    )
    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="memberships")
    added_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["contact_list", "recipient"], name="membership_unique"),
        ]
        indexes = [models.Index(fields=["recipient"], name="membership_recipient_idx")]

    def __str__(self) -> str:
        return f"{self.recipient_id} in {self.contact_list_id}"


class Segment(models.Model):
    """A saved filter over recipients, evaluated when a run launches.

    The filter is data (``SegmentCondition`` rows), compiled by
    ``campaigns.segments`` from a fixed set of fields and operators: staff
    never write SQL or ORM lookups.
    """

    class Match(models.TextChoices):
        ALL = "all", "All conditions"
        ANY = "any", "Any condition"

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    match = models.CharField(max_length=3, choices=Match.choices, default=Match.ALL)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class SegmentCondition(models.Model):
    class Field(models.TextChoices):
        EMAIL = "email", "Email"
        NAME = "name", "Name"
        STATUS = "status", "Status"
        LOCALE = "locale", "Locale"
        TIME_ZONE = "time_zone", "Time zone"
        CREATED_AT = "created_at", "Created at"
        ATTRIBUTE = "attribute", "Attribute"

    class Operator(models.TextChoices):
        EQUALS = "equals", "equals"
        NOT_EQUALS = "not_equals", "does not equal"
        CONTAINS = "contains", "contains"
        NOT_CONTAINS = "not_contains", "does not contain"
        STARTS_WITH = "starts_with", "starts with"
        ENDS_WITH = "ends_with", "ends with"
        IN = "in", "is one of (comma-separated)"
        IS_SET = "is_set", "is set"
        IS_NOT_SET = "is_not_set", "is not set"
        BEFORE = "before", "is before (date)"
        AFTER = "after", "is on or after (date)"

    segment = models.ForeignKey(Segment, on_delete=models.CASCADE, related_name="conditions")
    field = models.CharField(max_length=16, choices=Field.choices)
    attribute = models.CharField(
        max_length=64, blank=True, help_text="Attribute name, when the field is Attribute."
    )
    operator = models.CharField(max_length=16, choices=Operator.choices)
    value = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        name = f"attributes.{self.attribute}" if self.field == self.Field.ATTRIBUTE else self.field
        return f"{name} {self.get_operator_display()} {self.value}".strip()

    def clean(self) -> None:
        from campaigns.segments import SegmentError, condition_check

        try:
            condition_check(
                field=self.field, attribute=self.attribute, operator=self.operator, value=self.value
            )
        except SegmentError as exc:
            raise ValidationError(str(exc)) from exc


AB_SHARE_MIN, AB_SHARE_MAX = 1, 50
AB_WAIT_MIN, AB_WAIT_MAX = 15, 7 * 24 * 60
AB_VARIANTS_MIN, AB_VARIANTS_MAX = 2, 4
AB_LABELS = "ABCD"


class WinnerMetric(models.TextChoices):
    OPENS = "opens", "Highest open rate"
    CLICKS = "clicks", "Highest click rate"
    MANUAL = "manual", "I choose (manually)"


class Campaign(models.Model):
    """What to send, to whom, through which transport, and when.

    Status machine (``campaigns.services.campaigns``)::

        draft -> scheduled -> running -> done          (one-off)
                 scheduled <- running                  (recurring: back after each run)
        running <-> paused;  running | paused | scheduled -> cancelled
    """

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        SCHEDULED = "scheduled", "Scheduled"
        RUNNING = "running", "Running"
        PAUSED = "paused", "Paused"
        DONE = "done", "Done"
        CANCELLED = "cancelled", "Cancelled"

    class Schedule(models.TextChoices):
        NONE = "none", "Not scheduled (launch by hand)"
        ONCE = "once", "Once, at a given time"
        CRONTAB = "crontab", "Recurring (crontab)"

    name = models.CharField(max_length=200, unique=True)
    template = models.ForeignKey(
        Template,
        on_delete=models.PROTECT,
        related_name="campaigns",
        limit_choices_to={"kind": "campaign"},
    )
    context = models.JSONField(
        default=dict,
        blank=True,
        help_text="Extra plain data for the template (a JSON object), the same for everyone.",
    )
    contact_lists = models.ManyToManyField(ContactList, blank=True, related_name="campaigns")
    segments = models.ManyToManyField(Segment, blank=True, related_name="campaigns")
    # Replaced by ``sender`` (migration 0004 moved the values there). Kept,
    # unused, for one release: processes of the previous version still read
    # it while an upgrade migrates (deploy/README.md, "Upgrades").
    from_email = models.CharField(max_length=320, blank=True, editable=False)
    # An address identity configured by administrators (never free text);
    # empty: DEFAULT_FROM_EMAIL.
    sender = models.ForeignKey(
        SenderIdentity,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="campaigns",
        limit_choices_to={"domain": ""},
        help_text="Who the mail is from. Leave empty for the default sender.",
    )
    transport = models.CharField(max_length=32, default="esp")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)

    schedule = models.CharField(max_length=8, choices=Schedule.choices, default=Schedule.NONE)
    send_at = models.DateTimeField(null=True, blank=True, help_text="For a one-off schedule.")
    cron_minute = models.CharField(
        "minute", max_length=240, default="0", validators=[minute_validator]
    )
    cron_hour = models.CharField("hour", max_length=96, default="*", validators=[hour_validator])
    cron_day_of_month = models.CharField(
        "day of month", max_length=124, default="*", validators=[day_of_month_validator]
    )
    cron_month_of_year = models.CharField(
        "month of year", max_length=64, default="*", validators=[month_of_year_validator]
    )
    cron_day_of_week = models.CharField(
        "day of week", max_length=64, default="*", validators=[day_of_week_validator]
    )
    schedule_time_zone = models.CharField(
        max_length=64,
        default="UTC",
        validators=[validate_time_zone],
        help_text="Time zone the crontab is read in.",
    )
    # Each recipient gets the run's message at this time of day in their own
    # time zone, within 24 hours of the launch (rolling through the zones).
    local_send_time = models.TimeField(
        null=True,
        blank=True,
        help_text="Send at this time in each recipient's time zone, rolling through the zones "
        "over the 24 hours after the launch. Empty: send at once.",
    )
    local_time_zone_default = models.CharField(
        max_length=64,
        default="UTC",
        blank=True,
        validators=[validate_time_zone],
        help_text="The time zone of recipients whose time zone is not known (empty: UTC).",
    )
    # Each recipient at the local hour they open and click most (send-time
    # insight, notifier.engagement); ``local_send_time`` for the others.
    send_at_best_hour = models.BooleanField(
        "Send at each recipient's best hour",
        default=False,
        help_text="Each recipient gets the message at the hour of their day at which they "
        "opened and clicked most over the last 90 days; recipients with too little history "
        "get the local send time above. Needs a local send time.",
    )
    # An A/B test (see ``CampaignVariant`` and ``RunABTest``): a share of each
    # run's audience gets one of the variants; the winner goes to the rest.
    ab_test_share = models.PositiveSmallIntegerField(
        "test share (%)",
        null=True,
        blank=True,
        validators=[
            MinValueValidator(AB_SHARE_MIN),
            MaxValueValidator(AB_SHARE_MAX),
        ],
        help_text=f"Percent of the audience ({AB_SHARE_MIN}-{AB_SHARE_MAX}) split evenly "
        "between the variants; the winner goes to everyone else. Empty: no A/B test.",
    )
    ab_winner_metric = models.CharField(
        "winner by",
        max_length=8,
        choices=WinnerMetric.choices,
        default=WinnerMetric.OPENS,
    )
    ab_wait_minutes = models.PositiveIntegerField(
        "wait (minutes)",
        default=240,
        validators=[
            MinValueValidator(AB_WAIT_MIN),
            MaxValueValidator(AB_WAIT_MAX),
        ],
        help_text=f"How long after the launch the winner is chosen ({AB_WAIT_MIN} minutes "
        "to 7 days; 240 is 4 hours).",
    )
    # The beat entry this campaign owns (one at most; see services.schedules).
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask",
        null=True,
        blank=True,
        editable=False,
        on_delete=models.SET_NULL,
        related_name="+",
    )

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        editable=False,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status"], name="campaign_status_idx")]

    def __str__(self) -> str:
        return self.name

    @property
    def from_header(self) -> str:
        """The From of this campaign's mail ('' for DEFAULT_FROM_EMAIL)."""
        return self.sender.from_header if self.sender_id else ""

    @property
    def crontab_expression(self) -> str:
        return " ".join(
            [
                self.cron_minute,
                self.cron_hour,
                self.cron_day_of_month,
                self.cron_month_of_year,
                self.cron_day_of_week,
            ]
        )


class CampaignRun(models.Model):
    """One execution of a campaign. It sends with notifier's DeliveryGroup of
    the same id (opened at launch, holding the campaign's context as it was
    then): the Deliveries whose ``run_id`` is its id.

    ``totals`` (counts per Delivery status) is written when the run closes:
    by the chord callback, or by the maintenance task for a run whose
    callback never came (a batch task raised, or retries were still due).
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        PAUSED = "paused", "Paused"
        DONE = "done", "Done"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE = (Status.QUEUED, Status.RUNNING, Status.PAUSED)

    class Problem(models.TextChoices):
        """Why a run is not progressing, beside its status (data, not text:
        the error itself is in ``problem_detail``)."""

        NONE = "", "None"
        LAUNCH_FAILED = "launch_failed", "Failed to launch"
        STALLED = "stalled", "Stalled: its batches fail"

    class Trigger(models.TextChoices):
        MANUAL = "manual", "Launched by staff"
        SCHEDULE = "schedule", "Schedule"

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="runs")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.MANUAL)
    launched_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    recipients = models.PositiveIntegerField(default=0, help_text="Deliveries materialised.")
    totals = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Set by campaigns.services.runs when a launch or a batch raises; cleared
    # when the run makes progress again. Maintenance retries a failed launch
    # at ``retry_at`` (exponential backoff), never on every tick.
    problem = models.CharField(max_length=16, choices=Problem.choices, blank=True, default="")
    problem_detail = models.TextField("error", blank=True)
    problem_since = models.DateTimeField(null=True, blank=True)
    problem_count = models.PositiveIntegerField("failed attempts", default=0)
    retry_at = models.DateTimeField("next attempt", null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["status", "finished_at"], name="run_status_idx"),
            models.Index(
                fields=["problem"], condition=~models.Q(problem=""), name="run_problem_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"Run {self.pk} of {self.campaign_id} ({self.status})"


class CampaignVariant(models.Model):
    """One version of an A/B-tested campaign: what it changes from the
    campaign (an empty field keeps the campaign's own). Labelled A, B, ...
    in ``position`` order."""

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="variants")
    position = models.PositiveSmallIntegerField(default=0)
    subject = models.CharField(
        max_length=500,
        blank=True,
        help_text="Empty: the template's subject. Template tags work as in the template.",
    )
    sender = models.ForeignKey(
        SenderIdentity,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        limit_choices_to={"domain": ""},
        help_text="Empty: the campaign's sender.",
    )
    template = models.ForeignKey(
        Template,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        limit_choices_to={"kind": "campaign"},
        help_text="Empty: the campaign's template.",
    )

    class Meta:
        ordering = ["position", "id"]
        verbose_name = "A/B variant"

    def __str__(self) -> str:
        if self.pk is None:
            return "New variant"
        before = CampaignVariant.objects.filter(campaign_id=self.campaign_id).filter(
            models.Q(position__lt=self.position) | models.Q(position=self.position, id__lt=self.pk)
        )
        index = before.count()
        return f"Variant {AB_LABELS[index] if index < len(AB_LABELS) else index + 1}"


class RunABTest(models.Model):
    """A run's A/B test: its variants as they were at the launch, when the
    winner is due, and the decision.

    Undecided while ``winner`` is empty; the run does not close then. The
    decision and the rows of the rest of the audience commit together
    (``campaigns.services.abtests``), so a second trigger finds it decided.
    Staff's choice is recorded first as ``chosen`` (with ``decided_by``): a
    worker then writes the rest's rows with it and makes it the winner.
    """

    run = models.OneToOneField(
        CampaignRun, on_delete=models.CASCADE, primary_key=True, related_name="ab_test"
    )
    share = models.PositiveSmallIntegerField("test share (%)")
    metric = models.CharField("winner by", max_length=8, choices=WinnerMetric.choices)
    # [{"label": "A", "subject": ..., "template_id": ..., "from_email": ...,
    #   "description": ...}, ...]
    variants = models.JSONField(default=list)
    decide_at = models.DateTimeField("winner due at")
    winner = models.CharField(max_length=1, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decision = models.TextField(blank=True, help_text="Why this variant won, in words.")
    rest = models.PositiveIntegerField("rest of the audience", default=0)
    # Staff's choice, waiting for a worker to write the rest's rows with it
    # (a large audience's rows take longer than a web request should).
    chosen = models.CharField(max_length=1, blank=True)

    class Meta:
        verbose_name = "A/B test of a run"
        indexes = [
            models.Index(
                fields=["decide_at"], condition=models.Q(winner=""), name="run_abtest_due_idx"
            )
        ]

    def __str__(self) -> str:
        return f"A/B test of run {self.run_id}"

    def variant(self, label: str) -> dict | None:
        return next((v for v in self.variants if v["label"] == label), None)

    @property
    def choice_pending(self) -> bool:
        """Staff chose a winner whose rows for the rest are not written yet."""
        return bool(self.chosen) and not self.winner


class SignupForm(models.Model):
    """A public signup form for one or more lists, with double opt-in.

    Its page is ``/subscribe/<slug>/`` (no login, no JavaScript); the admin
    shows an HTML snippet other sites can embed. A signup becomes list
    membership only when the emailed confirmation link is followed (see
    ``campaigns.services.signups``).
    """

    name = models.CharField(max_length=200)
    slug = models.SlugField(
        max_length=100,
        unique=True,
        help_text="The public page is /subscribe/ followed by this slug.",
    )
    title = models.CharField(max_length=200, help_text="The heading on the public page.")
    introduction = models.TextField(blank=True, help_text="Shown above the form.")
    lists = models.ManyToManyField(ContactList, related_name="signup_forms")
    ask_name = models.BooleanField("ask for a name", default=True)
    attribute_fields = models.CharField(
        "attribute fields",
        max_length=500,
        blank=True,
        help_text="Comma-separated attribute names to ask for (e.g. company, city); "
        "each becomes an optional field and is stored in the contact's attributes.",
    )
    consent_text = models.TextField(
        help_text="What the person agrees to; shown beside the checkbox and recorded with "
        "each signup exactly as shown."
    )
    confirmation_template = models.ForeignKey(
        Template,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        limit_choices_to={"kind": "transactional"},
        help_text="The confirmation email (a transactional template; context: confirm_url, "
        "form_name, lists). Empty: the template named 'Signup confirmation'.",
    )
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "signup form"

    def __str__(self) -> str:
        return self.name

    @property
    def attribute_names(self) -> list[str]:
        return [n.strip() for n in self.attribute_fields.split(",") if n.strip()]

    def clean(self) -> None:
        import re

        bad = [
            n for n in self.attribute_names if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", n)
        ]
        if bad:
            raise ValidationError(
                {
                    "attribute_fields": "Attribute names are letters, digits and _ (starting "
                    f"with a letter): {', '.join(bad)}"
                }
            )


class Consent(models.Model):
    """One person's agreement to join lists: when, how, from where, and the
    exact text they were shown. Written by ``campaigns.services.signups``.

    ``confirmed_at`` is empty until the confirmation link is followed (double
    opt-in); a subscription through the API without double opt-in is
    confirmed when made. The requested ``name``/``attributes`` are applied
    to the contact only on confirmation.
    """

    class Source(models.TextChoices):
        FORM = "form", "Signup form"
        API = "api", "API"

    recipient = models.ForeignKey(Recipient, on_delete=models.CASCADE, related_name="consents")
    form = models.ForeignKey(
        SignupForm, null=True, blank=True, on_delete=models.SET_NULL, related_name="consents"
    )
    source = models.CharField(max_length=8, choices=Source.choices)
    # "api:<service>" for the API.
    requested_by = models.CharField(max_length=100, blank=True)
    list_ids = models.JSONField("lists (ids)", default=list, blank=True)
    consent_text = models.TextField(blank=True)
    name = models.CharField(max_length=200, blank=True)
    attributes = models.JSONField(default=dict, blank=True)
    double_opt_in = models.BooleanField(default=True)
    requested_at = models.DateTimeField(auto_now_add=True)
    ip_address = models.GenericIPAddressField("IP address at signup", null=True, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    confirm_ip_address = models.GenericIPAddressField(
        "IP address at confirmation", null=True, blank=True
    )

    class Meta:
        ordering = ["-requested_at"]
        indexes = [
            models.Index(fields=["recipient", "-requested_at"], name="consent_recipient_idx")
        ]

    def __str__(self) -> str:
        state = "confirmed" if self.confirmed_at else "awaiting confirmation"
        return f"Consent #{self.pk} ({state})"
