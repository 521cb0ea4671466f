"""What a web application imports: depends only on greenstalk and the standard library."""

__version__ = "0.3.0"  # the one place the version is written: setup.py and the worker registry read it
DISTRIBUTION = "beanmail"  # the worker checks this: another distribution's `producer` may shadow ours

from .client import BlobUnavailable, EnqueueError, JobTooBig, Notifier, Unreachable
from .envelope import Envelope, EnvelopeError, Recipient

__all__ = ["BlobUnavailable", "EnqueueError", "Envelope", "EnvelopeError", "JobTooBig", "Notifier", "Recipient",
           "Unreachable"]
