"""Every owner's migrations, gathered by number into the one schema a store is migrated to.

Numbers by owner: 1-9 the core (ledger 1, 3; suppression 1, 14; burials 1; rate slots 2;
blobs 3), 10-19 feedback, 20-29 the console, 30-39 digests, 40-49 the worker registry and MX
slots, 60-69 delivery events. Gaps are fine; each number runs once, in one transaction, its
owners' parts in the order below (a store made before the split got the same statements).
"""

from __future__ import annotations

from typing import Mapping

from . import blobs, burials, console, digests, events, feedback, ledger, mx_slots, rate_slots, suppression, workers

OWNERS = (ledger, suppression, burials, rate_slots, blobs, feedback, console, digests, workers, mx_slots, events)


def gather(parts: tuple[Mapping[int, str], ...]) -> dict[int, str]:
    """One migration per number: the owners' statements for it, joined."""
    out: dict[int, list[str]] = {}
    for migrations in parts:
        for version, sql in migrations.items():
            out.setdefault(version, []).append(sql.strip().rstrip(";"))
    return {v: ";\n".join(out[v]) for v in sorted(out)}


MIGRATIONS: dict[int, str] = gather(tuple(owner.MIGRATIONS for owner in OWNERS))
