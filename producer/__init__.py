"""What a web application imports: depends only on greenstalk and the standard library."""

from .client import EnqueueError, Notifier
from .envelope import Envelope, EnvelopeError, Recipient

__all__ = ["EnqueueError", "Envelope", "EnvelopeError", "Notifier", "Recipient"]
