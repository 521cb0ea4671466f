"""Closing the delivery loop: VERP return paths, bounce and complaint intake (an MTA's pipe, an
IMAP mailbox, provider webhooks), what a bounce does to the delivery log and the suppression
list, and the brake on bulk mail. See docs/feedback.md."""
