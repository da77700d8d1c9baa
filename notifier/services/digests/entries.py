"""The digest email: its sources, and each entry rendered when it is built."""

import functools
import html
import logging
import re
from datetime import datetime

from django.utils.html import escape, strip_tags

from notifier import templating
from notifier.models import Frequency, Topic
from notifier.sending.message import inline_html_document

logger = logging.getLogger(__name__)

# The digest email. Entries are rendered when the digest is built (each with
# its topic's ``digest_item``, in the locked-down engine, autoescaped), and so
# are the sections holding them (``digest_body``, once per digest): the
# Delivery's context carries them as ``sections_html`` and ``sections_text``.
# The sender renders these sources with that context, plus ``recipient`` and
# the links a message hook adds: the frame around the sections, the same for
# every digest.
DIGEST_SUBJECT = "Your {{ period }} digest: {{ total }} new notification{{ total|pluralize }}"
DIGEST_HTML = """<h1>Your {{ period }} digest</h1>
{{ sections_html|safe }}{% if preferences_url %}<p><a href="{{ preferences_url }}">Choose which notifications you get, and how often</a></p>
{% endif %}{% if unsubscribe_url %}<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
{% endif %}"""
DIGEST_TEXT = """Your {{ period }} digest
{{ sections_text }}{% if preferences_url %}
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
    """The content of each recipient's digest: recipient id -> its period,
    total and sections (``digest_body`` makes the Delivery's context of it).

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
    """The content of one digest (see ``digest_contexts``):
    ``entries`` maps topic id -> [(notification id, created_at)]."""
    return digest_contexts(
        frequency=frequency, window=window, entries={0: entries}, topics=topics, data=data
    )[0]


# --- The sections, rendered once per digest -------------------------------------------

# What the sections of a digest look like (the entries' own HTML goes in as
# rendered). Their tags carry the styles the default layout's CSS gives them
# when a source is compiled (``inline_html_document``): see ``_styled_tags``.
_SECTION_PROBE = "<h2>h2-tag</h2>\n<ul>\n<li>li-tag</li>\n</ul>\n<p>p-tag</p>"


@functools.lru_cache(maxsize=1)
def _styled_tags() -> dict[str, str]:
    """The opening tags of a section (h2, ul, li, p) as compiled with the
    default layout: its CSS has element selectors only, so a tag is styled
    the same wherever it stands. Once per process."""
    compiled = inline_html_document(_SECTION_PROBE)
    start = re.search(r"<h2\b[^>]*>h2-tag", compiled).start()
    return {
        name: re.compile(rf"<{name}\b[^>]*>").search(compiled, start).group(0)
        for name in ("h2", "ul", "li", "p")
    }


def digest_body(content: dict) -> dict:
    """The Delivery context of a digest whose ``content`` is one of
    ``digest_contexts``: its period and total, and its sections rendered as
    HTML (compiled tags, names escaped, entries as rendered) and as text.
    Plain string building: the sections are ours, and their output is what
    rendering them as a template in the sender gave before."""
    tags = _styled_tags()
    h2, ul, li, p = tags["h2"], tags["ul"], tags["li"], tags["p"]
    html_parts: list[str] = []
    text_parts: list[str] = []
    for section in content["sections"]:
        name, count, more = section["topic"]["name"], section["count"], section["more"]
        html_parts.append(f"{h2}{escape(name)} ({count})</h2>\n{ul}\n")
        text_parts.append(f"\n{name} ({count})\n")
        for item in section["items"]:
            html_parts.append(f"{li}{item['html']}</li>\n")
            text_parts.append(f"- {item['text']}\n")
        html_parts.append("</ul>\n")
        if more:
            html_parts.append(f"{p}And {more} more.</p>\n")
            text_parts.append(f"And {more} more.\n")
    return {
        "frequency": content["frequency"],
        "period": content["period"],
        "window": content["window"],
        "total": content["total"],
        "sections_html": "".join(html_parts),
        "sections_text": "".join(text_parts),
    }
