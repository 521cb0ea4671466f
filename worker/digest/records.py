"""The digest records as the digest stage imports them; the tables, their migrations and every
statement live with the store's other owners in worker/storage/digests.py."""

from __future__ import annotations

from producer.prefs import Preferences

from ..storage.digests import Batch, DigestRecords

__all__ = ["Batch", "DigestRecords", "Preferences"]
