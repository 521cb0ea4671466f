"""What a web application imports: depends only on greenstalk and the standard library."""

DISTRIBUTION = "beanmail"  # the worker checks this: another distribution's `producer` may shadow ours

from .client import BlobUnavailable, EnqueueError, JobTooBig, Notifier, Unreachable
from .envelope import Envelope, EnvelopeError, Recipient

__all__ = ["BlobUnavailable", "EnqueueError", "Envelope", "EnvelopeError", "JobTooBig", "Notifier", "Recipient",
           "Unreachable"]
