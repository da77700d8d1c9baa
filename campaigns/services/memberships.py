"""One recipient joining or leaving a contact list (automations, forms).

Bulk membership changes go through the CSV import (``contacts``); these are
the one-at-a-time writes, idempotent: joining twice or leaving a list one is
not on changes nothing.
"""

from campaigns.models import ContactList, ListMembership
from notifier.models import Recipient


def list_membership_add(*, contact_list: ContactList, recipient: Recipient) -> bool:
    """Add ``recipient`` to ``contact_list``; True if they were not on it."""
    _, created = ListMembership.objects.get_or_create(
        contact_list=contact_list, recipient=recipient
    )
    return created


def list_membership_remove(*, contact_list: ContactList, recipient: Recipient) -> bool:
    """Remove ``recipient`` from ``contact_list``; True if they were on it."""
    deleted, _ = ListMembership.objects.filter(
        contact_list=contact_list, recipient=recipient
    ).delete()
    return bool(deleted)
