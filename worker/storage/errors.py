"""The two ways the store fails that are not a bug in our SQL: it is away, or it is not ours."""

from __future__ import annotations

from ..outcomes import Outage


class StoreUnavailable(Outage):
    """The store cannot be reached or is locked past its timeout: retry the job later."""


class StoreCorrupt(Exception):
    """The store's file is not a beanmail store (damaged, or another program's file): a person
    must look; commands exit 78 with this one line."""
