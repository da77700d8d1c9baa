from datetime import time

from django import forms

from notifier.models import Frequency, Topic, Weekday

# Local times a recipient can pick: on the hour and the half hour.
HALF_HOURS = [time(h, m) for h in range(24) for m in (0, 30)]
TIME_CHOICES = [(t.strftime("%H:%M"), t.strftime("%H:%M")) for t in HALF_HOURS]


def _local_time(value: str) -> time:
    return time.fromisoformat(value)


class PreferencesForm(forms.Form):
    """One frequency per topic (fields ``topic_<id>``), and when the weekly
    digest comes (``weekly_digest_day``, ``weekly_digest_time``)."""

    weekly_digest_day = forms.TypedChoiceField(
        label="Day", choices=Weekday.choices, coerce=int, required=False, empty_value=None
    )
    weekly_digest_time = forms.TypedChoiceField(
        label="Time", choices=TIME_CHOICES, coerce=_local_time, required=False, empty_value=None
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
