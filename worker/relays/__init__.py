"""Relays by priority, with failover, and bulk fed only as fast as each relay drains.

``plan``: which relays each priority uses, in order (from BEANMAIL_SMTP_URL, _URGENT, _BULK).
``pace``: a relay's bulk pace, additive increase / multiplicative decrease on its answers.
``queue``: the relay MTA's queue length from the operator's command, against the high-water mark.
``book``: this process's view of every relay (up, skipped until, pace, queue) and the choices
made from it. ``transport``: the blocking and event-loop senders that try a priority's relays in
order. ``pause``: mail.bulk paused in beanstalkd while bulk is held. ``board``: each process's
view written to the store, for /metrics; ``status``: what `beanmail status` shows of each relay.
Documented in docs/relays.md.
"""
