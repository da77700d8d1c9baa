"""Log configuration and the per-send log context.

``log_context(delivery_id=..., run_id=...)`` binds ids for the code it wraps;
``LogContextFilter`` (on every handler) copies them onto each record, so every
line logged while a message is being sent names its delivery and run, in the
plain format as ``[delivery_id=.. run_id=..]`` and in the JSON format as
fields.
"""

import contextlib
import contextvars
import logging
from collections.abc import Iterator, Mapping
from types import MappingProxyType

# Immutable default; log_context() always sets a new dict, never mutates one.
_context: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar(
    "notifier_log_context", default=MappingProxyType({})
)


@contextlib.contextmanager
def log_context(**ids: object) -> Iterator[None]:
    """Add ``ids`` (None values are left out) to every log line inside the block."""
    merged = {**_context.get(), **{k: v for k, v in ids.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def current_log_context() -> dict[str, object]:
    return dict(_context.get())


class LogContextFilter(logging.Filter):
    """Copy the bound ids onto the record (fields for JSON, ``context`` for text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = _context.get()
        for key, value in ids.items():
            setattr(record, key, value)
        record.context = " [" + " ".join(f"{k}={v}" for k, v in ids.items()) + "]" if ids else ""
        return True


def build_logging(*, fmt: str, level: str) -> dict:
    """The ``LOGGING`` dict: ``fmt`` is ``plain`` (development) or ``json``."""
    if fmt not in ("plain", "json"):
        raise ValueError(f"LOG_FORMAT must be 'plain' or 'json', not {fmt!r}.")
    formatters = {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s%(context)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            # ``context`` is the plain format's rendering of the ids; JSON has them as fields.
            "reserved_attrs": [*_RESERVED_ATTRS, "context"],
        },
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"log_context": {"()": "config.logging.LogContextFilter"}},
        "formatters": formatters,
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": fmt,
                "filters": ["log_context"],
            }
        },
        "root": {"handlers": ["console"], "level": level},
    }


def _reserved_attrs() -> list[str]:
    from pythonjsonlogger.core import RESERVED_ATTRS

    return list(RESERVED_ATTRS)


_RESERVED_ATTRS = _reserved_attrs()
