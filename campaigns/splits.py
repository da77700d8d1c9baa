"""The A/B split: each recipient's bucket in a run, computed in SQL.

A bucket is a number in [0, 10000) from an integer hash of (run, recipient):
the same recipient always lands in the same bucket of a run (so a second
launch or the winner send sees the same split), another run splits anew, and
the buckets are spread evenly whatever the recipients' ids. The test share
of ``s`` % is the buckets below ``s * 100``, cut into equal ranges, one per
variant. The hash is plain integer arithmetic (multiply, shift, xor, mask),
identical on PostgreSQL and SQLite, and small enough never to overflow a
64-bit integer; the audience never enters Python.
"""

from django.db.models import Func, IntegerField

BUCKETS = 10_000
_MASK = 0xFFFFFFFF
# Knuth's multiplicative constant spreads the ids; two rounds of the
# well-known 32-bit integer finaliser (shift, xor, multiply) mix the bits.
_SPREAD = 2654435761
_MIX = 0x45D9F3B


def _xor(vendor: str, a: str, b: str) -> str:
    if vendor == "postgresql":
        return f"({a} # {b})"
    return f"(({a} | {b}) - ({a} & {b}))"  # SQLite has no xor operator


class SplitBucket(Func):
    """The bucket of the recipient id ``expression`` in run ``run_id``."""

    output_field = IntegerField()

    def __init__(self, expression, *, run_id: int):
        super().__init__(expression)
        self.run_id = int(run_id)

    def as_sql(self, compiler, connection, **extra_context):
        column, params = compiler.compile(self.source_expressions[0])
        vendor = connection.vendor
        salt = (self.run_id * 40503 + 12345) & _MASK
        x = f"((({column}) * {_SPREAD} + {salt}) & {_MASK})"
        copies = 1
        for _round in range(2):
            x = f"(({_xor(vendor, x, f'({x} >> 16)')} * {_MIX}) & {_MASK})"
            copies *= 2 if vendor == "postgresql" else 4
        x = f"({_xor(vendor, x, f'({x} >> 16)')} %% {BUCKETS})"  # %% : a literal %
        copies *= 2 if vendor == "postgresql" else 4
        return x, list(params) * copies


def bucket_of(recipient_id: int, *, run_id: int) -> int:
    """The same hash in Python (for tests and single lookups)."""
    x = (recipient_id * _SPREAD + ((run_id * 40503 + 12345) & _MASK)) & _MASK
    for _round in range(2):
        x = ((x ^ (x >> 16)) * _MIX) & _MASK
    return (x ^ (x >> 16)) % BUCKETS


def variant_ranges(*, share: int, count: int) -> list[tuple[int, int]]:
    """The bucket range [low, high) of each of ``count`` variants in a test
    share of ``share`` percent: equal parts of the buckets below share %."""
    top = share * BUCKETS // 100
    return [(i * top // count, (i + 1) * top // count) for i in range(count)]
