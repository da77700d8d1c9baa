"""The campaign form in a marketer's words: who it is from, to whom, what, when.

The form checks what a person can fix on the page (a time already past, a
schedule with nobody to send to, JSON that does not parse) and leaves state
changes to ``campaigns.services.campaigns.campaign_save``.
"""

import json
import zoneinfo

from django import forms
from django.conf import settings
from django.utils import timezone

from campaigns.models import AB_WAIT_MIN, Campaign, WinnerMetric
from campaigns.services.campaigns import campaign_problems

# Plain words for the configured transports; another name shows as itself.
TRANSPORT_LABELS = {
    "esp": "Email provider (ESP)",
    "smtp": "SMTP relay",
}

SCHEDULE_LABELS = {
    Campaign.Schedule.NONE: "Only when I press “Launch now”",
    Campaign.Schedule.ONCE: "Once, at a date and time",
    Campaign.Schedule.CRONTAB: "Recurring (every day, week, … at set times)",
}

CRON_FIELDS = (
    "cron_minute",
    "cron_hour",
    "cron_day_of_month",
    "cron_month_of_year",
    "cron_day_of_week",
)

CAMPAIGN_FIELDSETS = (
    (None, {"fields": ("name", "status")}),
    (
        "Sender identity",
        {
            "fields": ("sender", "transport"),
            "description": "Who the email is from, and how it leaves.",
        },
    ),
    (
        "Audience",
        {
            "fields": ("contact_lists", "segments", "audience_size"),
            "description": "Everyone in any chosen list or segment gets one copy. "
            "Unsubscribed and bounced addresses are skipped at launch.",
        },
    ),
    (
        "Content",
        {
            "fields": ("template", "context"),
            "description": "The email template, and extra data it shows the same way "
            "to everyone. Use Preview to see it as a given recipient will.",
        },
    ),
    (
        "Schedule",
        {
            "fields": (
                "schedule",
                "send_at",
                "schedule_time_zone",
                CRON_FIELDS,
                "next_sends",
            ),
            "description": "Saving a campaign with a schedule arms it; choose "
            "“Only when I press Launch now” to stop it.",
        },
    ),
    (
        "Recipient-local time",
        {
            "fields": ("local_send_time", "local_time_zone_default", "send_at_best_hour"),
            "description": "Optional: send at this time of day in each recipient's own time "
            "zone (rolling through the zones over a day); recipients without a known zone "
            "get the default zone.",
        },
    ),
    (
        "A/B test",
        {
            "fields": ("ab_test_share", "ab_winner_metric", "ab_wait_minutes", "ab_test_summary"),
            "description": "Optional: try 2 to 4 variants (below, under “A/B variants”) on a "
            "share of the audience, then send the winner to everyone else. Each recipient "
            "gets exactly one version.",
        },
    ),
    ("History", {"fields": ("created_by", "created_at", "updated_at"), "classes": ("collapse",)}),
)
READONLY = (
    "status",
    "audience_size",
    "next_sends",
    "ab_test_summary",
    "created_by",
    "created_at",
    "updated_at",
)


def _flatten(fieldsets) -> list[str]:
    names = []
    for _title, options in fieldsets:
        for item in options["fields"]:
            names.extend(item if isinstance(item, tuple) else [item])
    return names


class TemplateDataField(forms.JSONField):
    """The template's extra data: a JSON object, with an error that says where
    the JSON breaks rather than "Enter a valid JSON"."""

    def to_python(self, value):
        if isinstance(value, str) and value.strip():
            try:
                json.loads(value)
            except json.JSONDecodeError as exc:
                raise forms.ValidationError(
                    f"This is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                    f"{exc.msg.lower()}). Write an object such as "
                    '{"discount": "20%", "ends": "Sunday"}, with keys and text in '
                    "double quotes.",
                    code="invalid",
                ) from None
        value = super().to_python(value)
        if value is not None and not isinstance(value, dict):
            raise forms.ValidationError(
                'Write an object in curly braces, such as {"discount": "20%"}.', code="invalid"
            )
        return value


def _time_zone_choices() -> list[tuple[str, str]]:
    return [(name, name.replace("_", " ")) for name in sorted(zoneinfo.available_timezones())]


class CampaignForm(forms.ModelForm):
    transport = forms.ChoiceField(label="Send through", choices=())
    schedule = forms.ChoiceField(label="When to send", choices=(), widget=forms.RadioSelect)
    schedule_time_zone = forms.ChoiceField(
        label="Time zone",
        choices=(),
        help_text="The send time and the recurring times are read in this zone.",
    )
    context = TemplateDataField(
        label="Extra template data",
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60, "spellcheck": "false"}),
        help_text='The template shows each value with {{ key }}, for example {"discount": '
        '"20%"} makes {{ discount }} read 20%. Each recipient\'s own data is '
        "{{ recipient.name }}, {{ recipient.email }} and {{ recipient.attributes.… }}.",
    )

    class Meta:
        model = Campaign
        fields = [name for name in _flatten(CAMPAIGN_FIELDSETS) if name not in READONLY]
        labels = {
            "name": "Campaign name",
            "sender": "From",
            "contact_lists": "Contact lists",
            "template": "Email template",
            "send_at": "Send at",
            "cron_minute": "Minute",
            "cron_hour": "Hour",
            "cron_day_of_month": "Day of month",
            "cron_month_of_year": "Month",
            "cron_day_of_week": "Day of week",
            "ab_test_share": "Test share (%)",
            "ab_winner_metric": "Winner by",
            "ab_wait_minutes": "Wait (minutes)",
        }
        help_texts = {
            "name": "For you and your colleagues; recipients never see it.",
            "contact_lists": "Members of these lists get the campaign.",
            "segments": "Recipients matching these saved filters when the campaign launches.",
            "cron_day_of_week": "0-6 with 0 = Sunday, or mon-fri. Each field takes * (any), "
            "a list 1,15, a range 9-17 or a step */15.",
        }
        widgets = {
            "contact_lists": forms.CheckboxSelectMultiple,
            "segments": forms.CheckboxSelectMultiple,
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["transport"].choices = [
            (name, TRANSPORT_LABELS.get(name, name)) for name in settings.NOTIFIER_TRANSPORTS
        ]
        self.fields["schedule"].choices = [
            (value, SCHEDULE_LABELS[value]) for value in Campaign.Schedule.values
        ]
        self.fields["schedule_time_zone"].choices = _time_zone_choices()
        # Declared fields take no default from the model: a new campaign's are these.
        self.fields["schedule"].initial = Campaign.Schedule.NONE
        self.fields["schedule_time_zone"].initial = settings.TIME_ZONE
        self.fields["transport"].initial = settings.NOTIFIER_DEFAULT_TRANSPORT
        self.fields["context"].initial = {}
        self.fields["ab_winner_metric"].required = False
        self.fields["ab_wait_minutes"].required = False
        self.fields["send_at"].help_text = "In the time zone below; it must be in the future."
        self.fields["sender"].empty_label = f"Default sender ({settings.DEFAULT_FROM_EMAIL})"
        self.fields["sender"].error_messages["invalid_choice"] = (
            "Choose one of the sender identities; administrators add them under "
            "Notifier > Sender identities."
        )
        # The one-off time is shown and read in the campaign's own zone.
        if self.instance.send_at is not None and not self.is_bound:
            zone = zoneinfo.ZoneInfo(self.instance.schedule_time_zone)
            self.initial["send_at"] = timezone.make_naive(self.instance.send_at, zone)

    def _kept(self, name: str):
        """An A/B setting left out of the post keeps its current value."""
        value = self.cleaned_data.get(name)
        return getattr(self.instance, name) if value in (None, "") else value

    def clean_ab_winner_metric(self):
        return self._kept("ab_winner_metric")

    def clean_ab_wait_minutes(self):
        return self._kept("ab_wait_minutes")

    def clean_context(self):
        return self.cleaned_data.get("context") or {}

    def clean(self):
        cleaned = super().clean()
        schedule = cleaned.get("schedule", Campaign.Schedule.NONE)
        send_at = self._send_at_in_zone(cleaned)
        cleaned["send_at"] = send_at
        if schedule == Campaign.Schedule.ONCE and send_at is not None:
            self._refuse_past(send_at, cleaned.get("schedule_time_zone"))
        no_audience = not cleaned.get("contact_lists") and not cleaned.get("segments")
        if schedule != Campaign.Schedule.NONE and self._arms() and no_audience:
            self.add_error(
                "contact_lists",
                "Choose at least one contact list or segment: a scheduled "
                "campaign needs someone to send to.",
            )
        if cleaned.get("send_at_best_hour") and cleaned.get("local_send_time") is None:
            self.add_error(
                "local_send_time",
                "Choose a local send time: recipients without enough opens and clicks "
                "for a best hour get the message then.",
            )
        probe = Campaign(
            transport=cleaned.get("transport", ""),
            sender=cleaned.get("sender"),
            template=cleaned.get("template"),
            context=cleaned.get("context") or {},
            schedule=schedule,
            send_at=send_at,
            local_send_time=cleaned.get("local_send_time"),
            ab_test_share=cleaned.get("ab_test_share"),
            ab_winner_metric=cleaned.get("ab_winner_metric") or WinnerMetric.OPENS,
            ab_wait_minutes=cleaned.get("ab_wait_minutes") or AB_WAIT_MIN,
        )
        for field, problem in campaign_problems(campaign=probe, check_audience=False).items():
            if field in self.fields and field not in self.errors:
                self.add_error(field, problem)
        return cleaned

    def _send_at_in_zone(self, cleaned):
        """The entered wall-clock time read in the chosen zone (the widget
        reads it in the site's zone)."""
        send_at, zone_name = cleaned.get("send_at"), cleaned.get("schedule_time_zone")
        if send_at is None or not zone_name:
            return send_at
        wall_clock = timezone.make_naive(send_at, timezone.get_current_timezone())
        return timezone.make_aware(wall_clock, zoneinfo.ZoneInfo(zone_name))

    def _arms(self) -> bool:
        """Whether saving arms the schedule (see ``campaign_save``): not for a
        running or paused campaign, whose schedule is already live."""
        return self.instance.status not in (Campaign.Status.RUNNING, Campaign.Status.PAUSED)

    def _refuse_past(self, send_at, zone_name) -> None:
        # A finished one-off campaign may keep its past time while it is edited.
        unchanged = (
            self.instance.pk is not None
            and self.instance.status == Campaign.Status.DONE
            and not {"send_at", "schedule", "schedule_time_zone"} & set(self.changed_data)
        )
        if unchanged or not self._arms() or send_at > timezone.now():
            return
        now = timezone.localtime(timezone.now(), zoneinfo.ZoneInfo(zone_name))
        self.add_error(
            "send_at",
            f"This time has passed (it is now {now:%Y-%m-%d %H:%M} in {zone_name}). "
            "Choose a time in the future, or “Launch now”.",
        )
