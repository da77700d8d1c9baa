from datetime import time

from django import forms

from notifier.models import Frequency, QuietHoursMode, Topic, Weekday

# Local times a recipient can pick: on the hour and the half hour.
HALF_HOURS = [time(h, m) for h in range(24) for m in (0, 30)]
TIME_CHOICES = [(t.strftime("%H:%M"), t.strftime("%H:%M")) for t in HALF_HOURS]


def _local_time(value: str) -> time:
    return time.fromisoformat(value)


def _time_field(label: str, *, blank: str | None = None) -> forms.TypedChoiceField:
    """A local time on the hour or half hour; None when left out (or ``blank``)."""
    choices = [("", blank), *TIME_CHOICES] if blank else TIME_CHOICES
    return forms.TypedChoiceField(
        label=label, choices=choices, coerce=_local_time, required=False, empty_value=None
    )


class PreferencesForm(forms.Form):
    """One frequency per topic (fields ``topic_<id>``), when the weekly digest
    comes (``weekly_digest_day``, ``weekly_digest_time``) and the quiet hours
    (``quiet_hours_start``, ``quiet_hours_end``, ``quiet_hours_mode``)."""

    weekly_digest_day = forms.TypedChoiceField(
        label="Day", choices=Weekday.choices, coerce=int, required=False, empty_value=None
    )
    weekly_digest_time = _time_field("Time")
    quiet_hours_start = _time_field("From", blank="No quiet hours")
    quiet_hours_end = _time_field("Until", blank="—")
    quiet_hours_mode = forms.ChoiceField(
        label="Notifications that come in quiet hours",
        choices=QuietHoursMode.choices,
        required=False,
        widget=forms.RadioSelect,
    )

    def __init__(self, *args, topics: list[tuple[Topic, str]], **kwargs):
        super().__init__(*args, **kwargs)
        for topic, frequency in topics:
            self.fields[f"topic_{topic.pk}"] = forms.ChoiceField(
                label=topic.name,
                help_text=topic.description,
                choices=Frequency.choices,
                initial=frequency,
                widget=forms.RadioSelect,
            )

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("quiet_hours_start"), cleaned.get("quiet_hours_end")
        if (start is None) != (end is None):
            raise forms.ValidationError("Choose both when your quiet hours start and end.")
        if start is not None and start == end:
            raise forms.ValidationError("Quiet hours must end at another time than they start.")
        return cleaned

    def quiet_hours(
        self, *, current: tuple[time | None, time | None, str]
    ) -> tuple[time | None, time | None, str]:
        """The chosen (start, end, mode); fields the page did not send keep
        their ``current`` values (a page loaded before they existed)."""
        if "quiet_hours_start" not in self.data:
            return current
        return (
            self.cleaned_data["quiet_hours_start"],
            self.cleaned_data["quiet_hours_end"],
            self.cleaned_data.get("quiet_hours_mode") or current[2],
        )

    def weekly_digest(self, *, current: tuple[int, time]) -> tuple[int, time]:
        """The chosen (weekday, time); a field left out keeps its ``current`` value."""
        day = self.cleaned_data.get("weekly_digest_day")
        at = self.cleaned_data.get("weekly_digest_time")
        return (current[0] if day is None else day, current[1] if at is None else at)

    def topic_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.fields if name.startswith("topic_")]

    def frequencies(self) -> dict[int, str]:
        return {
            int(name.removeprefix("topic_")): value
            for name, value in self.cleaned_data.items()
            if name.startswith("topic_")
        }
