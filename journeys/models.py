"""Journeys: automations that walk each recipient through ordered steps.

A ``Journey`` row is one *version* of a journey; the versions of one journey
share a ``lineage``. Editing an active journey makes a new version (a copy in
draft); activating it retires the previous one, whose recipients finish the
version they started unless staff move them.

A recipient's place in a journey is one durable ``JourneyEnrollment`` row: its
current step, when that step is due, and a claim (token + lease) while a
worker executes it. ``JourneyStepRun`` records each step an enrollment has
executed; its unique (enrollment, step) is what makes a step run at most once,
written in the same transaction as the step's effect and the advance. Steps
only ever point forward (a branch targets a later position), so a journey has
no loops and every step is visited at most once per enrollment.

Only ``journeys.services`` writes these tables.
"""

import uuid

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from campaigns.models import ContactList, Segment
from notifier.models import Delivery, Recipient, Template, Topic


class Journey(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"
        STOPPED = "stopped", "Stopped"

    class Trigger(models.TextChoices):
        LIST_JOINED = "list_joined", "Joins a list"
        SIGNUP_CONFIRMED = "signup_confirmed", "Confirms a signup"
        EVENT = "event", "An event arrives for a topic"
        DATE_ATTRIBUTE = "date_attribute", "A date attribute comes round"
        SEGMENT_ENTERED = "segment_entered", "Enters a segment"
        MANUAL = "manual", "Manual (staff or code only)"

    name = models.CharField(max_length=200)
    lineage = models.UUIDField(default=uuid.uuid4, editable=False)
    version = models.PositiveIntegerField(default=1, editable=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    # Set when a newer version of the lineage was activated: this version
    # takes no new recipients, those inside finish it.
    retired_at = models.DateTimeField(null=True, blank=True, editable=False)

    trigger = models.CharField(max_length=24, choices=Trigger.choices, default=Trigger.MANUAL)
    trigger_list = models.ForeignKey(
        ContactList, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    trigger_topic = models.ForeignKey(
        Topic, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    trigger_segment = models.ForeignKey(
        Segment, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    trigger_attribute = models.CharField(
        max_length=64,
        blank=True,
        help_text="Date attribute (YYYY-MM-DD) whose day, each year, enrols the recipient.",
    )
    trigger_local_time = models.TimeField(
        null=True, blank=True, help_text="Local time of day of a date trigger (default 09:00)."
    )
    # The last list membership / notification id a polling trigger has seen.
    trigger_cursor = models.BigIntegerField(default=0, editable=False)

    reentry = models.BooleanField(
        "re-entry allowed",
        default=False,
        help_text="A recipient who finished may enter again (never twice at once).",
    )
    goal_attribute = models.CharField(
        max_length=64, blank=True, help_text="Goal: leave when this attribute ..."
    )
    goal_value = models.CharField(max_length=500, blank=True, help_text="... has this value.")
    goal_topic = models.ForeignKey(
        Topic,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Goal: leave when an event for this topic arrives.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["lineage", "version"], name="journey_version_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.name} (v{self.version})"

    def clean(self) -> None:
        needs = {
            self.Trigger.LIST_JOINED: ("trigger_list", self.trigger_list_id),
            self.Trigger.EVENT: ("trigger_topic", self.trigger_topic_id),
            self.Trigger.SEGMENT_ENTERED: ("trigger_segment", self.trigger_segment_id),
            self.Trigger.DATE_ATTRIBUTE: ("trigger_attribute", self.trigger_attribute),
        }
        field, value = needs.get(self.trigger, (None, True))
        if not value:
            raise ValidationError({field: "This trigger needs it."})
        if bool(self.goal_attribute) != bool(self.goal_value):
            raise ValidationError({"goal_value": "Give both the goal attribute and its value."})


class JourneyStep(models.Model):
    class Kind(models.TextChoices):
        SEND = "send", "Send an email"
        WAIT = "wait", "Wait"
        BRANCH = "branch", "Branch"
        SET_ATTRIBUTE = "set_attribute", "Set an attribute"
        ADD_TO_LIST = "add_to_list", "Add to a list"
        REMOVE_FROM_LIST = "remove_from_list", "Remove from a list"
        EXIT = "exit", "Exit"

    class Condition(models.TextChoices):
        OPENED = "opened", "Opened the message of step ..."
        CLICKED = "clicked", "Clicked in the message of step ..."
        ATTRIBUTE = "attribute", "Attribute equals value"
        SEGMENT = "segment", "Is in segment"

    journey = models.ForeignKey(Journey, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveIntegerField()
    kind = models.CharField(max_length=24, choices=Kind.choices)
    template = models.ForeignKey(
        Template,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        limit_choices_to={"kind": Template.Kind.CAMPAIGN},
    )
    # Wait: a duration, then (optionally) until a local time of day and/or
    # weekday in the recipient's time zone.
    wait_seconds = models.PositiveIntegerField(null=True, blank=True)
    wait_until_time = models.TimeField(null=True, blank=True)
    wait_weekday = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        choices=[(i, d) for i, d in enumerate(["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"])],
    )
    # Branch: the condition; where to go when it holds / does not (a later
    # position; empty: the next step).
    condition = models.CharField(max_length=16, choices=Condition.choices, blank=True)
    condition_position = models.PositiveIntegerField(
        null=True, blank=True, help_text="The send step whose message is checked."
    )
    then_position = models.PositiveIntegerField(null=True, blank=True)
    else_position = models.PositiveIntegerField(null=True, blank=True)
    # Branch on / set an attribute.
    attribute = models.CharField(max_length=64, blank=True)
    value = models.CharField(max_length=500, blank=True)
    segment = models.ForeignKey(
        Segment, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    contact_list = models.ForeignKey(
        ContactList, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["journey", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["journey", "position"], name="journeystep_position_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.position}. {self.get_kind_display()}"

    def clean(self) -> None:
        from journeys.services.definitions import step_problems

        errors = step_problems(self)
        if errors:
            raise ValidationError(errors)


class JourneyEnrollment(models.Model):
    """One recipient's place in one journey version.

    ``active``: the current step is due at ``due_at``; ``waiting``: inside a
    wait step until ``due_at``; ``done`` / ``exited``: finished. A worker owns
    the row while ``claim_token`` is set and ``lease_expires_at`` is in the
    future; after that the next tick may claim it again.
    """

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        WAITING = "waiting", "Waiting"
        DONE = "done", "Done"
        EXITED = "exited", "Exited"

    class ExitReason(models.TextChoices):
        NONE = "", "-"
        UNSUBSCRIBED = "unsubscribed", "Unsubscribed or suppressed"
        GOAL = "goal", "Goal reached"
        REMOVED = "removed", "Removed by staff"
        STOPPED = "stopped", "Journey stopped"
        EXIT_STEP = "exit_step", "Exit step"

    LIVE_STATES = (State.ACTIVE, State.WAITING)

    journey = models.ForeignKey(Journey, on_delete=models.PROTECT, related_name="enrollments")
    recipient = models.ForeignKey(
        Recipient, on_delete=models.CASCADE, related_name="journey_enrollments"
    )
    # What entered the recipient (a membership, a notification, a date): with
    # re-entry a recipient has one row per entry; without, "" (one row).
    entry_key = models.CharField(max_length=64, blank=True, default="")
    started_version = models.PositiveIntegerField()
    step = models.ForeignKey(
        JourneyStep, null=True, blank=True, on_delete=models.PROTECT, related_name="enrollments"
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    exit_reason = models.CharField(
        max_length=16, choices=ExitReason.choices, default=ExitReason.NONE, blank=True
    )
    due_at = models.DateTimeField(null=True, blank=True)
    claim_token = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    entered_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["journey", "recipient", "entry_key"], name="enrollment_entry_uniq"
            ),
        ]
        indexes = [
            models.Index(
                fields=["due_at"],
                condition=Q(state__in=["active", "waiting"]),
                name="enrollment_due_idx",
            ),
            models.Index(fields=["recipient", "state"], name="enrollment_recipient_idx"),
            models.Index(fields=["journey", "state"], name="enrollment_journey_state_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.recipient_id} in {self.journey_id} ({self.state})"


class JourneyStepRun(models.Model):
    """An enrollment executed a step (once: unique per enrollment and step)."""

    enrollment = models.ForeignKey(
        JourneyEnrollment, on_delete=models.CASCADE, related_name="step_runs"
    )
    step = models.ForeignKey(JourneyStep, on_delete=models.CASCADE, related_name="runs")
    delivery = models.ForeignKey(
        Delivery, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # A branch's answer (True: the condition held).
    outcome = models.BooleanField(null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["enrollment", "step"], name="steprun_once_uniq"),
        ]

    def __str__(self) -> str:
        return f"{self.enrollment_id} ran step {self.step_id}"
