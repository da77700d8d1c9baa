"""``mime.message_bytes`` writes what Django's tree and the standard
library's generator write, byte for byte, for every message it takes on; it
hands any other message to Django."""

import random
from email.policy import compat32
from unittest import mock

import pytest
from django.core.mail import EmailMessage, EmailMultiAlternatives
from django.core.mail.message import BadHeaderError
from django.utils.safestring import mark_safe

from notifier.sending import mime
from notifier.sending.message import OutboundMessage

DATE = "Tue, 01 Dec 2026 05:24:54 -0000"


def _date(localtime=False):
    return DATE


def _msgid(domain=None):
    return f"<fixed@{domain}>"


def _both(message, linesep="\r\n") -> tuple[bytes, bytes]:
    """Ours, and Django's tree written by the standard library with its own
    policy; both given the same boundary, Date and Message-ID (the parts
    that differ from one call to the next)."""
    boundary = "=_0123456789abcdef0123456789abcdef"
    with (
        mock.patch.multiple(
            mime, new_boundary=lambda: boundary, formatdate=_date, make_msgid=_msgid
        ),
        mock.patch.multiple("django.core.mail.message", formatdate=_date, make_msgid=_msgid),
        mock.patch("notifier.sending.message.new_boundary", lambda: boundary),
    ):
        ours = mime.message_bytes(message, linesep=linesep)
        tree = message.message()
    tree.policy = compat32  # the standard library's own folding, not ShortHeaders
    return ours, tree.as_bytes(linesep=linesep)


def _message(subject, text, html=None, to=("ana@example.com",), headers=None, **kwargs):
    message = OutboundMessage(
        subject=subject,
        body=text,
        from_email=kwargs.pop("from_email", "News <news@example.com>"),
        to=list(to),
        headers={"Message-ID": "<abc@notifier.example>", **(headers or {})},
        **kwargs,
    )
    if html is not None:
        message.attach_alternative(html, "text/html")
    return message


def _html_body_with_amp():
    message = _message("s", "<p>b</p>")
    message.content_subtype = "html"
    message.attach_alternative("<p>⚡</p>", "text/x-amp-html")
    return message


LONG_LINE = "word " * 250  # 1,250 characters on one line: quoted-printable
CASES = {
    "ascii": _message("Spring sale", "Hello\nthere\n", "<p>Hello</p>"),
    "no html": _message("Plain", "Only text, no newline at the end"),
    "empty text beside html": _message("Html only", "", "<p>Just HTML</p>"),
    "empty everything": _message("", ""),
    "non-ascii bodies": _message("Café", "Grüße\r\naus Köln\r\n", "<p>日本語のメール</p>"),
    "non-ascii names": _message(
        "Ünïcode süb",
        "x",
        "y",
        to=["Zoë Ça <zoe@example.com>"],
        from_email="Éditions <e@example.com>",
    ),
    "long ascii line": _message("Long", LONG_LINE, "<p>" + LONG_LINE + "</p>"),
    "long non-ascii line": _message("Long ü", "ü" * 600 + "\n" + "é" * 10, "<p>" + "ß" * 700),
    "four-byte characters": _message("Emoji", "😀" * 300, "<p>" + "😀" * 249 + "</p>"),
    "exactly at the limit": _message("Edge", "a" * 998 + "\n" + "b" * 999, "c" * 998),
    "mixed line ends": _message("Ends", "one\rtwo\r\nthree\nfour\n\n", "\r\n<p>\r</p>\n"),
    "form feed and separators": _message("Seps", "a\x0cb\x1cc\u2028d" + "e" * 997, "f\x85g"),
    "long subject": _message("A subject " * 12, "x", "y"),
    "long unicode subject": _message("Sujet très long " * 8, "x", "y"),
    "long header": _message(
        "s",
        "t",
        "h",
        headers={
            "List-Unsubscribe": "<https://notifier.example.com/u/" + "x" * 90 + ">",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    ),
    "header with spaces to fold": _message(
        "s", "t", headers={"X-Tags": ", ".join(f"tag-{i}" for i in range(40))}
    ),
    "non-ascii header": _message("s", "t", "h", headers={"X-Note": "Grüße " * 20}),
    "padded header": _message("s", "t", headers={"X-Pad": "  spaced  "}),
    "cc reply-to": _message("s", "t", "h", cc=["c@example.com"], reply_to=["Ré <r@example.com>"]),
    "header overrides": _message(
        "s",
        "t",
        "h",
        headers={
            "From": "Other <o@example.com>",
            "To": "Shown <s@example.com>",
            "Cc": "c@example.com",
            "Reply-To": "r@example.com",
        },
    ),
    "own date, no message-id": EmailMultiAlternatives(
        "s", "t", "f@example.com", ["t@example.com"], headers={"Date": DATE}
    ),
    "plain EmailMessage": EmailMessage("s", "body", "f@example.com", ["t@example.com"]),
    "html body, amp alternative": _html_body_with_amp(),
    "trailing spaces": _message("s  ", "line with trailing space \n", " <p> </p> "),
    "dots and From": _message("s", ".\n..\nFrom me\n", ".<p>"),
}


@pytest.mark.parametrize("linesep", ["\r\n", "\n"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_the_bytes_are_djangos(name, linesep):
    ours, django = _both(CASES[name], linesep)
    assert ours == django


def test_random_messages_are_written_as_django_writes_them():
    """Seeded random subjects, names, headers and bodies from an alphabet of
    the awkward: line ends, long lines, non-ASCII, spaces, separators."""
    rng = random.Random(20261201)
    alphabet = ["a", "Z", " ", "\n", "\r\n", "\r", "é", "ß", "日", "😀", ";", ",", "=", ".", "\t"]

    def text(limit):
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(limit)))

    def word(limit):
        return "".join(rng.choice("aZé ;,=.-") for _ in range(rng.randrange(1, limit)))

    for _ in range(300):
        long = rng.random() < 0.2
        body = text(60) + ("x" * rng.randrange(990, 1010) if long else "") + text(30)
        html = None if rng.random() < 0.2 else text(80)
        name = word(30).strip()
        message = _message(
            word(120).strip() or "s",
            body,
            html,
            to=[f'"{name}" <p@example.com>' if name else "p@example.com"],
            headers={"X-Word": word(150).strip() or "w"},
        )
        ours, django = _both(message)
        assert ours == django, (message.subject, message.body, html)


def test_ascii_subjects_are_stored_as_django_stores_them():
    rng = random.Random(1130)
    for _ in range(1000):
        subject = "".join(rng.choice("ab Z;,=.-:") for _ in range(rng.randrange(1, 120)))
        ours, django = _both(_message(subject, "t"))
        assert ours == django, subject


def test_single_word_headers_too_long_for_a_line_are_folded_as_compat32_folds_them():
    """``ShortHeaders`` writes a long URL-like value itself: the same bytes."""
    rng = random.Random(1201)
    letters = "abcXYZ0189:/.-_?=&%<>+~!@#$*()[]'\"{}|^`"
    for _ in range(3000):
        name = "X-" + "n" * rng.randrange(0, 60)
        value = "".join(rng.choice(letters) for _ in range(rng.randrange(1, 300)))
        if rng.random() < 0.3:  # a place to fold at: compat32's way
            at = rng.randrange(len(value))
            value = value[:at] + rng.choice(" ,;") + value[at:] + "z"
        for linesep in ("\n", "\r\n"):
            ours = mime.SHORT_HEADERS.clone(linesep=linesep).fold_binary(name, value)
            assert ours == compat32.clone(linesep=linesep).fold_binary(name, value), (name, value)


def test_a_rendered_message_is_written_without_the_tree():
    """Rendered bodies are SafeStrings: still the usual shape."""
    message = _message(mark_safe("Subject"), mark_safe("text"), mark_safe("<p>html</p>"))
    ours, django = _both(message)
    assert ours == django
    with (
        mock.patch.object(OutboundMessage, "message", side_effect=AssertionError("tree")),
        mock.patch.object(
            mime, "forbid_multi_line_headers", wraps=mime.forbid_multi_line_headers
        ) as stored,
    ):
        mime.message_bytes(message)
    # Nor is its short subject run through ``Header``.
    assert "Subject" not in [call.args[0] for call in stored.call_args_list]


def test_a_message_of_another_shape_goes_djangos_way():
    """Attachments, another charset, a non-text alternative: Django's tree."""
    with_file = _message("s", "t", "h")
    with_file.attach("a.txt", "attached", "text/plain")
    latin = _message("s", "t")
    latin.encoding = "iso-8859-1"
    calendar = _message("s", "t")
    calendar.attach_alternative(b"BEGIN:VCALENDAR", "application/ics")
    with_parameters = _message("s", "t", "h")
    with_parameters.attach_alternative("<p>x</p>", "text/html; charset=iso-8859-1")
    for message in (with_file, latin, calendar, with_parameters):
        with mock.patch.object(type(message), "message", wraps=message.message) as tree:
            ours, django = _both(message)
        assert tree.called
        assert ours == django


def test_a_header_with_a_newline_is_refused_as_django_refuses_it():
    message = _message("s", "t", headers={"X-Evil": "a\r\nBcc: victim@example.com"})
    with pytest.raises(BadHeaderError):
        mime.message_bytes(message)
    with pytest.raises(BadHeaderError):
        mime.message_bytes(_message("subject\nBcc: x@example.com", "t"))
