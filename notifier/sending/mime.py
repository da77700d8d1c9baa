"""A message's bytes on the wire (SMTP), as Django writes them, at a tenth of
the cost.

Django builds a tree of ``email.mime`` objects per message (``message()``)
and flattens it with the standard library's generator (``as_bytes()``): 0.5
to 0.85 ms per campaign message, a third of our SMTP workers' CPU. The
messages we send have one shape (a text part and HTML alternatives in
UTF-8, no attachments), so ``message_bytes`` writes that shape directly: the
same headers in the same order, each value as Django's
``forbid_multi_line_headers`` stores it and folded by the policy, each body
as 7bit, 8bit or quoted-printable (``quoprimime``) by Django's rule, line
ends as the generator writes them. The bytes are Django's, byte for byte
(``tests/notifier/test_mime.py`` compares them over a corpus of awkward
messages). Any other shape goes Django's way.
"""

import functools
import re
from email import quoprimime
from email.policy import Compat32
from email.utils import formatdate, make_msgid
from uuid import uuid4

from django.conf import settings
from django.core.mail.message import (
    RFC5322_EMAIL_LINE_LENGTH_LIMIT,
    EmailMessage,
    forbid_multi_line_headers,
)
from django.core.mail.utils import DNS_NAME

_NEWLINES = re.compile(r"\r\n|\r|\n")  # the generator's line ends (email.generator.NLCRE)
_SUBTYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")  # a media subtype's name (RFC 6838)
# A printable ASCII subject without surrounding space this long or shorter is
# what ``Header(subject).encode()`` returns for it (its lines are 76 long).
_SHORT_SUBJECT = 76


def _plain(value: str) -> bool:
    """Printable ASCII without surrounding space: a header value nothing
    needs to encode."""
    return value.isascii() and value.isprintable() and value == value.strip()


class ShortHeaders(Compat32):
    """The standard library's ``compat32`` policy (Django's), writing the
    headers campaign mail is made of without running them through
    ``email.header.Header`` (a third of the MIME cost of an SMTP send), to
    the same bytes ``compat32`` writes: a value of printable ASCII without
    surrounding space is written as it is when the line fits within
    ``max_line_length``; one that does not fit but is a single word
    (``compat32`` folds only where there is a space: a ``List-Unsubscribe``
    URL) goes whole onto a continuation line, as ``compat32`` puts it. Any other
    header goes the ``compat32`` way."""

    def _as_is(self, name, value) -> str | None:
        if type(value) is not str or not _plain(value):
            return None
        if len(name) + 2 + len(value) <= (self.max_line_length or 1_000_000):
            return f"{name}: {value}{self.linesep}"
        if self.max_line_length == 78 and " " not in value:
            return f"{name}: {self.linesep} {value}{self.linesep}"
        return None

    def fold(self, name, value):
        line = self._as_is(name, value)
        return super().fold(name, value) if line is None else line

    def fold_binary(self, name, value):
        line = self._as_is(name, value)
        return super().fold_binary(name, value) if line is None else line.encode("ascii")


SHORT_HEADERS = ShortHeaders()
_POLICIES = {"\n": SHORT_HEADERS, "\r\n": SHORT_HEADERS.clone(linesep="\r\n")}


def new_boundary() -> str:
    """A random 128-bit MIME boundary: never in a body, so nobody has to
    search the bodies for it (as the standard library does for a boundary of
    its own making)."""
    return f"=_{uuid4().hex}"


def message_bytes(message: EmailMessage, *, linesep: str = "\n") -> bytes:
    """``message.message().as_bytes(linesep=linesep)``, written directly when
    ``message`` has the usual shape (see the module's docstring); its
    multipart boundary is a ``new_boundary()``."""
    encoding = message.encoding or settings.DEFAULT_CHARSET
    parts = _text_parts(message, encoding) if linesep in _POLICIES else None
    if parts is None:
        mime = message.message()
        return mime.as_bytes(linesep=linesep)
    policy = _POLICIES[linesep]
    if not getattr(message, "alternatives", None):
        # The text part alone is the message itself: its headers come first.
        ((part_headers, text),) = parts
        top, headers, body = None, list(part_headers), _lines(text, linesep)
    else:
        boundary = new_boundary()
        top = _multipart_header(message.alternative_subtype, linesep).replace(
            _PLACEHOLDER, boundary.encode("ascii")
        )
        headers = [("MIME-Version", "1.0")]
        body = _multipart_body(parts, boundary, policy, linesep)
    headers.extend(_message_headers(message, encoding))
    out = [policy.fold_binary(name, value) for name, value in headers]
    if top is not None:
        out.insert(0, top)
    out.append(linesep.encode("ascii"))
    out.append(body)
    return b"".join(out)


_PLACEHOLDER = b"=_" + b"0" * 32  # a new_boundary() in length and letters


@functools.lru_cache(maxsize=16)
def _multipart_header(subtype: str, linesep: str) -> bytes:
    """The multipart's Content-Type header as written, with ``_PLACEHOLDER``
    for its boundary: folded once per process (a boundary is all letters and
    digits of one length, so it folds the same whatever it is)."""
    value = f'multipart/{subtype}; boundary="{_PLACEHOLDER.decode()}"'
    return _POLICIES[linesep].fold_binary("Content-Type", value)


def _text_parts(message: EmailMessage, encoding: str) -> list | None:
    """Each part's (headers, body text) as Django's tree would hold them:
    the body (omitted when empty beside alternatives), then each
    alternative; None when the message is not of the usual shape."""
    if encoding != "utf-8" or message.attachments:
        return None
    texts = []
    if message.body or not getattr(message, "alternatives", None):
        texts.append((message.body, message.content_subtype))
    for alternative in getattr(message, "alternatives", ()):
        content, mimetype = alternative
        basetype, _, subtype = mimetype.partition("/")
        if basetype != "text" or not subtype:
            return None
        texts.append((content, subtype))
    parts = []
    for text, subtype in texts:
        if not isinstance(text, str) or not _SUBTYPE.fullmatch(subtype):
            return None  # parameters in a subtype ("html; charset=...") are Django's to merge
        text = str(text)  # a SafeString, as templates render, is a str to MIME
        try:
            encoded = text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: let Django say so
            return None
        parts.append(_text_part(text, encoded, subtype))
    return parts


def _text_part(text: str, encoded: bytes, subtype: str) -> tuple[list, str]:
    """(headers, body) of ``SafeMIMEText(text, subtype, "utf-8")``: 7bit when
    ASCII, quoted-printable when a line is longer than RFC 5322 allows (as
    Django decides), 8bit otherwise. The body keeps its line ends (the
    caller writes them as the line separator)."""
    if _has_long_lines(text):
        cte, body = "quoted-printable", quoprimime.body_encode(encoded.decode("latin1"))
    elif text.isascii():
        cte, body = "7bit", text
    else:
        cte, body = "8bit", encoded.decode("ascii", "surrogateescape")
    headers = [
        ("Content-Type", f'text/{subtype}; charset="utf-8"'),
        ("MIME-Version", "1.0"),
        ("Content-Transfer-Encoding", cte),
    ]
    return headers, body


def _has_long_lines(text: str) -> bool:
    """Django's test: a line longer than RFC 5322 allows, in UTF-8 bytes. No
    character is more than 4 bytes: lines of a quarter of the limit in
    characters need no encoding to tell; an ASCII text's characters are its
    bytes."""
    lines = text.splitlines()
    longest = max(map(len, lines), default=0)
    if longest * 4 <= RFC5322_EMAIL_LINE_LENGTH_LIMIT or text.isascii():
        return longest > RFC5322_EMAIL_LINE_LENGTH_LIMIT
    return any(
        len(line.encode(errors="surrogateescape")) > RFC5322_EMAIL_LINE_LENGTH_LIMIT
        for line in lines
    )


def _multipart_body(parts: list, boundary: str, policy: ShortHeaders, linesep: str) -> bytes:
    """The generator's multipart body: each part's headers, a blank line and
    its body, between boundary lines."""
    out = [f"--{boundary}{linesep}".encode("ascii")]
    for index, (headers, body) in enumerate(parts):
        if index:
            out.append(f"{linesep}--{boundary}{linesep}".encode("ascii"))
        out.extend(policy.fold_binary(name, value) for name, value in headers)
        out.append(linesep.encode("ascii"))
        out.append(_lines(body, linesep))
    out.append(f"{linesep}--{boundary}--{linesep}".encode("ascii"))
    return b"".join(out)


def _lines(body: str, linesep: str) -> bytes:
    """``body`` with the generator's line ends: each of CRLF, CR and LF."""
    if "\r" not in body:
        body = body if linesep == "\n" else body.replace("\n", linesep)
    else:
        body = _NEWLINES.sub(linesep, body)
    return body.encode("ascii", "surrogateescape")


def _message_headers(message: EmailMessage, encoding: str) -> list[tuple[str, str]]:
    """The headers ``EmailMessage.message()`` sets after the MIME ones, in its
    order, each value as its ``__setitem__`` stores it."""
    extra = message.extra_headers
    headers = [
        ("Subject", message.subject),
        ("From", extra.get("From", message.from_email)),
    ]
    for name, values in (("To", message.to), ("Cc", message.cc), ("Reply-To", message.reply_to)):
        if name in extra:
            headers.append((name, extra[name]))
        elif values:
            headers.append((name, ", ".join(str(v) for v in values)))
    names = {key.lower() for key in extra}
    if "date" not in names:
        headers.append(("Date", formatdate(localtime=settings.EMAIL_USE_LOCALTIME)))
    if "message-id" not in names:
        headers.append(("Message-ID", make_msgid(domain=DNS_NAME)))
    headers.extend(
        (name, value)
        for name, value in extra.items()
        if name.lower() not in {"from", "to", "cc", "reply-to"}
    )
    return [_stored(name, value, encoding) for name, value in headers]


def _stored(name: str, value, encoding: str) -> tuple[str, str]:
    """``forbid_multi_line_headers(name, value, encoding)``, which runs every
    ASCII subject through ``Header``: not a short printable one (a rendered
    subject is a SafeString), which it returns unchanged, as a str."""
    if (
        name == "Subject"
        and isinstance(value, str)
        and len(value) <= _SHORT_SUBJECT
        and _plain(value)
    ):
        return name, str(value)
    return forbid_multi_line_headers(name, value, encoding)
