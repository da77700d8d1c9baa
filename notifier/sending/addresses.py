"""Plain email addresses, recognised without a full RFC 5322 parse.

Django's ``sanitize_address`` and Anymail's ``parse_address_list`` run every
address through the standard library's header parser: per message, more CPU
than rendering it. Most addresses are plain: an optional name of ASCII words
(letters and digits, one space between) and, in angle brackets after a
name, a dot-atom local part at an ASCII host name (labels of at most 63
letters, digits and inner hyphens). For these the parts are read off the
string; both libraries would give the same result (tested against them).
Any other address goes through the library.
"""

import re

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
PLAIN_ADDRESS = re.compile(
    rf"(?:([A-Za-z0-9]+(?: [A-Za-z0-9]+)*) <)?"
    rf"({_ATEXT}(?:\.{_ATEXT})*)@({_LABEL}(?:\.{_LABEL})*)(?(1)>)"
)
MAX_LENGTH = 320


def plain_address_parts(address) -> tuple[str, str, str] | None:
    """(display name, local part, domain) of a plain address; None for any
    other value (a name with punctuation, a quoted or non-ASCII part...)."""
    if type(address) is not str or len(address) > MAX_LENGTH:
        return None
    match = PLAIN_ADDRESS.fullmatch(address)
    if match is None:
        return None
    name, local, domain = match.groups()
    return name or "", local, domain
