"""What a web application imports: depends only on greenstalk, idna and the standard library."""

__version__ = "0.3.0"  # the one place the version is written: setup.py and the worker registry read it
DISTRIBUTION = "beanmail"  # the worker checks this: another distribution's `producer` may shadow ours

from .addresses import AddressError
from .client import BlobUnavailable, EnqueueError, JobTooBig, Notifier, Unreachable
from .envelope import Envelope, EnvelopeError, Recipient

__all__ = ["AddressError", "BlobUnavailable", "EnqueueError", "Envelope", "EnvelopeError", "JobTooBig", "Notifier", "Recipient",
           "Unreachable"]
