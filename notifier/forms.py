from django import forms

from notifier.models import Frequency, Topic


class PreferencesForm(forms.Form):
    """One frequency per topic (fields ``topic_<id>``)."""

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

    def frequencies(self) -> dict[int, str]:
        return {
            int(name.removeprefix("topic_")): value for name, value in self.cleaned_data.items()
        }
