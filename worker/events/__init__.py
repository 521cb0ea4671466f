"""Delivery events for the application: what happened to each message (sent, bounced,
complained, unsubscribed, failed, replied), queued on the ``events`` tube and delivered as
signed Standard Webhooks by ``beanmail events run`` (docs/events.md)."""
