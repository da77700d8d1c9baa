"""Plain addresses read without a parse (``notifier.sending.addresses``) come
out exactly as Django's ``sanitize_address``, smtplib's ``quoteaddr`` and
Anymail's ``parse_address_list`` give them; every other address goes through
those."""

import pytest
from anymail.utils import parse_address_list
from django.core.mail.message import sanitize_address

from notifier.sending.addresses import plain_address_parts
from notifier.sending.postmark import addresses_parsed
from notifier.sending.smtp import quoted_address, sanitized_recipient


def _addresses() -> list[str]:
    names = [
        "",
        "Reader 5",
        "A",
        "Jo Smith",
        "1 2",
        "x" * 100,
        "Dr. Who",
        "O'Brien",
        "José",
        "Reader  5",
        " lead",
        "trail ",
        "a\tb",
        "Ann <x>",
        '"Quoted"',
        "a,b",
    ]
    locals_ = [
        "u5",
        "first.last",
        "a+tag",
        "o'reilly",
        "w!#$%&'*+/=?^_`{|}~-",
        "a..b",
        ".a",
        "a.",
        'q"x',
        "ü",
        "a b",
        "(c)a",
        "UPPER",
    ]
    domains = [
        "bench.example",
        "EXAMPLE.com",
        "a-b.c",
        "-ab.c",
        "ab-.c",
        "x" * 63 + ".com",
        "x" * 64 + ".com",
        "bücher.de",
        "localhost",
        "1.2.3.4",
        "[1.2.3.4]",
        "a..b",
        "a.b.",
        "",
        "a_b.c",
    ]
    out = []
    for local in locals_:
        for domain in domains:
            bare = f"{local}@{domain}"
            out += [bare, f"<{bare}>", f"{bare}>", f" {bare}", f"{bare}\n"]
            out += [f"{name} <{bare}>" for name in names if name]
    extra = [
        "Reader 5 <u5@bench.example",
        "no-at-sign",
        "a@b@c.d",
        "Reader 5 u5@b.c",
        "",
        "a@b.c, d@e.f",
        "x" * 310 + "@b.c",
    ]
    return [*out, *extra]


def _outcome(call, *args):
    try:
        return ("ok", call(*args))
    except Exception as exc:
        return ("raises", type(exc))


def test_the_corpus_has_plain_addresses_and_others():
    plain = [a for a in _addresses() if plain_address_parts(a) is not None]
    assert len(plain) > 150
    assert len(_addresses()) - len(plain) > 1000
    assert plain_address_parts("Reader 5 <u5@bench.example>") == (
        "Reader 5",
        "u5",
        "bench.example",
    )
    assert plain_address_parts("u5@bench.example") == ("", "u5", "bench.example")


def test_smtp_recipients_come_out_as_django_sanitizes_them():
    for address in _addresses():
        assert _outcome(sanitized_recipient, address, "utf-8") == _outcome(
            sanitize_address, address, "utf-8"
        ), address
    assert sanitized_recipient(("Ann", "ann@example.com"), "utf-8") == "Ann <ann@example.com>"


def test_smtp_envelope_addresses_come_out_as_smtplib_quotes_them():
    import smtplib

    for address in _addresses():
        assert _outcome(quoted_address, address) == _outcome(smtplib.quoteaddr, address), address
    assert quoted_address("Reader 5 <u5@bench.example>") == "<u5@bench.example>"


def _parsed(call, value):
    kind, result = _outcome(call, value)
    if kind == "raises":
        return kind, result
    return kind, [(a.display_name, a.username, a.domain, a.addr_spec, a.address) for a in result]


@pytest.mark.parametrize("as_list", [False, True])
def test_esp_addresses_come_out_as_anymail_parses_them(as_list):
    for address in _addresses():
        value = [address] if as_list else address
        assert _parsed(addresses_parsed, value) == _parsed(parse_address_list, value), address
    pair = ["Reader 5 <u5@bench.example>", "Jo Smith <jo@example.com>"]
    assert _parsed(addresses_parsed, pair) == _parsed(parse_address_list, pair)
    assert addresses_parsed([]) == parse_address_list([]) == []
