"""Notifier's delivery engine.

Public API for other code::

    from notifier import send, notify

Both are imported lazily so that ``import notifier`` works before Django's
app registry is ready.
"""

__all__ = ["notify", "send"]


def __getattr__(name):
    if name == "send":
        from notifier.services.transactional import send

        return send
    if name == "notify":
        from notifier.services.notifications import notify

        return notify
    raise AttributeError(name)
