"""What text both engines can hold: the checks on the names rows are keyed by, the cleaning of
free text, and the slicing of long ``IN (...)`` lists."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

KEY_LIMIT = 200  # the longest idempotency key a job may carry (producer/envelope.py refuses longer)


def chunks(values: Sequence[Any], size: int = 500) -> Iterator[Sequence[Any]]:
    """``values`` in slices small enough for any database's limit on query parameters."""
    for i in range(0, len(values), size):
        yield values[i:i + size]


def unstorable(what: str, value: str) -> str | None:
    """Why ``value`` (a key, an address, a template name: text the store keys rows by) cannot go
    into either store as it is, or None. PostgreSQL's text holds no NUL; neither database takes
    a lone surrogate (JSON's ``"\\ud800"`` decodes to one); a key has a length limit."""
    if not isinstance(value, str):
        return f"{what} is a {type(value).__name__}, not text"
    if "\0" in value:
        return f"{what} holds a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{what} holds a lone surrogate (not UTF-8)"
    if what in ("key", "template") and len(value) > KEY_LIMIT:  # a row's name, never a payload
        return f"{what} is longer than {KEY_LIMIT} characters"
    return None


def storable_text(value: str) -> str:
    """Free text (a reason, a reply, a buried body) as both stores hold it: NUL and lone
    surrogates replaced, so a record never fails for what a job or a server said."""
    value = value.replace("\0", "\ufffd")
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
