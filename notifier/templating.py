"""The locked-down template engine every message is rendered with.

Templates are written by staff and rendered with data from recipients and
callers, so the engine can reach nothing but that data:

* no loaders, so ``{% include %}`` and ``{% extends %}`` do not exist;
* no ``{% load %}``, ``{% debug %}``, ``{% url %}`` or ``{% csrf_token %}``;
* autoescape on in HTML; the context holds plain JSON data only (dicts,
  lists, strings, numbers), and Django refuses attributes starting with ``_``;
* the data is read-only: dicts and lists are frozen copies whose mutators
  templates cannot call (``{{ coupons.pop }}`` renders nothing), so one
  message cannot change what the next one sees;
* every render runs under a budget (see ``RenderLimitExceeded``): steps
  (nodes rendered and loop iterations), wall-clock time, output size, and the
  width arguments of the filters that can multiply output. The budget is
  counted as the render proceeds, so it holds in any thread (no signals).
"""

import functools
import json
import re
import time

import html2text
from django.conf import settings
from django.template import (
    Context,
    Engine,
    Library,
    TemplateSyntaxError,
    defaultfilters,
    defaulttags,
)
from django.template.base import Lexer, Node, TokenType

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


class RenderLimitExceeded(ValueError):
    """A render went over its budget; the message names the limit and its setting."""


# Filters whose argument is a width or precision: the output grows with it.
_WIDTH_FILTERS = frozenset({"ljust", "rjust", "center", "floatformat", "stringformat"})


def _check_width(name: str, arg) -> None:
    limit = settings.NOTIFIER_RENDER_MAX_WIDTH
    for digits in re.findall(r"\d+", str(arg))[:8]:
        if len(digits) > 9 or int(digits) > limit:
            raise RenderLimitExceeded(
                f"The {name} filter's argument {str(arg)[:20]!r} is over the limit of "
                f"{limit:,} (NOTIFIER_RENDER_MAX_WIDTH)."
            )


def _output_too_long(length: int) -> RenderLimitExceeded:
    return RenderLimitExceeded(
        f"The rendered output is over {settings.NOTIFIER_RENDER_MAX_CHARS:,} characters "
        f"(NOTIFIER_RENDER_MAX_CHARS)."
    )


def _bounded_filter(name: str, func):
    """``func`` with its arguments checked before and its result's size after."""

    @functools.wraps(func)  # keeps is_safe, needs_autoescape and the signature
    def bounded(value, *args, **kwargs):
        if args and name in _WIDTH_FILTERS:
            _check_width(name, args[0])
        if args and name == "join":
            try:
                estimate = len(value) * len(str(args[0]))
            except TypeError:
                estimate = 0
            if estimate > settings.NOTIFIER_RENDER_MAX_CHARS:
                raise _output_too_long(estimate)
        result = func(value, *args, **kwargs)
        if isinstance(result, str | list | tuple) and len(result) > (
            settings.NOTIFIER_RENDER_MAX_CHARS
        ):
            raise _output_too_long(len(result))
        return result

    return bounded


register = Library()
for _name in ALLOWED_TAGS:
    register.tags[_name] = defaulttags.register.tags[_name]
for _name, _func in defaultfilters.register.filters.items():
    register.filters[_name] = _bounded_filter(_name, _func)


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
        template = ENGINE.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateSyntaxProblem(_describe(exc, source)) from exc
    _meter(template)
    return template


# --- The render budget ----------------------------------------------------------------


class _Budget:
    """What one render may still spend; raises RenderLimitExceeded past a limit."""

    __slots__ = ("chars", "deadline", "max_chars", "max_seconds", "max_steps", "steps")

    def __init__(self) -> None:
        self.steps = self.chars = 0
        self.max_steps = settings.NOTIFIER_RENDER_MAX_STEPS
        self.max_chars = settings.NOTIFIER_RENDER_MAX_CHARS
        self.max_seconds = settings.NOTIFIER_RENDER_MAX_SECONDS
        self.deadline = time.monotonic() + self.max_seconds

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            raise RenderLimitExceeded(
                f"The template does too much work: over {self.max_steps:,} steps "
                "(loops nested too deep or over too much data; NOTIFIER_RENDER_MAX_STEPS)."
            )
        # The clock is a backstop for slow single steps; read it now and then.
        if not self.steps % 256 and time.monotonic() > self.deadline:
            raise RenderLimitExceeded(
                f"The template took over {self.max_seconds:g} s to render "
                "(NOTIFIER_RENDER_MAX_SECONDS)."
            )

    def output(self, length: int) -> None:
        self.chars += length
        if self.chars > self.max_chars:
            raise _output_too_long(self.chars)


class _MeteredContext(Context):
    """A Context that charges its budget for every loop iteration.

    ``{% for %}`` sets its loop variable through ``__setitem__`` (or
    ``update`` when unpacking) once per item, even with an empty body, so a
    nested loop over a long string is stopped here.
    """

    def __init__(self, data, *, autoescape: bool, budget: _Budget):
        super().__init__(data, autoescape=autoescape)
        self.budget = budget

    def __setitem__(self, key, value):
        self.budget.step()
        super().__setitem__(key, value)

    def update(self, other_dict):
        self.budget.step()
        return super().update(other_dict)


def _metered_render(render_annotated, counts_output: bool, context):
    budget = getattr(context, "budget", None)
    if budget is None:
        return render_annotated(context)
    budget.step()
    output = render_annotated(context)
    if counts_output:
        budget.output(len(output))
    return output


def _meter(template) -> None:
    """Charge every node render to the context's budget.

    Only nodes without children count their output (a parent's output is its
    children's), so each character is counted once per time it is produced.
    """
    for node in template.nodelist.get_nodes_by_type(Node):
        is_leaf = not any(getattr(node, name, None) for name in node.child_nodelists)
        node.render_annotated = functools.partial(_metered_render, node.render_annotated, is_leaf)


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


# What a template is tried with when it is saved: a runaway template (a loop
# nested over a long literal, a huge padding) is refused then, not at send.
SAMPLE_CONTEXT = {
    "recipient": {
        "email": "ada.lovelace@example.com",
        "name": "Ada Lovelace",
        "first_name": "Ada",
        "locale": "en",
        "time_zone": "Europe/London",
        "attributes": {},
    }
}


def check_syntax(source: str) -> None:
    """Raise TemplateSyntaxProblem if ``source`` does not compile, or if it
    breaks the render limits even with sample data."""
    _compile(source)
    try:
        render(source, SAMPLE_CONTEXT)
    except RenderLimitExceeded as exc:
        raise TemplateSyntaxProblem(str(exc)) from exc
    except Exception:  # other errors depend on the data; send-time checks catch them
        pass


def plain_data(value):
    """Return ``value`` as a fresh copy of plain JSON data, or raise.

    A round trip through JSON both validates and copies: templates can call
    methods like ``list.pop`` but only on this throw-away copy.
    """
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise ContextNotPlainData(f"Template context must be plain JSON data: {exc}") from exc


class FrozenDict(dict):
    """A dict whose mutators refuse; templates never call them (``alters_data``)."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("Template data is read-only.")

    _refuse.alters_data = True
    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse


class FrozenList(list):
    """A list whose mutators refuse; templates never call them (``alters_data``)."""

    _refuse = FrozenDict._refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = clear = extend = insert = pop = remove = reverse = sort = _refuse


def freeze(value):
    """A read-only copy of plain data (frozen parts are shared, not copied)."""
    if isinstance(value, FrozenDict | FrozenList):
        return value
    if isinstance(value, dict):
        return FrozenDict((key, freeze(item)) for key, item in value.items())
    if isinstance(value, list | tuple):
        return FrozenList(freeze(item) for item in value)
    return value


def render(source: str, context: dict, *, autoescape: bool = True) -> str:
    """Render ``source`` with a read-only ``context`` under a fresh budget."""
    template = _compile(source)
    metered = _MeteredContext(freeze(context), autoescape=autoescape, budget=_Budget())
    # Names a template sets ({% cycle ... as x %}, {% regroup %}) land in this
    # layer of its own, never in the data.
    with metered.push():
        output = template.render(metered)
    if len(output) > settings.NOTIFIER_RENDER_MAX_CHARS:
        raise _output_too_long(len(output))
    return output


def render_each(source: str, contexts: list[dict], *, autoescape: bool = True) -> list:
    """``render(source, context)`` for each of ``contexts``: the rendered
    string, or the exception that render raised.

    The same outputs as separate calls, at a fraction of the cost for many
    small renders (digest entries): the template is looked up once and one
    context object serves every render, each with a fresh budget, its data
    in a layer of its own and its own render state (``{% cycle %}``).
    """
    try:
        template = _compile(source)
    except Exception as exc:  # every render raises this
        return [exc] * len(contexts)
    metered = _MeteredContext({}, autoescape=autoescape, budget=_Budget())
    results: list = []
    for context in contexts:
        metered.budget = _Budget()
        try:
            with metered.push(freeze(context)), metered.push():
                output = template.render(metered)
            if len(output) > metered.budget.max_chars:
                raise _output_too_long(len(output))
            results.append(output)
        except Exception as exc:  # the caller decides, per render
            results.append(exc)
    return results


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

    ``context`` must already be plain data (see ``plain_data``); every part
    renders from the same read-only copy of it, each under its own budget.
    """
    context = freeze(context)
    rendered_subject = " ".join(render(subject, context, autoescape=False).split())
    html = render(html_body, context) if html_body else ""
    if text_body:
        text = render(text_body, context, autoescape=False)
    else:
        text = html_to_text(html) if html else ""
    return rendered_subject, html, text
