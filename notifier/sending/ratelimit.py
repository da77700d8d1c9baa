"""A global rate limit per transport, shared by every worker through Redis.

Each caller reserves the next free slot (``limits.slot_reserve``: a
GCRA-style "theoretical arrival time" kept in one key) and sleeps until it.
The clock is Redis's own, so workers on different hosts agree.
"""

import time

from notifier.sending.limits import slot_reserve

_ALWAYS = 1e9  # a transport's messages always take their slot, however far


def rate_limit_wait(*, transport: str, per_second: float, messages: int = 1) -> float:
    """Block until this process may send ``messages`` (one request); return
    seconds waited. A batch reserves its messages' slots together (one slot
    ``messages`` times as long), so the rate holds over time."""
    if not per_second or per_second <= 0:
        return 0.0
    wait = slot_reserve(
        f"notifier:rate:{transport}", per_second=per_second / messages, max_wait=_ALWAYS
    )
    if wait > 0:
        time.sleep(wait)
    return wait
