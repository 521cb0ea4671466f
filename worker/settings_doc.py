"""What each setting means, for `beanmail settings` and docs/settings.md (made from this, and
tested to be: a setting without a line here fails the suite)."""

from __future__ import annotations

import dataclasses
from typing import Any

from . import redact
from .settings import Settings, _label

HELP: dict[str, str] = {
    "beanstalk_url": "`beanstalk://host:port` or `unix:///path`; several, comma-separated, for a fleet (producers spread by key and fail over, workers reserve from each)",
    "templates": "the templates folder (`<name>/subject.txt`, `body.txt`, optional `body.html`)",
    "transport": "`smtp` (a relay) or `mx` (straight to the recipient domain's MX hosts)",
    "smtp_url": "the relay: `smtp://user:pass@host:port?starttls=required|opportunistic|off`, or `smtps://…`; several, comma-separated, are tried in order (a dead one skipped for `BEANMAIL_RELAY_RETRY_AFTER`); normal mail's relays, and every priority's fallback",
    "smtp_url_urgent": "urgent mail's own relay(s), comma-separated, tried before `BEANMAIL_SMTP_URL`'s (unset: urgent mail uses those)",
    "smtp_url_bulk": "bulk mail's own relay(s), comma-separated, tried before `BEANMAIL_SMTP_URL`'s (unset: bulk mail uses those)",
    "relay_retry_after": "seconds a relay that refused the connection, timed out or answered 421 is skipped (the next one in its list takes the mail), then tried again",
    "relay_queue_command": "a shell command printing the relay MTA's queue length: one number (`postqueue -j | wc -l`) or `postqueue -j`'s JSON lines, counted; run with `BEANMAIL_RELAY_HOST`/`BEANMAIL_RELAY_PORT` set, for each relay bulk mail uses; a failing command holds bulk",
    "relay_queue_high": "the relay queue's high-water mark: at or above it bulk mail is held (released after `BEANMAIL_RELAY_HOLD_DELAY`, no retry spent), urgent and normal go on; needs the command",
    "relay_queue_interval": "seconds between runs of the queue command, per relay and worker process",
    "relay_hold_delay": "seconds a bulk job held at its relay (queue at the mark) waits in beanstalkd before it is tried again; no retry spent",
    "relay_pace_max": "bulk messages/s per relay and worker process at most: where the relay's AIMD pace starts and what additive increase stops at",
    "relay_pace_min": "the bulk pace multiplicative decreases stop at, messages/s",
    "relay_pace_step": "additive increase: messages/s the bulk pace gains for each second of clean sending",
    "relay_latency_target": "seconds the relay's replies may take beyond its own best (its baseline over 10 minutes) before bulk is slowed down, as a 4xx slows it",
    "smtp_timeout": "seconds each SMTP step may take",
    "smtp_data_timeout": "seconds the reply to the end of data may take (RFC 5321: 10 minutes); the job and its claim are kept alive meanwhile",
    "in_doubt_delay": "a message sent without a final reply (or whose worker died after its end of data) is retried only this many seconds later (it may have arrived)",
    "greylist_delay": "seconds before a greylisted recipient (`451 4.7.1 … greylisted`, `450 4.2.0 Greylisted`) is tried again, instead of the exponential backoff; it counts as an attempt",
    "smtp_cafile": "CA bundle to verify the relay's certificate (default: the system's)",
    "from_addr": "the From header and envelope sender (`Name <address>`)",
    "helo_name": "the EHLO name (default: the host name)",
    "store": "the delivery store: an SQLite file, or `postgresql://…` for a fleet",
    "secret": "jobs must carry a signature with this key; a comma-separated list rotates keys: the first signs, all verify",
    "spool": "the producers' spool file; every worker start flushes it to beanstalkd",
    "dns": "`ip[:port]` of the DNS server for MX lookups (default: the system's resolver)",
    "dns_timeout": "seconds one DNS lookup may take",
    "mx_port": "the SMTP port of MX hosts",
    "mx_connections_per_domain": "concurrent and kept-alive connections per recipient domain, per worker process",
    "mx_fleet_connections_per_domain": "open connections per recipient domain for the whole fleet, counted in the store; 0 is no such cap (an idle kept-alive connection stops counting after 300 s)",
    "rate_default": "messages/s per recipient domain, shared by every worker on the store; 0 is no limit",
    "rate_limits": "per-domain rates: `gmail.com=5,example.org=0.5` (a TOML table in beanmail.toml)",
    "tubes": "the tubes a worker watches (`--tubes`); `mailout` belongs to `beanmail fanout`",
    "ttr": "seconds a reserved job is a worker's before beanstalkd gives it out again; must exceed the SMTP timeout (the worker touches it through long sends)",
    "max_attempts": "deferrals (and in-doubt retries) before a job is buried as exhausted",
    "backoff_base": "retry delay: base × 2^(attempt−1) seconds, jittered to [d/2, d]",
    "backoff_max": "the longest retry delay, seconds",
    "concurrency": "deliveries in flight per worker process and beanstalkd server: SMTP sessions on one event loop through a relay, loops (threads) for direct MX; raise it for slow receivers (250 for 1 s ones); 0 takes `BEANMAIL_THREADS`",
    "threads": "the older name of `BEANMAIL_CONCURRENCY`, still read",
    "batch": "jobs reserved in one round trip to beanstalkd, claimed in one store transaction and recorded in one; a worker killed with `-9` mid-batch may send up to this many again (1: at most one)",
    "reserve_timeout": "seconds one reserve waits before the loop looks around (stop requests, reloads)",
    "host_name": "this host's name in claims and the worker registry (default: the machine's; set it where hosts share one)",
    "heartbeat": "seconds between a worker's registry heartbeats (a disable is noticed within one)",
    "lost_after": "a worker silent this long is marked lost and its claims are released (until then no other worker takes them over, even past their lease)",
    "urgent_max_age": "`beanmail status` and `/healthz` turn unhealthy when the oldest urgent job waits longer (seconds)",
    "beanstalk_timeout": "seconds a beanstalkd reply may take beyond the reserve timeout",
    "mask_addresses": "logs and the console show `z***@example.com`, in keys, replies and reasons too",
    "log_format": "`json` (one event per line) or `console`",
    "unsubscribe_url": "one-click unsubscribe (RFC 8058) for bulk mail: where `producer.unsubscribe.UnsubscribeApp` is mounted",
    "unsubscribe_mailto": "an address for mailto: unsubscribe requests",
    "unsubscribe_secret": "signs unsubscribe tokens (default: the secret); a comma-separated list rotates",
    "unsubscribe_days": "how long an unsubscribe link works",
    "list_id": "List-Id of bulk mail (default `<template.from-domain>`)",
    "supervisor_url": "supervisord's control socket, for `status`, the console and `workers enable`",
    "web_listen": "`beanmail web`'s `HOST:PORT`; an address other than loopback needs a password",
    "web_password": "HTTP basic auth for every console page but `/healthz`",
    "web_hosts": "names the console answers to beside `127.0.0.1`, `localhost` and `[::1]` (its `Host` header), comma-separated: `NAME` or `NAME:PORT`",
    "web_timeout": "seconds a console connection may stay silent, or take to send a whole request, before it is closed",
    "entities": "entity resolvers, `[beanmail.entities.NAME]` tables: `database` (an SQLite file, `postgresql://…` or `mysql://user:password@host:port/db` with the `mysql` extra, PyMySQL; read-only sessions, one per worker thread) + `sql` naming `:id` (and `:recipient`), with an optional `access` query (no row: not visible to this recipient, the delivery skipped); or `callable = \"module:function\"` (f(id) or f(id, recipient) → mapping or None, raising `worker.entities.NotVisible`); TOML only",
    "dkim_key": "PEM file(s) of DKIM keys (RSA or Ed25519), comma-separated (a TOML list); each adds its own signature to every message whose From is in the signing domain: RSA beside Ed25519, or an old and a new key during a rotation (at most 4)",
    "dkim_selector": "the selector of each key, in the same order (`beanmail dkim keygen` prints its DNS record)",
    "dkim_domain": "the signing domain (default: the From domain)",
    "dkim_canonicalization": "`header/body`, each `relaxed` or `simple`",
    "return_path": "`bounces@example.org`: each message's envelope sender becomes `bounces+TOKEN@example.org`, the token signed",
    "return_path_secret": "signs VERP tokens (default: the secret)",
    "feedback_id": "the sender id that ends Gmail's Feedback-ID header (default: the From domain)",
    "bounce_mailbox": "`imaps://user:pass@host/INBOX` for `beanmail bounces fetch`",
    "soft_bounce_limit": "soft bounces of one address within the window that suppress it",
    "soft_bounce_window": "seconds the soft bounces are counted over",
    "soft_suppression_days": "days a soft-bounce suppression lasts; urgent mail still goes meanwhile",
    "brake_window": "the last N bulk deliveries the brake judges; 0 turns the brake off",
    "brake_min_sends": "fewer bulk deliveries than this in the window are not judged",
    "brake_bounce_rate": "bounce rate over the window that pauses bulk mail",
    "brake_complaint_rate": "complaint rate over the window that pauses bulk mail",
    "relay_provider": "`sendgrid`, `postmark`, `mailgun` or `ses`: adds the header that carries the VERP token into the provider's events",
    "ses_topic_arns": "SNS topic ARNs (comma-separated) whose notifications the webhook accepts",
    "sendgrid_webhook_key": "SendGrid Event Webhook verification key (base64 DER, ECDSA P-256)",
    "postmark_webhook_password": "basic auth password on the Postmark webhook URL",
    "mailgun_signing_key": "Mailgun HTTP webhook signing key",
    "digest_hour": "the local hour daily and weekly digests go",
    "digest_weekday": "the day weekly digests go",
    "digest_timezone": "the time zone of recipients whose preferences name none",
    "digest_group": "`template`: one digest per recipient and template; `recipient`: one across templates",
    "digest_max_items": "a digest shows the newest N items and counts the rest",
    "digest_interval": "seconds between `beanmail digest run`'s looks for due periods",
    "quiet_hours": "`22:00-07:00`: normal and bulk mail held in the recipient's time zone (urgent never)",
    "quiet_recheck": "a held job comes back at least this often (a changed preference)",
    "events_url": "where `beanmail events run` POSTs delivery events (docs/events.md); unset: no event is queued",
    "events_secret": "`whsec_` + base64 of 24-64 random bytes: signs events (Standard Webhooks); a comma-separated list rotates: each signs, the header carries every signature",
    "events_types": "comma-separated event types to deliver (`message.sent`, `message.bounced`, `message.complained`, `message.unsubscribed`, `message.failed`, `message.replied`); unset: all",
    "events_tube": "the beanstalkd tube events wait on",
    "events_max_age": "seconds an event is retried while the endpoint is down or answers 5xx/408/429, then it is buried with the last reason",
    "events_backoff_base": "event retry delay: base × 2^(attempt−1) seconds, jittered to [d/2, d] (or the endpoint's Retry-After)",
    "events_backoff_max": "the longest event retry delay, seconds",
    "events_timeout": "seconds one event's HTTP request may take",
    "events_connections": "kept-alive HTTP connections (requests in flight) of one `beanmail events run`",
    "events_spool": "events beanstalkd could not take are appended here; `beanmail events run` moves them to the tube",
    "reply_domain": "`replies.example.org`: `notify(..., reply=True)` mail gets `Reply-To: reply+TOKEN@` there; `beanmail inbound` reads the replies",
    "reply_secret": "signs reply addresses (default: the secret); a comma-separated list rotates: the first signs, all verify",
    "reply_ttl": "seconds a reply address is accepted (30 days)",
    "reply_mailbox": "`imaps://user:pass@host/INBOX` (`?move=Folder`, `?cafile=PATH`) for `beanmail inbound fetch`",
    "reply_authserv_id": "comma-separated authserv-ids of your receiving MTA (`mx.replies.example.org`): only its `Authentication-Results` header gives a reply's DKIM/DMARC/SPF result; unset: the topmost one",
    "sendgrid_inbound_key": "SendGrid Inbound Parse security policy's public key (base64 DER, ECDSA P-256); unset: `/inbound/sendgrid` refuses every request",
}


def rows(current: Settings | None = None) -> list[dict[str, Any]]:
    defaults = Settings()
    out = []
    for f in dataclasses.fields(Settings):
        default = getattr(defaults, f.name)
        row = {"variable": f"BEANMAIL_{_label(f.name)}" if f.name != "entities" else "",
               "toml": _label(f.name).lower(), "default": _show(default), "meaning": HELP.get(f.name, "")}
        if current is not None:
            # a secret setting reads (set); a URL's password, or a secret inside any other value, ***
            row["value"] = redact.text(_show(getattr(current, f.name), secret=redact.is_secret_setting(f.name)))
        out.append(row)
    return out


def _show(value: Any, secret: bool = False) -> str:
    if secret and value:
        return "(set)"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def markdown() -> str:
    lines = ["# Settings", "",
             "Every setting, from `beanmail.toml` (keys under `[beanmail]`, or the file `BEANMAIL_CONFIG` names)",
             "with `BEANMAIL_*` environment variables on top. A bad value stops a program at start naming the",
             "setting (exit status 78); a `BEANMAIL_*` variable that names no setting is a warning naming the",
             "closest one. Paths are relative to the folder the program runs in. `beanmail settings` prints this",
             "table with the values in force (secrets shown as `(set)`, a password inside a URL as `***`). This page is made by",
             "`python -m worker.settings_doc` and tested to match the code.", "",
             "| variable | TOML key | default | meaning |", "| --- | --- | --- | --- |"]
    for r in rows():
        default = f"`{r['default']}`" if r["default"] else "none"
        variable = f"`{r['variable']}`" if r["variable"] else "(TOML only)"
        lines.append(f"| {variable} | `{r['toml']}` | {default} | {r['meaning'].replace('|', chr(92) + '|')} |")
    lines += ["", "Not settings of the worker but read beside them: `BEANMAIL_CONFIG` (the TOML file) and, by the",
              "producer's `Notifier` in a web app, `BEANMAIL_BEANSTALK_URL`, `BEANMAIL_SECRET`, `BEANMAIL_SPOOL`,",
              "`BEANMAIL_STORE` when its arguments leave them out.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(), end="")
