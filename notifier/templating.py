"""The locked-down template engine every message is rendered with.

Templates are written by staff and rendered with data from recipients and
callers, so the engine can reach nothing but that data:

* no loaders, so ``{% include %}`` and ``{% extends %}`` do not exist;
* no ``{% load %}``, ``{% debug %}``, ``{% url %}`` or ``{% csrf_token %}``;
* autoescape on in HTML; the context holds plain JSON data only (dicts,
  lists, strings, numbers), and Django refuses attributes starting with ``_``.
"""

import functools
import json

import html2text
from django.template import (
    Context,
    Engine,
    Library,
    TemplateSyntaxError,
    defaultfilters,
    defaulttags,
)
from django.template.base import Lexer, TokenType

ALLOWED_TAGS = (
    "autoescape",
    "comment",
    "cycle",
    "filter",
    "firstof",
    "for",
    "if",
    "ifchanged",
    "now",
    "regroup",
    "resetcycle",
    "spaceless",
    "templatetag",
    "verbatim",
    "widthratio",
    "with",
)

register = Library()
for _name in ALLOWED_TAGS:
    register.tags[_name] = defaulttags.register.tags[_name]
register.filters.update(defaultfilters.register.filters)


class SandboxEngine(Engine):
    # Engine adds these to every instance; we allow-list instead.
    default_builtins: list[str] = []


ENGINE = SandboxEngine(
    dirs=[],
    app_dirs=False,
    loaders=[],
    libraries={},
    builtins=["notifier.templating"],
    autoescape=True,
    string_if_invalid="",
    # Only so syntax errors carry their line number; templates cannot reach
    # anything debug-related (no {% debug %}).
    debug=True,
)


class TemplateSyntaxProblem(ValueError):
    """A template that does not compile; the message says where and why."""


class ContextNotPlainData(ValueError):
    """The context holds something other than JSON-compatible data."""


@functools.lru_cache(maxsize=512)
def _compile(source: str):
    _refuse_unclosed_tags(source)
    try:
        return ENGINE.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateSyntaxProblem(_describe(exc, source)) from exc


def _refuse_unclosed_tags(source: str) -> None:
    """Django prints an unclosed ``{{ name`` as text; staff mean a variable."""
    for token in Lexer(source).tokenize():
        if token.token_type == TokenType.TEXT:
            for opener in ("{{", "{%"):
                if opener in token.contents:
                    raise TemplateSyntaxProblem(
                        f"line {token.lineno}: {opener!r} is opened but never closed."
                    )


def _describe(exc: TemplateSyntaxError, source: str) -> str:
    message = str(exc)
    if "Invalid block tag" in message:
        message += f". Allowed tags: {', '.join(ALLOWED_TAGS)}."
    info = getattr(exc, "template_debug", None)  # set because debug=True
    if info and info.get("line"):
        message = f"line {info['line']}: {message}"
    return message


def check_syntax(source: str) -> None:
    """Raise TemplateSyntaxProblem if ``source`` does not compile."""
    _compile(source)


def plain_data(value):
    """Return ``value`` as a fresh copy of plain JSON data, or raise.

    A round trip through JSON both validates and copies: templates can call
    methods like ``list.pop`` but only on this throw-away copy.
    """
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise ContextNotPlainData(f"Template context must be plain JSON data: {exc}") from exc


def render(source: str, context: dict, *, autoescape: bool = True) -> str:
    template = _compile(source)
    return template.render(Context(context, autoescape=autoescape))


_html_to_text = html2text.HTML2Text()
_html_to_text.body_width = 0
_html_to_text.ignore_images = True
_html_to_text.protect_links = True


def html_to_text(html: str) -> str:
    return _html_to_text.handle(html).strip() + "\n"


def render_message(
    *, subject: str, html_body: str, text_body: str, context: dict
) -> tuple[str, str, str]:
    """Render (subject, html, text); text is derived from HTML when empty.

    ``context`` must already be plain data (see ``plain_data``).
    """
    rendered_subject = " ".join(render(subject, context, autoescape=False).split())
    html = render(html_body, context) if html_body else ""
    if text_body:
        text = render(text_body, context, autoescape=False)
    else:
        text = html_to_text(html) if html else ""
    return rendered_subject, html, text
