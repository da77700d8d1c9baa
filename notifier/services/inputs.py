"""Whether caller data can be stored as it is: the checks PostgreSQL (and
JSON) would otherwise make later, as a database error instead of a clear
message.

PostgreSQL refuses NUL in text and in JSON strings, JSON has no NaN or
Infinity, a lone surrogate cannot be encoded as UTF-8, and data nested
deeper than any template reads is only a way to exhaust the stack.
"""

import math

MAX_DEPTH = 32


def storable_problem(value: object, *, field: str = "") -> tuple[str, str] | None:
    """The first part of ``value`` that cannot be stored, as ``(field, reason)``;
    None when all of it can. ``field`` is the dotted path of that part.

    Walks iteratively, so no nesting depth can exhaust the stack here.
    """
    stack: list[tuple[object, str, int]] = [(value, field, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            problem = _text_problem(item)
            if problem:
                return path or "(value)", problem
        elif isinstance(item, bool | int | None):
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                return path or "(value)", "Numbers must be finite (no NaN or Infinity)."
        elif isinstance(item, dict | list | tuple):
            if depth >= MAX_DEPTH:
                return path or "(value)", f"Nested more than {MAX_DEPTH} levels deep."
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            for key, child in pairs:
                child_path = f"{path}.{key}" if path else str(key)
                if isinstance(key, str):
                    problem = _text_problem(key)
                    if problem:
                        return child_path, f"Key: {problem}"
                stack.append((child, child_path, depth + 1))
    return None


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "Text must not contain NUL (\\u0000) characters."
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "Text must be valid Unicode (no lone surrogates)."
    return None
