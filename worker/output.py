"""What every ``beanmail`` command shares: its errors (exit status 1 or 2) and how it prints
JSON and counts."""

from __future__ import annotations

import json
import sys
from typing import Any

from .ops import OpsError as CommandError

__all__ = ["CommandError", "UsageError", "print_counts", "print_json"]


class UsageError(CommandError):
    """A command line that could mean something an operator did not intend (exit status 2)."""


def print_json(value: Any) -> None:
    """One JSON document on a line: what every --json prints (a URL's password or a secret
    setting's value, as an error message may repeat them, hidden)."""
    from . import redact

    sys.stdout.write(redact.text(json.dumps(value, ensure_ascii=False, indent=None, default=str)) + "\n")


def print_counts(counts: dict[str, int], as_json: bool) -> None:
    """A run's counts (``bounces fetch``, ``inbound fetch``): ``messages 3, hard 1`` or one JSON line."""
    if as_json:
        print_json(counts)
    else:
        print(", ".join(f"{k} {v}" for k, v in counts.items()))
