"""The digest email: its sources, and each entry rendered when it is built."""

import html
import logging
import re
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


# A rendered entry made only of text, entities and plain tags (``<b>``,
# ``<a href="...">``): removing the tags is exactly what ``strip_tags`` does
# to it, without its HTML parser. Anything else goes through ``strip_tags``.
# Possessive quantifiers: no backtracking, linear time on any input.
_PLAIN_MARKUP = re.compile(
    r"(?:[^<>&]++|&(?:[A-Za-z][A-Za-z0-9]*|#[0-9]+|#[xX][0-9A-Fa-f]+);"
    r"|</?[A-Za-z][A-Za-z0-9]*+(?:\s++[A-Za-z_:][-A-Za-z0-9_:.]*+(?:=\"[^\"<>&]*+\")?)*+\s*+/?>)*+"
)
_TAG = re.compile(r"<[^<>]*>")


def _strip_tags(rendered: str) -> str:
    if "<" not in rendered:
        return rendered
    if _PLAIN_MARKUP.fullmatch(rendered):
        return _TAG.sub("", rendered)
    return strip_tags(rendered)


def _entry(rendered: str, created_at: str) -> dict:
    return {
        "html": rendered,
        "text": html.unescape(_strip_tags(rendered)).strip(),
        "created_at": created_at,
    }


def _render_items(topic: Topic, contexts: list[dict]) -> list[dict]:
    """Each of ``contexts`` rendered with the topic's ``digest_item``; an
    entry that does not render shows its data's values instead."""
    source = (topic.digest_item or "").strip()
    if source in ("", FALLBACK_ITEM):
        rendered = [escape(_readable(context["data"])) for context in contexts]
    else:
        rendered = templating.render_each(source, contexts)
    items = []
    for context, output in zip(contexts, rendered, strict=True):
        if isinstance(output, Exception):
            logger.warning(
                "Digest entry of topic %s does not render",
                topic.key,
                exc_info=(type(output), output, output.__traceback__),
            )
            output = escape(_readable(context["data"]))
        items.append(_entry(output, context["created_at"]))
    return items


def digest_contexts(
    *,
    frequency: str,
    window: str,
    entries: dict[int, dict[int, list[tuple[int, datetime]]]],
    topics: dict[int, Topic],
    data: dict[int, object],
) -> dict[int, dict]:
    """The Delivery context of each recipient's digest: recipient id -> context.

    ``entries`` maps recipient id -> topic id -> [(notification id,
    created_at)], all of a recipient's notifications in this digest; ``data``
    holds the data of the ones shown (the newest ``digest_cap`` per topic).
    Sections come newest first, and so do the entries within each. The
    entries of one topic are rendered together (``templating.render_each``).
    """
    topic_data = {topic_id: _topic_data(topic) for topic_id, topic in topics.items()}
    ordered: dict[int, dict[int, list[tuple[int, datetime]]]] = {}
    shown: dict[int, list[dict]] = {}
    for rid, by_topic in entries.items():
        ordered[rid] = {}
        for topic_id, rows in by_topic.items():
            rows = sorted(rows, key=lambda row: (row[1], row[0]), reverse=True)
            ordered[rid][topic_id] = rows
            shown.setdefault(topic_id, []).extend(
                {"data": data[pk], "topic": topic_data[topic_id], "created_at": created.isoformat()}
                for pk, created in rows[: topics[topic_id].digest_cap]
            )
    rendered = {
        topic_id: iter(_render_items(topics[topic_id], contexts))
        for topic_id, contexts in shown.items()
    }
    contexts = {}
    for rid, by_topic in ordered.items():
        sections = []
        for topic_id, rows in by_topic.items():
            cap = topics[topic_id].digest_cap
            items = [next(rendered[topic_id]) for _row in rows[:cap]]
            sections.append(
                {
                    "topic": topic_data[topic_id],
                    "count": len(rows),
                    "more": len(rows) - len(items),
                    "items": items,
                    "newest": rows[0][1].isoformat(),
                }
            )
        sections.sort(key=lambda section: section["newest"], reverse=True)
        contexts[rid] = {
            "frequency": frequency,
            "period": PERIODS[frequency],
            "window": window,
            "total": sum(section["count"] for section in sections),
            "sections": sections,
        }
    return contexts


def digest_context(
    *,
    frequency: str,
    window: str,
    entries: dict[int, list[tuple[int, datetime]]],
    topics: dict[int, Topic],
    data: dict[int, object],
) -> dict:
    """The Delivery context of one digest (see ``digest_contexts``):
    ``entries`` maps topic id -> [(notification id, created_at)]."""
    return digest_contexts(
        frequency=frequency, window=window, entries={0: entries}, topics=topics, data=data
    )[0]
