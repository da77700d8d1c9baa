"""A/B statistics: which variant leads, and whether the lead is meaningful.

A one-sided two-proportion z-test (pooled standard error): the confidence
that the leader's rate is truly higher than the other's is the normal
distribution's value at z, with ``math.erf``. A lead is meaningful at 95 %
confidence, and only with at least ``MIN_SAMPLE`` messages sent per variant
(below that the normal approximation says little).
"""

import math
from dataclasses import dataclass

MEANINGFUL = 0.95
MIN_SAMPLE = 30


@dataclass(frozen=True)
class Comparison:
    leader: str
    other: str
    confidence: float | None  # None: too few messages to say
    tied: bool

    @property
    def meaningful(self) -> bool:
        return self.confidence is not None and self.confidence >= MEANINGFUL and not self.tied


def higher_confidence(x1: int, n1: int, x2: int, n2: int) -> float | None:
    """Confidence (0-1) that rate x1/n1 is truly higher than x2/n2; None when
    either sample is empty."""
    if n1 <= 0 or n2 <= 0:
        return None
    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.5
    z = (p1 - p2) / se
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def compare(a: tuple[str, int, int], b: tuple[str, int, int]) -> Comparison:
    """Compare (label, successes, sent) of two variants: the leader first
    (the earlier label on a tie)."""
    (la, xa, na), (lb, xb, nb) = a, b
    rate_a = xa / na if na else 0.0
    rate_b = xb / nb if nb else 0.0
    if rate_b > rate_a:
        (la, xa, na), (lb, xb, nb) = (lb, xb, nb), (la, xa, na)
    tied = rate_a == rate_b
    if min(na, nb) < MIN_SAMPLE:
        return Comparison(leader=la, other=lb, confidence=None, tied=tied)
    return Comparison(leader=la, other=lb, confidence=higher_confidence(xa, na, xb, nb), tied=tied)


def percent(confidence: float) -> int:
    """Shown rounded down, at most 99 (never "100 % confidence")."""
    return min(99, math.floor(confidence * 100))


def comparison_in_words(comparison: Comparison, *, rate_name: str) -> str:
    """ "B's open rate is higher than A's with 97 % confidence", or why not yet."""
    c = comparison
    if c.confidence is None:
        return (
            f"{c.leader}'s and {c.other}'s {rate_name}s: not yet meaningful (fewer than "
            f"{MIN_SAMPLE} messages sent to one of them)."
        )
    if c.tied:
        return f"{c.leader} and {c.other} have the same {rate_name} so far: not yet meaningful."
    if c.meaningful:
        return (
            f"{c.leader}'s {rate_name} is higher than {c.other}'s "
            f"with {percent(c.confidence)} % confidence."
        )
    return (
        f"{c.leader}'s {rate_name} is higher than {c.other}'s, but not yet meaningful "
        f"({percent(c.confidence)} % confidence; {percent(MEANINGFUL)} % is needed)."
    )
