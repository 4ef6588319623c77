"""What a payload may hold, checked in Python before any SQL so that bad input raises
``InvalidPayload`` and leaves the caller's transaction usable: JSON values only, nested at most
``MAX_DEPTH`` levels, and text every supported database stores (no NUL character, which
PostgreSQL refuses, and no lone surrogate, which no UTF-8 database can hold). Results and
errors a handler produces are not refused but made storable: NULs and lone surrogates escaped.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .exceptions import InvalidPayload

# MariaDB's JSON functions refuse documents nested deeper than 32 levels; PostgreSQL and SQLite
# accept more, but a payload must be one every supported database takes.
MAX_DEPTH = 32
_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_SCALARS = (bool, type(None))  # and strings (checked), ints (bounded), finite floats
# Python's JSON encoder refuses integers of more than 4,300 digits (sys.int_info's default limit).
_MAX_INT_BITS = 14_000

TYPE, NUL, SURROGATE, DEPTH, BIG_INT = "type", "nul", "surrogate", "depth", "big-int"


def text_problem(text: str) -> str | None:
    """NUL or SURROGATE if the databases cannot store ``text`` as it is, else None."""
    if "\x00" in text:
        return NUL
    if not text.isascii() and _SURROGATE.search(text):
        return SURROGATE
    return None


def check_json(payload: Any, job_name: str, root: str = "payload") -> None:
    """Raise InvalidPayload naming the first value a payload (or ``root``) cannot hold, with its path."""
    found = first_problem(payload, root)
    if found is None:
        return
    where, value, why = found
    if why == TYPE:
        detail = f"is a {type(value).__name__} ({value!r:.60}), which is not JSON-serialisable"
    elif why == DEPTH:
        detail = f"is nested deeper than {MAX_DEPTH} levels, the most every supported database accepts"
    elif why == BIG_INT:
        detail = "is an integer of more than 4,000 digits, more than JSON encoding allows"
    else:
        what = "a NUL character" if why == NUL else "a lone surrogate (text that is not valid Unicode)"
        detail = f"holds {what} ({value!r:.60}), which the database cannot store"
    raise InvalidPayload(f"{where} of job '{job_name}' {detail}")


def first_problem(value: Any, root: str) -> tuple[str, Any, str] | None:
    """The first value that cannot be stored, where it is (``root['a'][0]``) and why (TYPE,
    NUL, SURROGATE or DEPTH), or None."""
    found = _first_problem(value, 0)
    return None if found is None else (root + "".join(found[0]), found[1], found[2])


def _first_problem(value: Any, depth: int) -> tuple[list[str], Any, str] | None:
    """Runs on every payload enqueued: leaves are checked inline and the path is only built once
    a bad value is found."""
    if isinstance(value, str):
        why = text_problem(value)
        return None if why is None else ([], value, why)
    if isinstance(value, int):
        return ([], value, BIG_INT) if value.bit_length() > _MAX_INT_BITS else None
    if isinstance(value, _JSON_SCALARS):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else ([], value, TYPE)
    if isinstance(value, (dict, list, tuple)):
        if depth >= MAX_DEPTH:
            return ([], value, DEPTH)
        depth += 1
        if isinstance(value, dict):
            for k, item in value.items():
                if not isinstance(k, str):
                    return ([f" key {k!r}"], k, TYPE)
                if (why := text_problem(k)) is not None:
                    return ([f" key {k!r}"], k, why)
                if not isinstance(item, _JSON_SCALARS) and (found := _first_problem(item, depth)):
                    found[0].insert(0, f"[{k!r}]")
                    return found
            return None
        for i, item in enumerate(value):
            if not isinstance(item, _JSON_SCALARS) and (found := _first_problem(item, depth)):
                found[0].insert(0, f"[{i}]")
                return found
        return None
    return ([], value, TYPE)


def storable_text(text: str) -> str:
    """``text`` with NUL characters and lone surrogates escaped (``\\x00``, ``\\udc80``), so that
    an error message or traceback is kept, readable, whatever a handler raised."""
    if text_problem(text) is None:
        return text
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def storable(value: Any) -> Any:
    """A handler's JSON result with every string made storable (see storable_text)."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(k): storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(v) for v in value]
    return value
