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

A campaign's messages share a layer of context (the run's, see
``shared_layer``). The parts of a template that read nothing else (a product
list, an article block) render once per run and process, and every message
reuses their output; see ``_SharedParts``.
"""

import copy
import functools
import hashlib
import html
import json
import re
import threading
import time
from collections import OrderedDict

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
from django.template.base import (
    FilterExpression,
    Lexer,
    Node,
    NodeList,
    TextNode,
    TokenType,
    Variable,
    VariableNode,
)
from django.template.defaulttags import TemplateLiteral
from django.template.smartif import TokenBase

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


# --- Parts shared by every message of a run ----------------------------------------------


class SharedContext(FrozenDict):
    """A read-only context layer every message of a run shares, with a
    fingerprint of its content: rendered parts are reused per fingerprint."""

    fingerprint = ""


def shared_layer(context: dict | None) -> SharedContext:
    """``context`` (plain data) as the shared layer of a run's messages."""
    layer = SharedContext((key, freeze(value)) for key, value in (context or {}).items())
    encoded = json.dumps(context or {}, sort_keys=True, default=str).encode()
    layer.fingerprint = hashlib.sha256(encoded).hexdigest()
    return layer


# A name no context binds: the node it is found in renders per message.
_PER_MESSAGE = "\0per-message"
# Filters whose output changes from one call to the next.
_UNSHAREABLE_FILTERS = frozenset({"random", "timesince_filter", "timeuntil_filter"})


def _variable_names(var) -> set[str]:
    if not isinstance(var, Variable) or var.lookups is None:
        return set()  # a literal
    if var.lookups[:2] == ("forloop", "parentloop"):
        return {_PER_MESSAGE}  # an enclosing loop's state
    return {var.lookups[0]}


def _expression_names(expression) -> set[str]:
    """The top-level context names a filter expression reads."""
    if not isinstance(expression, FilterExpression):
        return {_PER_MESSAGE}
    names = _variable_names(expression.var)
    for func, args in expression.filters:
        if getattr(func, "__name__", "") in _UNSHAREABLE_FILTERS:
            names.add(_PER_MESSAGE)
        for is_lookup, arg in args:
            if is_lookup:
                names |= _variable_names(arg)
    return names


def _condition_names(condition) -> set[str]:
    if condition is None:  # {% else %}
        return set()
    if isinstance(condition, TemplateLiteral):
        return _expression_names(condition.value)
    if isinstance(condition, TokenBase):  # an operator: and, or, not, ==, in, ...
        return _condition_names(condition.first) | _condition_names(condition.second)
    return {_PER_MESSAGE}


def _nodelist_names(nodelist) -> set[str]:
    names: set[str] = set()
    for node in nodelist or ():
        names |= _free_names(node)
    return names


def _free_names(node) -> set[str]:
    """The top-level context names ``node`` reads (names its own loops bind
    excluded); ``_PER_MESSAGE`` for anything else than text, variables,
    ``for`` and ``if``, whose output may differ between two renders."""
    if isinstance(node, TextNode):
        return set()
    if isinstance(node, VariableNode):
        return _expression_names(node.filter_expression)
    if isinstance(node, defaulttags.ForNode):
        body = _nodelist_names(node.nodelist_loop) - {*node.loopvars, "forloop"}
        return _expression_names(node.sequence) | body | _nodelist_names(node.nodelist_empty)
    if isinstance(node, defaulttags.IfNode):
        names = set()
        for condition, nodelist in node.conditions_nodelists:
            names |= _condition_names(condition) | _nodelist_names(nodelist)
        return names
    return {_PER_MESSAGE}


class _SharedParts:
    """A template whose top-level nodes that read only shared names are
    rendered once (``steps``: what that render spent, charged again to every
    message's budget, so a message's budget counts what it would have spent)."""

    __slots__ = ("steps", "template")

    def __init__(self, template, steps: int):
        self.template = template
        self.steps = steps


_SHARED_PARTS_MAX = 256
_shared_parts: OrderedDict = OrderedDict()
_shared_parts_lock = threading.Lock()


def _render_shared_parts(
    source: str, shared: SharedContext, names: frozenset, autoescape: bool
) -> _SharedParts:
    template = _compile(source)
    budget = _Budget()
    context = _MeteredContext(
        {name: shared[name] for name in names}, autoescape=autoescape, budget=budget
    )
    nodes, rendered = NodeList(), False
    for node in template.nodelist:
        if isinstance(node, TextNode) or not _free_names(node) <= names:
            nodes.append(node)
            continue
        single = copy.copy(template)
        single.nodelist = NodeList([node])
        try:
            with context.push():
                output = single.render(context)
        except Exception:  # rendered per message instead, and fails there as before
            nodes.append(node)
            continue
        text = TextNode(output)
        text.token, text.origin = node.token, node.origin
        text.render_annotated = functools.partial(_metered_render, text.render_annotated, True)
        nodes.append(text)
        rendered = True
    if not rendered:
        return _SharedParts(template, 0)
    specialised = copy.copy(template)
    specialised.nodelist = nodes
    # Output is counted again per message (the text nodes are metered).
    return _SharedParts(specialised, budget.steps)


def _shared_parts_for(source: str, shared: SharedContext, names: frozenset, autoescape: bool):
    key = (source, autoescape, shared.fingerprint, names)
    with _shared_parts_lock:
        parts = _shared_parts.get(key)
        if parts is not None:
            _shared_parts.move_to_end(key)
            return parts
    parts = _render_shared_parts(source, shared, names, autoescape)
    with _shared_parts_lock:
        _shared_parts[key] = parts
        while len(_shared_parts) > _SHARED_PARTS_MAX:
            _shared_parts.popitem(last=False)
    return parts


def render(
    source: str,
    context: dict,
    *,
    autoescape: bool = True,
    shared: SharedContext | None = None,
    shared_names: frozenset = frozenset(),
) -> str:
    """Render ``source`` with a read-only ``context`` under a fresh budget.

    With ``shared`` (the run's layer) and ``shared_names`` (the names whose
    value in ``context`` is the shared one), the parts reading only those
    names are rendered once and reused: the output is the same. A plain
    template (see ``_plain``) is filled in directly.
    """
    plain = _plain(source)
    if plain is not None:
        output = _render_plain(plain, context, autoescape)
        if output is not None:
            if len(output) > settings.NOTIFIER_RENDER_MAX_CHARS:
                raise _output_too_long(len(output))
            return output
    budget = _Budget()
    if shared is not None and shared_names and shared.fingerprint:
        parts = _shared_parts_for(source, shared, shared_names, autoescape)
        template = parts.template
        budget.steps = parts.steps
    else:
        template = _compile(source)
    metered = _MeteredContext(freeze(context), autoescape=autoescape, budget=budget)
    # Names a template sets ({% cycle ... as x %}, {% regroup %}) land in this
    # layer of its own, never in the data.
    with metered.push():
        output = template.render(metered)
    if len(output) > settings.NOTIFIER_RENDER_MAX_CHARS:
        raise _output_too_long(len(output))
    return output


# --- Plain templates, filled in directly ------------------------------------------------
#
# Most small templates (a digest entry, a digest's frame, many subjects) are
# text, variables and ``{% if %}`` on a variable. Their output follows from
# Django's rules for a few plain values, so they are filled in without its
# node-by-node render: the same output, a fraction of the cost. Anything else,
# or any value these rules do not cover, renders in full.

_PLAIN_FILTERS = frozenset({"safe", "pluralize"})


def _plain_lookups(expression) -> tuple | None:
    """The lookups of a plain variable, or None (a literal, a translation)."""
    if not isinstance(expression, FilterExpression):
        return None
    var = expression.var
    if not isinstance(var, Variable) or var.lookups is None or var.translate:
        return None
    return var.lookups


def _plain_program(nodelist) -> tuple | None:
    program = []
    for node in nodelist:
        if isinstance(node, TextNode):
            program.append(node.s)
        elif isinstance(node, VariableNode):
            expression = node.filter_expression
            lookups = _plain_lookups(expression)
            names = [getattr(func, "__name__", "") for func, _args in expression.filters]
            if lookups is None or len(names) > 1 or any(args for _f, args in expression.filters):
                return None
            if names and names[0] not in _PLAIN_FILTERS:
                return None
            program.append((lookups, names[0] if names else ""))
        elif type(node) is defaulttags.IfNode:
            branches = []
            for condition, body in node.conditions_nodelists:
                if condition is None:
                    lookups = None
                elif type(condition) is TemplateLiteral and not condition.value.filters:
                    lookups = _plain_lookups(condition.value)
                    if lookups is None:
                        return None
                else:
                    return None
                inner = _plain_program(body)
                if inner is None:
                    return None
                branches.append((lookups, inner))
            program.append(branches)
        else:
            return None
    return tuple(program)


@functools.lru_cache(maxsize=512)
def _plain_cached(source: str) -> tuple[tuple | None, int]:
    template = _compile(source)
    return _plain_program(template.nodelist), len(template.nodelist.get_nodes_by_type(Node))


def _plain(source: str) -> tuple | None:
    """``source`` as a plain program (see above), or None. A template of more
    nodes than a render may take steps is not plain: the full render says
    what it says of it (a plain one takes at most a step per node)."""
    program, nodes = _plain_cached(source)
    return program if nodes <= settings.NOTIFIER_RENDER_MAX_STEPS else None


class _NotPlain(Exception):
    """A value the plain rules do not cover: render in full."""


def _plain_value(context: dict, lookups: tuple):
    """The value at ``lookups`` through dict keys alone (what Django's
    lookup finds first), else _NotPlain (Django would try more)."""
    value = context
    for bit in lookups:
        if not isinstance(value, dict) or bit not in value:
            raise _NotPlain
        value = value[bit]
    return value


def _plain_text(value, how: str, autoescape: bool) -> str:
    if how == "pluralize":
        if type(value) is not int:
            raise _NotPlain
        return "" if value == 1 else "s"
    if type(value) is str:
        # What django.utils.html.escape returns, without its lazy-string check.
        return html.escape(value) if autoescape and how != "safe" else value
    if type(value) is int and how == "" and not settings.USE_THOUSAND_SEPARATOR:
        return str(value)  # what localize() prints without separators
    raise _NotPlain


def _run_plain(program: tuple, context: dict, autoescape: bool, out: list) -> None:
    for part in program:
        if type(part) is str:
            out.append(part)
        elif type(part) is tuple:
            out.append(_plain_text(_plain_value(context, part[0]), part[1], autoescape))
        else:  # {% if %}: the first branch whose variable is true
            for lookups, body in part:
                if lookups is None or _plain_value(context, lookups):
                    _run_plain(body, context, autoescape, out)
                    break


def _render_plain(program: tuple, context: dict, autoescape: bool) -> str | None:
    """What rendering the plain ``program`` with ``context`` gives, or None
    where a value is not one the plain rules cover (render it in full)."""
    out: list[str] = []
    try:
        _run_plain(program, context, autoescape, out)
    except _NotPlain:
        return None
    return "".join(out)


def render_each(source: str, contexts: list[dict], *, autoescape: bool = True) -> list:
    """``render(source, context)`` for each of ``contexts``: the rendered
    string, or the exception that render raised.

    The same outputs as separate calls, at a fraction of the cost for many
    small renders (digest entries): the template is looked up once and one
    context object serves every render, each with a fresh budget, its data
    in a layer of its own and its own render state (``{% cycle %}``). A
    plain template (``<b>{{ data.title }}</b>``, see ``_plain``) is filled
    in directly.
    """
    try:
        template = _compile(source)
    except Exception as exc:  # every render raises this
        return [exc] * len(contexts)
    plain = _plain(source)
    metered = _MeteredContext({}, autoescape=autoescape, budget=_Budget())
    results: list = []
    for context in contexts:
        if plain is not None:
            output = _render_plain(plain, context, autoescape)
            if output is not None:
                too_long = len(output) > metered.budget.max_chars
                results.append(_output_too_long(len(output)) if too_long else output)
                continue
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
    *,
    subject: str,
    html_body: str,
    text_body: str,
    context: dict,
    shared: SharedContext | None = None,
) -> tuple[str, str, str]:
    """Render (subject, html, text); text is derived from HTML when empty.

    ``context`` must already be plain data (see ``plain_data``); every part
    renders from the same read-only copy of it, each under its own budget.
    ``shared``: the layer of ``context`` every message of a run shares (see
    ``render``).
    """
    context = freeze(context)
    names = frozenset()
    if shared is not None:
        names = frozenset(key for key, value in shared.items() if context.get(key) is value)
    parts = {"shared": shared, "shared_names": names}
    rendered_subject = " ".join(render(subject, context, autoescape=False, **parts).split())
    html = render(html_body, context, **parts) if html_body else ""
    if text_body:
        text = render(text_body, context, autoescape=False, **parts)
    else:
        text = html_to_text(html) if html else ""
    return rendered_subject, html, text
