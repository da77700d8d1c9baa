"""A template's HTML as it leaves: a complete document with its CSS inlined.

Run once when a template is saved (``notifier.services.templates``), not per
message: the result is stored on the template (``Template.compiled_html``) and
the sender renders that. Three steps:

1. MJML sources are compiled to HTML by MRML (``mjml-python``, no Node).
2. HTML sources are wrapped in a base layout (``LAYOUTS``): a full document
   with doctype, charset and viewport, and, by default, a centred table at
   most 600 px wide, which Gmail and Outlook both render.
3. The ``<style>`` blocks are inlined into ``style`` attributes by
   ``css-inline`` (Gmail and Outlook ignore much of a ``<style>`` block);
   ``@media`` rules stay in a ``<style>`` for the clients that read them.

The source is Django template language, which an HTML parser does not know:
``{% for %}`` between table rows would be moved out of the table, and
``{% if a > b %}`` escaped. So every template tag and variable is swapped for
a placeholder the parser keeps where it is (an HTML comment between elements,
a bare word inside a tag or a ``<title>``), and put back afterwards.
"""

import functools
import re

import css_inline
import mjml
from django.template.base import DebugLexer, TokenType
from django.utils.html import escape


class EmailHtmlProblem(ValueError):
    """The source cannot be made into an email document; the message says why."""


class SourceFormat:
    # The values of Template.SourceFormat (this module is imported by models).
    HTML = "html"
    MJML = "mjml"


_FONT = "-apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
_HEAD = (
    '<meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    '<meta http-equiv="X-UA-Compatible" content="IE=edge">\n'
    "<title>{title}</title>\n"
)
_BASE_STYLE = f"""<style>
body {{ margin: 0; padding: 0; font-family: {_FONT}; font-size: 16px; line-height: 1.5;
  color: #1f2933; }}
h1 {{ font-size: 24px; line-height: 1.25; margin: 0 0 16px; }}
h2 {{ font-size: 20px; line-height: 1.3; margin: 24px 0 12px; }}
p {{ margin: 0 0 16px; }}
a {{ color: #1d4ed8; }}
img {{ border: 0; max-width: 100%; height: auto; }}
</style>
"""

# Each layout is a document with ``{content}`` where the template's HTML goes
# and ``{title}`` for the subject. "none" uses the source as written (a
# complete document of its own); it still gets a doctype, charset and viewport.
LAYOUTS = {
    "centered": (
        "Centred card, 600 px (recommended)",
        "<!DOCTYPE html>\n<html>\n<head>\n" + _HEAD + _BASE_STYLE + "</head>\n"
        '<body style="margin: 0; padding: 0; background-color: #f3f4f6;">\n'
        '<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0" '
        'style="background-color: #f3f4f6;">\n<tr>\n<td align="center" style="padding: 24px 12px;">\n'
        '<!--[if mso]><table role="presentation" width="600" cellpadding="0" cellspacing="0" '
        'border="0"><tr><td><![endif]-->\n'
        '<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0" '
        'style="max-width: 600px; background-color: #ffffff; border-radius: 6px;">\n<tr>\n'
        f'<td style="padding: 32px; font-family: {_FONT}; font-size: 16px; line-height: 1.5; '
        'color: #1f2933; text-align: left;">\n{content}\n</td>\n</tr>\n</table>\n'
        "<!--[if mso]></td></tr></table><![endif]-->\n</td>\n</tr>\n</table>\n</body>\n</html>\n",
    ),
    "plain": (
        "Plain page (full width, no frame)",
        "<!DOCTYPE html>\n<html>\n<head>\n" + _HEAD + _BASE_STYLE + "</head>\n"
        '<body style="margin: 0; padding: 16px;">\n{content}\n</body>\n</html>\n',
    ),
    "none": ("None: the HTML is a complete document", "{content}"),
}
DEFAULT_LAYOUT = "centered"
LAYOUT_CHOICES = [(key, label) for key, (label, _doc) in LAYOUTS.items()]

_INLINER = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)
# MJML's own <style> blocks (responsive columns, Outlook fixes) must stay.
_MJML_INLINER = css_inline.CSSInliner(
    keep_style_tags=True, keep_link_tags=True, keep_at_rules=True, load_remote_stylesheets=False
)

# --- Keeping template tags through an HTML parser ---------------------------------

_PLACEHOLDER = "djtph{}x"
_RESTORE = re.compile(r'<!--djtph(\d+)x-->|djtph(\d+)x(?:="")?')
# Elements whose content the parser reads as text: a comment there is text.
_RAW_TEXT = frozenset({"title", "style", "script", "textarea"})
_TAG_NAME = re.compile(r"</?([a-zA-Z][a-zA-Z0-9-]*)")


class _Scanner:
    """Follows the HTML around template tags: inside a tag, a comment or a
    raw-text element (title, style), or between elements."""

    def __init__(self) -> None:
        self.in_tag = False
        self.in_comment = False
        self.quote = ""
        self.tag = ""
        self.raw = ""

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            char = text[i]
            if self.in_comment:
                if text.startswith("-->", i):
                    self.in_comment = False
                    i += 3
                    continue
            elif self.in_tag:
                if self.quote:
                    if char == self.quote:
                        self.quote = ""
                elif char in "\"'":
                    self.quote = char
                elif char == ">":
                    self.in_tag = False
                    if self.tag in _RAW_TEXT:
                        self.raw = self.tag
            elif self.raw:
                if text[i : i + len(self.raw) + 2].lower() == f"</{self.raw}":
                    self.raw = ""
                    continue
            elif text.startswith("<!--", i):
                self.in_comment = True
                i += 4
                continue
            elif char == "<":
                match = _TAG_NAME.match(text, i)
                if match:
                    self.in_tag = True
                    closing = text[i + 1] == "/"
                    self.tag = "" if closing else match.group(1).lower()
                    i = match.end()
                    continue
            i += 1

    @property
    def needs_word(self) -> bool:
        return self.in_tag or self.in_comment or bool(self.raw)


def _protect(source: str, *, raw_text: bool = False) -> tuple[str, list[str]]:
    """``source`` with each template tag and variable replaced by a placeholder
    (``raw_text``: ``source`` is the content of a raw-text element)."""
    saved: list[str] = []
    parts: list[str] = []
    scanner = _Scanner()
    scanner.raw = "title" if raw_text else ""
    for token in DebugLexer(source).tokenize():
        if token.token_type == TokenType.TEXT:
            parts.append(token.contents)
            scanner.feed(token.contents)
            continue
        start, end = token.position
        if scanner.in_tag and not scanner.quote:
            # A parser keeps attributes, not their order: a tag here could
            # end up on the wrong side of the attribute it guards.
            raise EmailHtmlProblem(
                f"{source[start:end]} sits between the attributes of an HTML tag, which "
                "cannot be kept in place; put the condition around the whole element, or "
                'inside an attribute\'s value (class="{% if vip %}vip{% endif %}").'
            )
        saved.append(source[start:end])
        word = _PLACEHOLDER.format(len(saved) - 1)
        parts.append(word if scanner.needs_word else f"<!--{word}-->")
    return "".join(parts), saved


def _restore(html: str, saved: list[str]) -> str:
    def put_back(match: re.Match) -> str:
        index = int(match.group(1) or match.group(2))
        return saved[index] if index < len(saved) else match.group(0)

    return _RESTORE.sub(put_back, html)


# --- The document ------------------------------------------------------------------

_HEAD_OPEN = re.compile(r"<head\b[^>]*>", re.IGNORECASE)


def _complete(html: str) -> str:
    """Add what a document needs and a source written as one may lack."""
    if not _HEAD_OPEN.search(html):  # css-inline always writes one; belt and braces
        html = re.sub(r"<html\b[^>]*>", r"\g<0><head></head>", html, count=1, flags=re.I)
    missing = ""
    if not re.search(r"<meta[^>]+charset", html, re.IGNORECASE):
        missing += '<meta charset="utf-8">'
    if not re.search(r'<meta[^>]+name="?viewport', html, re.IGNORECASE):
        missing += '<meta name="viewport" content="width=device-width, initial-scale=1">'
    if missing:
        html = _HEAD_OPEN.sub(lambda m: m.group(0) + missing, html, count=1)
    if not html.lstrip().lower().startswith("<!doctype"):
        html = "<!DOCTYPE html>\n" + html.lstrip()
    return html


def is_document(source: str) -> bool:
    return bool(re.search(r"<html\b", source, re.IGNORECASE))


@functools.lru_cache(maxsize=128)
def email_html_compile(
    *, source: str, source_format: str = SourceFormat.HTML, layout: str = DEFAULT_LAYOUT, title=""
) -> str:
    """The document that leaves for ``source``: laid out, CSS inlined, template
    tags kept as written. ``title`` (template language, like the subject)
    becomes the document's <title>. Raises EmailHtmlProblem."""
    protected, saved = _protect(source)
    if source_format == SourceFormat.MJML:
        try:
            html = mjml.mjml2html(protected)
        except ValueError as exc:
            raise EmailHtmlProblem(f"The MJML does not compile: {exc}.") from exc
        inliner = _MJML_INLINER
    elif source_format == SourceFormat.HTML:
        if layout not in LAYOUTS:
            raise EmailHtmlProblem(f"Unknown layout {layout!r}.")
        if is_document(source):
            layout = "none"  # a complete document is not wrapped in another
        title_protected, title_saved = _protect(title, raw_text=True)
        title_word = _PLACEHOLDER.format(len(saved))
        saved.append(_restore(escape(title_protected), title_saved))
        html = LAYOUTS[layout][1].replace("{title}", title_word).replace("{content}", protected)
        inliner = _INLINER
    else:
        raise EmailHtmlProblem(f"Unknown source format {source_format!r}.")
    try:
        html = inliner.inline(html)
    except (ValueError, css_inline.InlineError) as exc:
        raise EmailHtmlProblem(f"The CSS could not be inlined: {exc}.") from exc
    return _complete(_restore(html, saved))
