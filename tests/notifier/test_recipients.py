import pytest

from notifier.errors import InvalidAddress
from notifier.services.recipients import normalize_email


def test_normalises_case_and_idna():
    assert normalize_email("  Ann@Example.COM ") == "ann@example.com"
    assert normalize_email("józef@bücher.de") == "józef@bücher.de"


@pytest.mark.parametrize(
    "bad", ["", "   ", "no-at-sign", "a@", "@b.com", "a b@c.com", "x" * 250 + "@e.com", None]
)
def test_invalid_addresses_raise_a_clear_error(bad):
    with pytest.raises(InvalidAddress):
        normalize_email(bad)
