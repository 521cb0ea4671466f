"""Digests and quiet hours (docs/digests.md): the sorting stage's second half.

A notification for a recipient in digest mode is *collected* (``collect.Digests.divert``, called
by the sending stage before the claim) instead of sent; ``close.Closer`` (``beanmail digest run``)
turns each recipient's collected items into one ordinary mail job with its own idempotency key
when their period ends; the sending stage renders it from the template's digest files
(``collect.Digests.render``). Quiet hours hold normal and bulk mail in beanstalkd, released with
a delay of its own. ``periods`` holds the calendar arithmetic, ``records`` the store's tables.
"""
