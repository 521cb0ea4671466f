"""The worker's view of the one beanstalkd adapter (``producer.beanstalk``: the producer and
the worker share it, and only it speaks beyond greenstalk's public API)."""

from producer.beanstalk import CONNECTION_ERRORS, connect, delete_many, reserve_batch, split_urls

__all__ = ["CONNECTION_ERRORS", "connect", "delete_many", "reserve_batch", "split_urls"]
