"""One parser for every report that comes back: a DSN (RFC 3464), an ARF complaint report
(RFC 5965), an Amazon SES notification sent as mail, or a bounce in one of the older free forms
(qmail, Exim, OpenSMTPD, Yahoo, Notes, ...): those are read from the notification's own text,
each recipient with the lines that speak of it, flufl.bounce's detectors as a second opinion.

It reads; it decides nothing about the store. What it finds: each failed recipient with its
own action, status, diagnostic and reason (``classify.py``), the complaint's feedback type, and
every address that may be our VERP return path (the DSN's recipient, ARF's Original-Mail-From,
the enclosed Return-Path). Hostile input (a MIME bomb, NULs, any charset, a truncated message)
gives an ``unknown`` report with a ``note`` saying why, never an exception.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from email import message_from_bytes, policy
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses

from flufl.bounce import all_failures

from .classify import classify, effect_of, refused_by_rule, state_in_notice
from .reading import MAX_PARTS
from .reading import (STATUS_IN_TEXT as _STATUS_IN_TEXT, VALID as _VALID, action_of as _action, addr as _addr, decoded as _decoded, field_blocks as _field_blocks, fields as _fields, header as _header, headers_of as _headers_of, notification as _notification, parts as _parts, repaired as _repaired, status_of as _status_of, plain as _text)

COMPLAINT_TYPES = ("abuse", "fraud", "virus", "other")  # not-spam and auth-failure are no complaint
MAX_PARSE = 1024 * 1024  # a bounce's head: what carries the report (the original message may follow whole)
MAX_BOUNDARIES = 64  # multipart boundaries declared: each can nest one level; real reports have a few
MAX_DETECT = 64 * 1024  # what flufl.bounce's detectors read
MAX_RECIPIENTS = 100  # per report: a bounce naming more is read for its first hundred

_REPLY_IN_TEXT = re.compile(r"(?<![\d.-])([45]\d\d)[ -]")  # a failure's reply code
_ADDRESS = re.compile(r"(?:\"[^\"\n@]+\"|(?<![\w/&=%.+'-])[\w.+'=%-]+)@[\w-]+(?:\.[\w-]+)+", re.A)
_NOT_RECIPIENT_LINE = re.compile(r"^\s*(from|sender|return-path|reply-to|message-id|envelope-from|errors-to|"
                                 r"in-reply-to|references|reporting-mta|received|x-[\w-]+|by|id|for)\b\s*:?|"
                                 r"message-id|\bsent by\b|\bfrom:", re.I)
_SENDER_INTRO = re.compile(r"(sent by|message from|sender)\s*:?\s*$", re.I)
_QUOTED_HEADER = re.compile(r"^\s*(to|cc|bcc|subject|date)\s*:", re.I)
_DAEMON = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|maildaemon|mailer_daemon|nobody|noreply|no-reply"
                     r"|root|bounce[s]?|double-bounce)$", re.I)
_BOUNCE_SENDER = re.compile(r"mailer-daemon|post_?master|mail delivery|mailer_daemon|maildaemon|mail administrator"
                            r"|delivery subsystem|nobody@|bounce", re.I)
_BOUNCE_SUBJECT = re.compile(r"undeliver|undelivered|not (be )?delivered|delivery (status|fail|notification|problem"
                             r"|has failed|report)|returned mail|failure notice|mail (system )?error|non[- ]?deliver|"
                             r"delivery failure|failed|returned to sender|could not send|rejected|error|bounce|"
                             r"unzustellbar|nondeliverable|warning: could not|message status|problem delivering|"
                             r"notification|mail delivery", re.I)
_AUTO_REPLY = re.compile(r"out of (the )?office|auto(matic|matische)? ?(reply|response|antwort)|vacation|abwesen"
                         r"|away from|autoreply|^auto:", re.I)


_PASSING = ("mailbox-full", "message-too-big", "expired", "suspended", "system-error", "network-error")


@dataclass(frozen=True)
class Failure:
    address: str
    action: str  # failed | delayed | delivered | relayed | expanded
    status: str  # 5.1.1
    diagnostic: str = ""
    detected: bool = False  # found in free text, not in a DSN's fields
    permanent: bool | None = None  # a provider's own verdict (SES Permanent, Postmark HardBounce...)
    reason: str = ""  # classify.REASONS; worked out from status and diagnostic when not given

    @property
    def why(self) -> str:
        return self.reason or classify(self.status, self.diagnostic, action=self.action)

    @property
    def classification(self) -> str:
        """hard | soft | refused (recorded, never suppresses) | delayed | ignored."""
        if self.action == "delayed":
            return "delayed"
        if self.action != "failed":
            return "ignored"
        reason = self.why
        effect = effect_of(reason)
        if self.permanent is not None and effect in ("hard", "soft"):
            # a provider's verdict stands unless the words name a passing trouble ("mailbox full")
            return "hard" if self.permanent and reason not in _PASSING else "soft"
        return effect


@dataclass
class Report:
    kind: str  # dsn | arf | detector | ses | webhook | delivery | auto-reply | unknown
    failures: list[Failure] = field(default_factory=list)
    feedback_type: str = ""  # arf
    complained: str = ""  # arf: the address that complained, when the provider says
    return_paths: list[str] = field(default_factory=list)  # candidates for our VERP address
    message_id: str = ""  # the original message's
    subject: str = ""
    note: str = ""  # why a report is no bounce, or could not be read

    @property
    def complaint(self) -> bool:
        return self.kind in ("arf", "webhook", "ses") and self.feedback_type in COMPLAINT_TYPES

    @property
    def ignored(self) -> bool:
        """No bounce and no complaint: recorded only, with ``note`` (or the feedback type) saying why."""
        return self.kind in ("unknown", "auto-reply", "delivery") or (self.kind == "arf" and not self.complaint) \
            or (self.kind == "ses" and not self.complaint and not self.failures)


def parse(raw: bytes) -> Report:
    """Never raises: a message that cannot be read is an ``unknown`` report saying why."""
    try:
        return _parse(raw)
    except RecursionError:
        return Report("unknown", note="unreadable: nested too deep")
    except Exception as exc:  # noqa: BLE001 - hostile mail must not stop intake; the note says what broke
        return Report("unknown", note=f"unreadable: {type(exc).__name__}: {str(exc)[:200]}")


def _parse(raw: bytes) -> Report:
    if not isinstance(raw, bytes):
        raise TypeError("a report is bytes")
    raw = raw[:MAX_PARSE].replace(b"\x00", b"")
    boundaries = len(re.findall(rb"boundary\s*=", raw, re.I))
    if boundaries > MAX_BOUNDARIES:
        return Report("unknown", note=f"not read: {boundaries} multipart boundaries (at most {MAX_BOUNDARIES}),"
                                      " a MIME bomb")
    msg = _repaired(message_from_bytes(raw, policy=policy.compat32), raw)
    parts = _parts(msg)
    if parts is None:
        return Report("unknown", note=f"not read: more than {MAX_PARTS} MIME parts, a MIME bomb")
    report = Report("unknown")
    top = [_addr(_header(msg, h)) for h in ("Delivered-To", "X-Original-To", "To", "Envelope-To")]
    original: Message | None = None
    texts: list[str] = []
    status_parts: list[Message] = []
    for part, inside in parts:
        ctype = part.get_content_type()
        if inside:
            continue
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            status_parts.append(part)
        elif ctype == "message/feedback-report":
            report.kind = "arf"
            fields = _fields(part)
            block = fields[0] if fields else Message()
            report.feedback_type = _text(block.get("Feedback-Type")).lower()
            report.complained = _addr(block.get("Original-Rcpt-To"))
            if block.get("Original-Mail-From"):
                report.return_paths.append(_addr(block.get("Original-Mail-From")))
        elif ctype.startswith("text/") and ctype not in ("text/rfc822-headers",):
            texts.append(_decoded(part, html=ctype == "text/html"))
        if original is None and part is not msg:
            original = _headers_of(part)
    if not texts and not status_parts:  # a multipart whose boundary never comes is all text (or preamble)
        texts = [str(part.get_payload()) for part, inside in parts if not inside
                 and part.get_content_maintype() == "multipart" and isinstance(part.get_payload(), str)]
        texts = texts or [msg.preamble or ""]
    text = _notification(texts)
    if original is None and text.original:
        original = HeaderParser().parsestr(text.original)
    if original is not None:
        report.return_paths.append(_addr(_header(original, "Return-Path")))
        report.message_id = _text(_header(original, "Message-ID"))
        report.subject = _text(_header(original, "Subject"))
        if report.kind == "arf" and not report.complained:
            report.complained = _addr(_header(original, "To"))
    if report.kind != "arf":
        _ses(report, text.body) or _dsn(report, status_parts, text.body) or _free_form(report, msg, text.body,
                                                                                     original, raw)
    if report.kind == "unknown" and not report.note:
        report.note = "auto-reply" if _is_auto_reply(msg) else "not a bounce"
        if report.note == "auto-reply":
            report.kind = "auto-reply"
    report.return_paths = [a for a in dict.fromkeys([*top, *report.return_paths]) if a]
    return report


def _failure(address: str, action: str, status: str, diagnostic: str, detected: bool, context: str = "") -> Failure:
    return Failure(address, action, status, diagnostic[:1000], detected,
                   reason=classify(status, diagnostic, action=action, context=context))


def _dsn(report: Report, status_parts: list[Message], body: str) -> bool:
    """Each recipient block of the delivery-status part(s), or the same fields written into
    the text by servers that send no proper part; each with its own status and words."""
    blocks: list[Message] = []
    for part in status_parts:
        blocks.extend(_fields(part))
    if not any(b.get("Final-Recipient") or b.get("Original-Recipient") for b in blocks) and \
            re.search(r"^(Final|Original)-Recipient:", body, re.I | re.M):
        blocks = _field_blocks(body[re.search(r"^(Reporting-MTA|Final-Recipient|Original-Recipient|Arrival-Date):",
                                               body, re.I | re.M).start():])  # type: ignore[union-attr]
    for block in blocks[:MAX_RECIPIENTS + 1]:  # the first is the per-message block
        # where it failed (RFC 3464 requires it; Sisimai reads it too); the intake ties it to our recipient
        address = _addr(_header(block, "Final-Recipient")) or _addr(_header(block, "Original-Recipient")) \
            or _addr(_header(block, "X-Actual-Recipient"))
        if not address:
            continue
        diagnostic = _text(_header(block, "Diagnostic-Code"))
        diagnostic = diagnostic.split(";", 1)[1].strip() if ";" in diagnostic[:12] else diagnostic
        said = _about(address, body) if not diagnostic or not _STATUS_IN_TEXT.search(diagnostic) else ""
        status = _status_of(_text(_header(block, "Status")), diagnostic, said)
        if status in ("5.0.0", "4.0.0", "") and said:
            status = _status_of(said) or status
        action = _action(_text(_header(block, "Action")), status)
        words = " ".join(x for x in (diagnostic, said if said not in diagnostic else "") if x) or said
        category = _text(_header(block, "X-PowerMTA-BounceCategory"))  # PowerMTA's own verdict: bad-mailbox, ...
        if category:
            words = f"{words} [bounce category: {category}]"
        if not words:
            words = _text(body)[:600]
        report.failures.append(_failure(address, action, status, words, False, _about(address, body)))
    if report.failures:
        report.kind = "dsn"
        _dedupe(report)
        reporter = _text(_header(blocks[0], "Reporting-MTA")) if blocks else ""
        if refused_by_rule(reporter):  # an owner's rule refused it: the address may well exist
            report.failures = [replace(f, reason="filtered") if effect_of(f.reason) == "hard" else f
                               for f in report.failures]
        _soften_on_conflict(report, body)
        return True
    return False


def _soften_on_conflict(report: Report, body: str) -> None:
    """One recipient called gone while the notification's own sentences say its mailbox is full
    or disabled ("Not enough disk space" above "550 5.1.1 User Unknown"): the evidence
    disagrees, and a wrongful suppression silences a user for good, so it counts as soft."""
    if len(report.failures) != 1 or effect_of(report.failures[0].reason) != "hard":
        return
    state = state_in_notice(_general_sentences(body))
    if state:
        report.failures[0] = replace(report.failures[0], reason=state)


def _general_sentences(body: str) -> str:
    """The notification's lines about no recipient in particular: not indented (a recipient's
    continuation lines are), naming no address, no report field."""
    return "\n".join(line for line in body.split("\n") if line.strip() and not line[:1].isspace()
                     and "@" not in line and not re.match(r"^[\w-]+: ", line) and not line.startswith(">"))


def _about(address: str, body: str) -> str:
    """The lines of the notification that speak of ``address``: from the first line naming it
    to the next blank line, the next line too when that one is only the address."""
    lines = body.split("\n")
    low = address.lower()
    for i, line in enumerate(lines):
        if low in line.lower():
            out = [line]
            j = i + 1
            statement = _TRANSCRIPT_STATEMENT.match(line) is not None
            while j < len(lines) and (lines[j].strip() or len(out) == 1) and len(out) < 8:
                if statement and (_TRANSCRIPT_STATEMENT.match(lines[j]) or _TRANSCRIPT_TURN.match(lines[j])):
                    break  # a sendmail transcript: each reply line is a statement of its own
                if lines[j].strip():
                    if _ADDRESS.search(lines[j]) and _looks_like_recipient_line(lines[j]) and \
                            low not in lines[j].lower():
                        break  # the next recipient's own lines
                    out.append(lines[j])
                j += 1
            return _text(" ".join(out))
    return ""


_TRANSCRIPT_STATEMENT = re.compile(r"^[245]\d\d[ -]")  # "554 <a@example.org>... Remote protocol error", unindented
_TRANSCRIPT_TURN = re.compile(r"^(>>>|<<<|while talking to|\.\.\. while talking to)", re.I)


def _looks_like_recipient_line(line: str) -> bool:
    return bool(re.match(r"^\s*<?[\w.+'=/&-]+@[\w.-]+>?:?\s*$", line) or re.match(r"^\s*<?[\w.+'=/&-]+@[\w.-]+>?:", line))


def _ses(report: Report, body: str) -> bool:
    """Amazon SES's JSON notification, when it comes as mail (an SNS email subscription)."""
    start = body.find("{")
    if start < 0 or "notificationType" not in body and "eventType" not in body:
        return False
    try:
        data, _ = json.JSONDecoder(strict=False).raw_decode(body[start:])
    except ValueError:
        return False
    if isinstance(data, dict) and data.get("Type") == "Notification" and isinstance(data.get("Message"), str):
        try:  # the SNS envelope around it, as an email subscription delivers it
            data = json.loads(data["Message"], strict=False)
        except ValueError:
            return False
    if not isinstance(data, dict):
        return False
    kind = str(data.get("notificationType") or data.get("eventType") or "")
    mail = data.get("mail") if isinstance(data.get("mail"), dict) else {}
    if mail.get("source"):
        report.return_paths.append(_addr(str(mail["source"])))
    report.message_id = str(mail.get("messageId") or "")
    if kind == "Delivery":
        report.kind, report.note = "delivery", "a delivery notification"
        return True
    if kind == "Complaint":
        complaint = data.get("complaint") if isinstance(data.get("complaint"), dict) else {}
        report.kind = "ses"
        report.feedback_type = str(complaint.get("complaintFeedbackType") or "abuse").lower()
        people = complaint.get("complainedRecipients") or []
        report.complained = _addr(str(people[0].get("emailAddress", ""))) if people and isinstance(people[0], dict) \
            else ""
        return True
    if kind != "Bounce":
        return False
    bounce = data.get("bounce") if isinstance(data.get("bounce"), dict) else {}
    permanent = {"Permanent": True, "Transient": False}.get(str(bounce.get("bounceType")))
    subtype = str(bounce.get("bounceSubType") or "")
    for person in bounce.get("bouncedRecipients") or []:
        if not isinstance(person, dict):
            continue
        address = _addr(str(person.get("emailAddress") or ""))
        diagnostic = str(person.get("diagnosticCode") or subtype)
        status = _status_of(str(person.get("status") or ""), diagnostic)
        reason = classify(status, diagnostic)
        if reason == "undefined":
            reason = {"MailboxFull": "mailbox-full", "MessageTooLarge": "message-too-big", "ContentRejected": "policy",
                      "AttachmentRejected": "policy", "NoEmail": "user-unknown", "Suppressed": "user-unknown",
                      "OnAccountSuppressionList": "user-unknown"}.get(subtype, "user-unknown" if permanent else
                                                                       "undefined")
        if address:
            report.failures.append(Failure(address, "failed", status, diagnostic[:1000], False, None, reason))
    report.kind = "ses"
    return True


def _looks_like_bounce(msg: Message, body: str) -> bool:
    sender = _header(msg, "From") + " " + _header(msg, "Return-Path")
    return bool(_BOUNCE_SENDER.search(sender) or _BOUNCE_SUBJECT.search(_header(msg, "Subject"))
                or re.search(r"could not be delivered|undeliverable|permanent(ly)? (error|fail)|delivery (to the "
                             r"following|has failed|failed)|unable to deliver|user unknown", body, re.I))


def _is_auto_reply(msg: Message) -> bool:
    auto = _header(msg, "Auto-Submitted").lower()
    return auto.startswith("auto-replied") or bool(msg.get("X-Autoreply") or msg.get("X-Autorespond")) or \
        bool(_AUTO_REPLY.search(_header(msg, "Subject")))


def _free_form(report: Report, msg: Message, body: str, original: Message | None, raw: bytes) -> None:
    """Bounces that are no DSN: the recipients the notification's own words name, each with the
    lines about it; flufl.bounce's detectors when the words name none; the enclosed original's
    To when nothing else does."""
    if not _looks_like_bounce(msg, body) or (_is_auto_reply(msg) and not _BOUNCE_SENDER.search(
            _header(msg, "From"))):
        return
    theirs = {_addr(_header(msg, h)) for h in ("From", "To", "Return-Path", "Reply-To", "Sender", "Delivered-To",
                                                "X-Original-To", "Errors-To")}
    if original is not None:
        theirs |= {_addr(_header(original, h)) for h in ("From", "Return-Path", "Sender", "Reply-To")}
        theirs |= {a.lower() for a in _ADDRESS.findall(_header(original, "Message-ID"))}
    detected = _detected(raw, theirs)
    named = _named(body, theirs, quoted_headers=False) or _named(body, theirs, quoted_headers=True)
    listed = [a for a in named if any(a in line.lower() and _looks_like_recipient_line(line)
                                      for line in body.split("\n"))]
    # both agree; else the addresses the report lists as failed; else the detectors'; else any named
    candidates = [a for a in named if a in detected] or listed or detected or named
    if not candidates and original is not None:
        candidates = [a for a in (_addr(x[1]) for x in getaddresses([_header(original, "To")])) if a][:1]
    for address in candidates:
        said = _about(address, body)
        if not _STATUS_IN_TEXT.search(said) and not _REPLY_IN_TEXT.search(said):
            said = f"{said} {_text(body)[:1000] if len(candidates) == 1 else _text(body)[:600]}".strip()
        status = _status_of(said)
        action = "delayed" if re.search(r"\b(deferred|delayed|will (continue|keep) (trying|to try)|"
                                        r"not yet been delivered|still trying)", said, re.I) and \
            not re.search(r"giv(e|ing) up|gave up|permanent|(?<![\d.])5\d\d(?![\d.])", said, re.I) else "failed"
        report.failures.append(_failure(address, action, status, said[:1000], True,
                                        _text(body)[:2000] if len(candidates) == 1 else ""))
    if report.failures:
        report.kind = "detector"


def _detected(raw: bytes, theirs: set[str]) -> list[str]:
    """What flufl.bounce's detectors find (each knows one MTA's format) in the report's head:
    they read every line, slowly, and the failed addresses come first."""
    try:
        temporary, permanent = all_failures(_repaired(message_from_bytes(raw[:MAX_DETECT], policy=policy.compat32),
                                                      raw[:MAX_DETECT]))
    except Exception:  # noqa: BLE001 - a detector choking on odd mail leaves the rest to try
        return []
    out: list[str] = []
    for a in [*permanent, *temporary]:
        a = (a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a)).strip().strip("<>").lower()
        if _VALID.fullmatch(a) and a not in theirs and a not in out:
            out.append(a)
    return out


def _named(body: str, theirs: set[str], *, quoted_headers: bool) -> list[str]:
    """The addresses the notification's words name as recipients, in order; a quoted header of
    the original (``To: x``) counts only when nothing else names one."""
    candidates: list[str] = []
    previous = ""  # the last line with words before this one
    for line in body.split("\n"):
        after_intro = bool(_SENDER_INTRO.search(previous))
        if line.strip():
            previous = line
        if _NOT_RECIPIENT_LINE.search(line) or (not quoted_headers and _QUOTED_HEADER.match(line)):
            continue
        if after_intro and _looks_like_recipient_line(line):
            continue  # "A message sent by\n  <sender@...>": the sender, not a recipient
        for m in _ADDRESS.finditer(line):
            address = re.sub(r"^(smtp|rfc822|x400|mailto)[=:]", "", m.group(0).strip(".'="), flags=re.I).lower()
            local = address.split("@")[0]
            if _DAEMON.match(local) or address in candidates:
                continue
            if address in theirs and not _looks_like_recipient_line(line):
                continue  # the sender's own address, unless a line names it as a failed recipient
            if re.search(r"(message-id|\bid\b|helo|generated from|expanded from|forwarded from|sent by|contact|"
                         r"send mail to|mailto:?)[^@]{0,20}$", line[:m.start()], re.I):
                continue
            candidates.append(address)
            if len(candidates) >= MAX_RECIPIENTS:
                return candidates
    return candidates


def _dedupe(report: Report) -> None:
    seen: dict[str, Failure] = {}
    for f in report.failures:
        if f.address not in seen or (seen[f.address].action != "failed" and f.action == "failed"):
            seen[f.address] = f
    report.failures = list(seen.values())
