"""The digest email: its sources, and each entry rendered when it is built."""

import html
import logging
from datetime import datetime

from django.utils.html import escape, strip_tags

from notifier import templating
from notifier.models import Frequency, Topic

logger = logging.getLogger(__name__)

# The digest email. Entries are rendered when the digest is built (each with
# its topic's ``digest_item``, in the locked-down engine, autoescaped) and
# stored in the Delivery's context; the sender renders these sources with it,
# plus ``recipient`` and the links a message hook adds.
DIGEST_SUBJECT = "Your {{ period }} digest: {{ total }} new notification{{ total|pluralize }}"
DIGEST_HTML = """<h1>Your {{ period }} digest</h1>
{% for section in sections %}<h2>{{ section.topic.name }} ({{ section.count }})</h2>
<ul>
{% for item in section.items %}<li>{{ item.html|safe }}</li>
{% endfor %}</ul>
{% if section.more %}<p>And {{ section.more }} more.</p>
{% endif %}{% endfor %}{% if preferences_url %}<p><a href="{{ preferences_url }}">Choose which notifications you get, and how often</a></p>
{% endif %}{% if unsubscribe_url %}<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
{% endif %}"""
DIGEST_TEXT = """Your {{ period }} digest
{% for section in sections %}
{{ section.topic.name }} ({{ section.count }})
{% for item in section.items %}- {{ item.text }}
{% endfor %}{% if section.more %}And {{ section.more }} more.
{% endif %}{% endfor %}{% if preferences_url %}
Choose which notifications you get, and how often: {{ preferences_url }}
{% endif %}{% if unsubscribe_url %}Unsubscribe: {{ unsubscribe_url }}
{% endif %}"""
FALLBACK_ITEM = "{{ data }}"
PERIODS = {Frequency.HOURLY: "hourly", Frequency.DAILY: "daily", Frequency.WEEKLY: "weekly"}


def _topic_data(topic: Topic) -> dict:
    return {"key": topic.key, "name": topic.name, "description": topic.description}


def _readable(data) -> str:
    """An entry for a topic without its own ``digest_item``: the data's values
    as words ("title: Bob replied · url: https://…"), never a Python repr."""
    if isinstance(data, dict):
        return " · ".join(f"{key}: {_readable(value)}" for key, value in data.items())
    if isinstance(data, list):
        return ", ".join(_readable(value) for value in data)
    return "" if data is None else str(data)


def _render_item(topic: Topic, context: dict) -> dict:
    source = (topic.digest_item or "").strip()
    try:
        if source in ("", FALLBACK_ITEM):
            rendered = escape(_readable(context["data"]))
        else:
            rendered = templating.render(source, context)
    except Exception:
        logger.warning("Digest entry of topic %s does not render", topic.key, exc_info=True)
        rendered = escape(_readable(context["data"]))
    text = strip_tags(rendered) if "<" in rendered else rendered
    return {
        "html": rendered,
        "text": html.unescape(text).strip(),
        "created_at": context["created_at"],
    }


def digest_context(
    *,
    frequency: str,
    window: str,
    entries: dict[int, list[tuple[int, datetime]]],
    topics: dict[int, Topic],
    data: dict[int, object],
) -> dict:
    """The Delivery context of one digest.

    ``entries`` maps topic id -> [(notification id, created_at)], all the
    recipient's notifications in this digest; ``data`` holds the data of the
    ones shown (the newest ``digest_cap`` per topic). Sections come newest
    first, and so do the entries within each.
    """
    sections = []
    for topic_id, rows in entries.items():
        topic = topics[topic_id]
        rows = sorted(rows, key=lambda row: (row[1], row[0]), reverse=True)
        topic_data = _topic_data(topic)
        items = [
            _render_item(
                topic, {"data": data[pk], "topic": topic_data, "created_at": created.isoformat()}
            )
            for pk, created in rows[: topic.digest_cap]
        ]
        sections.append(
            {
                "topic": topic_data,
                "count": len(rows),
                "more": len(rows) - len(items),
                "items": items,
                "newest": rows[0][1].isoformat(),
            }
        )
    sections.sort(key=lambda section: section["newest"], reverse=True)
    return {
        "frequency": frequency,
        "period": PERIODS[frequency],
        "window": window,
        "total": sum(section["count"] for section in sections),
        "sections": sections,
    }
