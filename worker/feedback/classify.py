"""The reason vocabulary, and the judgement of one failed recipient: from its status code
(RFC 3463), the SMTP command it failed at and the remote server's words, to a reason, and from
the reason to what the intake does.

Only a reason that says the address itself is gone is ``hard`` (suppressed at once). A reason
the recipient's side may get over (mailbox full, queue expired, the server down) is ``soft``
(suppressed after repeated bounces). A refusal of the sender or of the message (our address or
IP blocked, spam, policy, authentication) is ``refused``: recorded, never suppresses the
recipient, whose address is fine. Sisimai (github.com/sisimai) is the reference these names
are measured against (``SISIMAI_REASONS`` maps its names to ours).
"""

from __future__ import annotations

import re

# reason -> (effect, what it means); effect: hard | soft | refused | ignored
REASONS: dict[str, tuple[str, str]] = {
    "user-unknown": ("hard", "no such mailbox at the recipient's domain"),
    "host-unknown": ("hard", "the recipient's domain does not exist or accepts no mail (null MX)"),
    "has-moved": ("hard", "the mailbox has moved and mail is not forwarded"),
    "mailbox-full": ("soft", "the mailbox (or the recipient's system) is full"),
    "suspended": ("soft", "the mailbox is disabled or suspended for now"),
    "message-too-big": ("soft", "the message is over the recipient's size limit"),
    "expired": ("soft", "the sending MTA gave up retrying (queue lifetime reached)"),
    "filtered": ("soft", "the recipient's own settings refused it (a filter, a closed list)"),
    "system-error": ("soft", "the recipient's server failed or is misconfigured"),
    "network-error": ("soft", "no route or connection to the recipient's server"),
    "on-hold": ("soft", "neither a status code nor words we know say what failed"),
    "undefined": ("soft", "a status code no rule knows, and no words we know"),
    "blocked": ("refused", "our IP address or host is blocked (blocklist, reputation, reverse DNS)"),
    "throttled": ("refused", "too many connections or messages: a rate limit"),
    "spam-detected": ("refused", "the message was judged spam"),
    "virus": ("refused", "the message was judged to carry a virus"),
    "policy": ("refused", "a policy refused the message (SPF, DKIM, DMARC, content, TLS, RFC compliance)"),
    "sender-side": ("refused", "the sender's address or our client was refused (5.1.7, 5.1.8, relaying denied)"),
    "auto-reply": ("ignored", "an auto-reply (vacation, out of office), no bounce"),
    "delivered": ("ignored", "a delivery notification, no bounce"),
}

SISIMAI_REASONS: dict[str, str] = {
    "userunknown": "user-unknown", "hostunknown": "host-unknown", "notaccept": "host-unknown",
    "hasmoved": "has-moved", "mailboxfull": "mailbox-full", "systemfull": "system-error",
    "suspend": "suspended", "mesgtoobig": "message-too-big", "exceedlimit": "message-too-big",
    "expired": "expired", "filtered": "filtered", "systemerror": "system-error", "mailererror": "system-error",
    "networkerror": "network-error", "onhold": "on-hold", "undefined": "undefined",
    "blocked": "blocked", "badreputation": "blocked", "requireptr": "blocked",
    "toomanyconn": "throttled", "speeding": "throttled", "spamdetected": "spam-detected",
    "virusdetected": "virus", "policyviolation": "policy", "securityerror": "policy", "authfailure": "policy",
    "contenterror": "policy", "notcompliantrfc": "policy", "rejected": "sender-side",
    "norelaying": "sender-side", "syntaxerror": "sender-side", "vacation": "auto-reply", "delivered": "delivered",
}


def effect_of(reason: str) -> str:
    return REASONS.get(reason, ("soft", ""))[0]


def _rx(*alternatives: str) -> re.Pattern[str]:
    return re.compile("|".join(alternatives), re.I)


# a server's own unambiguous words that the mailbox does not exist, needing no SMTP command to back them
_DEFINITE = re.compile(r"recipient name is not recognized|not listed in (the )?(domino directory|public name)|"
                       r"address couldn'?t be found(?!, or is unable)|recipientnotfound|invalid final delivery userid|"
                       r"user not exist|no valid recipients|email address wasn.t found|\binvalid recipient\b|"
                       r"recipient address rejected: access denied|mail\.local: unknown user|"
                       r"ディレクトリのリストにありません|\[bounce category: bad-mailbox\]", re.I)
# ("access denied" after "recipient address rejected" is Exchange Online's unknown recipient; the
# Japanese is Lotus Notes' "not in the directory"; the category is PowerMTA's own verdict)

# Most specific first: the first reason whose words appear wins over the status code.
_TEXT_RULES: list[tuple[str, re.Pattern[str]]] = [
    ("sender-side", _rx(r"sender (address|domain) (rejected|refused|unknown|invalid|not)", r"sender verify failed",
                        r"sender.{0,20}(does not exist|doesn't exist|unknown|not (found|allowed|permitted|verified))",
                        r"(domain|address) of sender address .{0,80}(does not|doesn't) (exist|resolve)",
                        r"invalid sender", r"bad sender", r"unknown sender", r"sender is not allowed",
                        r"from address (rejected|not)", r"your (mail|e-?mail) address .{0,40}(invalid|not)",
                        r"relay(ing)? (access )?(denied|not (permitted|allowed))", r"not permitted to relay",
                        r"unable to relay", r"we do not relay", r"no relaying", r"relay not permitted",
                        r"must (be authenticated|authenticate)", r"authentication required",
                        r"sender.{0,40}(blacklisted|blocked|denied)", r"mail from .{0,60}(rejected|refused|denied)",
                        r"return path .{0,30}(invalid|rejected)", r"null sender", r"\bsender rejected")),
    ("filtered", _rx(r"\b[45]\d\d:? ?: ?:? ?user unknown")),  # au/ezweb's domain filter speaks so: no address
    ("user-unknown", _DEFINITE),
    ("virus", _rx(r"virus", r"malware", r"infected", r"trojan", r"worm detected")),
    ("spam-detected", _rx(r"\bspam\b", r"spam(my|like)", r"junk ?mail", r"bulk mail", r"unsolicited", r"\bUCE\b",
                          r"content (filter|rejected)", r"message (content )?(rejected|refused) (as|due|by)",
                          r"scored? (too high|as)", r"spamassassin", r"x-spam", r"phish", r"suspicious")),
    ("blocked", _rx(r"block(ed|list|ing)", r"black ?list(ed)?", r"\bRBL\b", r"\bDNSBL\b", r"spamhaus", r"spamcop",
                    r"sorbs", r"barracuda ?(central|reputation)", r"reputation", r"(?<!not )\blisted (at|on|in|by)\b",
                    r"your (ip|host|server|network)", r"(client|connecting) (host|ip)", r"reverse (dns|lookup)",
                    r"\bPTR\b", r"rdns", r"no (reverse|ptr)", r"ip address .{0,40}(not allowed|denied|rejected)",
                    r"access denied", r"banned", r"poor reputation", r"not accepting mail from",
                    r"connection refused by .{0,40}policy", r"dynamic ip", r"residential", r"invalid ip",
                    r"my name was rejected", r"not allowed to connect")),
    ("throttled", _rx(r"too many (connections|messages|recipients|concurrent|sessions|mails|emails)",
                      r"rate limit", r"ratelimit", r"throttl", r"try again later.{0,40}(too many|rate)",
                      r"sending (rate|limit)", r"exceeded .{0,30}(rate|quota of messages|sending)",
                      r"connection limit", r"too fast", r"slow down")),
    ("policy", _rx(r"\bSPF\b", r"\bDKIM\b", r"\bDMARC\b", r"authenticat(ion|ed) (fail|check)", r"not authenticated",
                   r"policy", r"\bTLS\b (required|is required)", r"encryption required", r"rfc ?(5322|2822|822)",
                   r"not (rfc|standard)[ -]compliant", r"header .{0,30}(missing|invalid|malformed)",
                   r"(missing|invalid|malformed|duplicate) (message-id|date|from|header)",
                   r"(attachment|file type|extension)s? .{0,40}(not allowed|blocked|prohibited|forbidden)",
                   r"content (not allowed|prohibited)", r"message refused", r"not allowed to send", r"forged",
                   r"8-?bit (data|mime)", r"illegal (character|content)", r"line too long")),
    ("system-error", _rx(r"command output:", r"pipe to \|", r"procmail:", r"mailbox_command", r"mail ?drop")),
    ("network-error", _rx(r"not found, try again", r"temporary (dns|lookup) failure", r"name server reply")),
    ("has-moved", _rx(r"has moved", r"no longer (at|with)\b", r"moved (to|permanently)",
                      r"address (has )?changed", r"new address")),
    ("mailbox-full", _rx(r"(mailbox|mail box|mailfolder|inbox|account|user|disk|quota|storage)[^.;]{0,40}"
                         r"(full|exceeded|over|limit)", r"over ?quota", r"quota (exceeded|exceed|full|violation)",
                         r"exceeded (its|the|their|his|her)? ?(storage|quota|mailbox)", r"insufficient (disk|storage)",
                         r"not enough (disk )?(space|storage)", r"no space left", r"full mailbox", r"mailbox is full",
                         r"too much mail", r"out of (disk|storage|space)", r"size limit exceeded for (this|the) mailbox",
                         r"would exceed.{0,30}quota", r"storage (space|allocation)")),
    ("message-too-big", _rx(r"message (size|length) (exceeds|too|is over|larger)", r"(message|mail|email) (is )?too "
                            r"(big|large|long)", r"size exceeds", r"exceeds? .{0,30}(size|message) limit",
                            r"(too big|too large) for", r"maximum (message )?size", r"message file too big",
                            r"size limit", r"larger than .{0,30}(allowed|permitted|limit)", r"body too large")),
    ("suspended", _rx(r"(account|mailbox|address|user)[^.;]{0,30}(disabled|suspended|inactive|deactivated|"
                      r"locked|frozen|expired|not active|blocked by (the )?(user|owner))",
                      r"(disabled|suspended|inactive|deactivated|expired|locked) (account|mailbox|user)",
                      r"temporarily (disabled|deactivated)", r"not (currently )?(available|active)")),
    ("user-unknown", _rx(r"(user|recipient|mailbox|address|account|addressee|local part|local-part|"
                         r"e-?mail address|alias|person)s?( name)?( is)? (unknown|not (found|known|valid|listed)|"
                         r"does not exist|doesn'?t exist|non-?existent)",
                         r"no (such|valid) (user|recipient|mailbox|address|account|local ?part|person)",
                         r"(unknown|invalid|non-?existent) (user|recipient|mailbox|e-?mail address|account|addressee|"
                         r"local ?part|alias)", r"user doesn'?t have", r"no mailbox (here|by that name)",
                         r"not our customer", r"unknown local", r"recipient address rejected(\.|$| \(in reply)", r"(address|mailbox|account) is (wrong or )?no longer "
                         r"(valid|available|in use)", r"doesn'?t have an? .{0,20}"
                         r"account", r"no account", r"not a (valid|known) (user|recipient|mailbox)",
                         r"no one (here )?by that name", r"does not have an? (account|mailbox)",
                         r"mailbox (does not|doesn'?t) exist", r"account (that you tried to reach )?does not exist",
                         r"is not a valid mailbox", r"user not found", r"recipient not found", r"unknown or illegal "
                         r"(alias|user)", r"address (is )?(unknown|invalid)", r"mailbox not found")),
    ("host-unknown", _rx(r"\[bounce category: bad-domain\]", r"host or domain name not found", r"host (\S+ )?not found", r"unrouteable address",
                         r"indicated no smtp service", r"not accepting network messages", r"no such domain", r"unknown domain",
                         r"domain (does not|doesn'?t) exist", r"nxdomain", r"null mx",
                         r"(domain|host) (name )?(is )?(not found|unknown|invalid)", r"unrouteable (mail )?domain",
                         r"domain not (found|exist)", r"no (mx|dns|a|mail exchanger) (record|host)",
                         r"could not be resolved", r"does not accept mail", r"unknown host",
                         r"all relevant mx records point to non-existent hosts", r"domain is not reachable", r"non-existent (host|domain)",
                         r"hostname (not found|unknown)", r"domain .{0,30}(invalid|not valid)", r"nxdomain")),
    ("expired", _rx(r"expired", r"did not accept our requests to connect", r"too long in (the )?queue", r"retry time", r"(gave up|giving up|could not be "
                    r"delivered) .{0,40}(days|hours|attempts|retry|period)", r"delivery time", r"queue",
                    r"timed? ?out", r"retry timeout", r"past (the )?deadline", r"not (been )?delivered for",
                    r"deferred.{0,30}(too long|days)", r"maximum (time|lifetime|retries)",
                    r"(no|unable to make a) (answer|connection)", r"could not deliver .{0,30} for \d+")),
    ("network-error", _rx(r"name service error", r"name server reply", r"dns (error|failure)",r"connection (refused|reset|closed|lost|dropped)", r"network (error|unreachable)",
                          r"no route to host", r"loop(s)? (detected|back)", r"mail loop", r"routing loop",
                          r"too many hops", r"unreachable", r"lost connection", r"broken pipe",
                          r"could not connect", r"can'?t connect", r"connect to .{0,60}(failed|refused)")),
    ("filtered", _rx(r"filter", r"not accepting (mail|messages|e-?mail)", r"refuses to accept",
                     r"does not (accept|receive|want) ", r"only accepts? mail from", r"not authorized to (send|post)",
                     r"not allowed to post", r"members? only", r"(group|list).{0,40}(restrict|only|member)",
                     r"recipient (has )?(rejected|refused|blocked)", r"you have been blocked by the recipient",
                     r"do(es)? not accept .{0,20}from", r"recipient preferences")),
    ("system-error", _rx(r"system (error|failure|config|not)", r"internal (server )?error", r"server (error|busy)",
                         r"local (error|configuration|problem)", r"misconfigur", r"temporary (failure|error|problem)",
                         r"service (not available|unavailable)", r"(mail|smtp) ?server .{0,30}(unavailable|down)",
                         r"configuration error", r"resources? (temporarily )?unavailable", r"insufficient system",
                         r"mailer error", r"command (died|failed)", r"(program|pipe) .{0,30}(failed|exit)",
                         r"error writing", r"i/o error", r"unknown mailer")),
]

_STATUS_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^[45]\.1\.[78]$"), "sender-side"),
    # 5.1.0, "other address status", is the recipient's unless the words speak of the sender (above)
    (re.compile(r"^5\.1\.[013]$"), "user-unknown"),
    (re.compile(r"^5\.1\.2$"), "host-unknown"),
    (re.compile(r"^5\.1\.10$"), "user-unknown"),  # RFC 7505's null MX, which Microsoft uses for "recipient not found"
    (re.compile(r"^[45]\.1\.6$"), "has-moved"),
    (re.compile(r"^5\.1\.4$"), "filtered"),
    (re.compile(r"^[45]\.1\.9$"), "system-error"),
    (re.compile(r"^5\.1\.\d+$"), "user-unknown"),  # 5.1.351 (Exchange) and kin
    (re.compile(r"^4\.1\.\d+$"), "system-error"),
    (re.compile(r"^4\.2\.1$"), "suspended"),
    (re.compile(r"^[45]\.2\.2$"), "mailbox-full"),
    (re.compile(r"^[45]\.2\.3$"), "message-too-big"),
    (re.compile(r"^[45]\.2\.\d+$"), "filtered"),
    (re.compile(r"^[45]\.3\.1$"), "system-error"),
    (re.compile(r"^[45]\.3\.4$"), "message-too-big"),
    (re.compile(r"^5\.3\.2$"), "host-unknown"),  # the system accepts no mail at all
    (re.compile(r"^[45]\.3\.\d+$"), "system-error"),
    (re.compile(r"^5\.4\.4$"), "host-unknown"),
    (re.compile(r"^4\.4\.[17]$"), "expired"),
    (re.compile(r"^[45]\.4\.\d+$"), "network-error"),
    (re.compile(r"^[45]\.5\.3$"), "throttled"),
    (re.compile(r"^[45]\.5\.[26]$"), "sender-side"),
    (re.compile(r"^[45]\.5\.[45]$"), "system-error"),
    (re.compile(r"^[45]\.6\.\d+$"), "policy"),
    (re.compile(r"^[45]\.7\.1$"), "blocked"),
    (re.compile(r"^[45]\.7\.2[5-9]$"), "blocked"),
    (re.compile(r"^[45]\.7\.\d+$"), "policy"),
]

# a status that names its reason outright: its words do not overrule it
_DECISIVE = ("mailbox-full", "message-too-big", "suspended", "filtered", "has-moved", "sender-side", "throttled")
_DATA_STAGE = re.compile(r"(in reply to|after) (the )?(end of )?data\b|smtp command:? ?data\b|>>> DATA|"
                         r"after end of data|\[DATA\]|-+smtp command data", re.I)
_RCPT_STAGE = re.compile(r"(in reply to|after|did not like our) (the )?RCPT( TO)?\b|>>> RCPT|\[RCPT_TO\]|"
                         r"RCPT TO:?\s*<[^>]+>:?\s*(<<<\s*)?[45]\d\d|smtp command:? ?rcpt|does not like recipient|"
                         r"after RCPT command|most progress was RCPT|SMTP:RCPT\b", re.I)
_TEMPORARY_OF = {"user-unknown": "filtered", "host-unknown": "network-error", "has-moved": "filtered"}
_SENDER_COMMANDS = re.compile(r"(in reply to|after) (MAIL|HELO|EHLO|STARTTLS|AUTH)\b|>>> (MAIL|HELO|EHLO) ", re.I)
_ADDRESS_IN_TEXT = re.compile(r"[\w.+'=-]+@[\w-]+(\.[\w-]+)+")


def classify(status: str, diagnostic: str, *, action: str = "failed", context: str = "") -> str:
    """A reason from REASONS for one recipient's failure; ``context``, the report's lines about
    the recipient, may tell the SMTP command it failed at."""
    status = status or ""
    text = " ".join(diagnostic[:4000].split())
    context = context[:4000]
    if action == "delivered" or status.startswith("2."):
        return "delivered"
    if _SENDER_COMMANDS.search(text) and not re.search(r"user|mailbox|recipient", text, re.I):
        for reason in ("blocked", "spam-detected", "policy"):
            if _says(reason, text):
                return reason
        return "sender-side"
    if re.match(r"^[45]\.1\.[78]$", status):
        return "sender-side"
    words = _ADDRESS_IN_TEXT.sub("ADDRESS", text)  # an address's letters are no words ("spam@", "block.example")
    by_status = next((reason for pattern, reason in _STATUS_RULES if pattern.match(status)), "")  # "" for none
    if by_status in _DECISIVE and not (by_status == "filtered" and _DEFINITE.search(words)):
        reason = by_status
    else:
        reason = next((name for name, rule in _TEXT_RULES if rule.search(words)), "") or by_status
    if not reason:  # no words we know: a status says something failed, none says nothing at all
        reason = "expired" if status.startswith("4.") and action == "failed" else "undefined" if status else "on-hold"
    if reason == "suspended" and by_status == "user-unknown":
        reason = "user-unknown"  # "5.1.1 inactive email address": with a bad-mailbox status, gone for good
    at_rcpt = bool(_RCPT_STAGE.search(text) or _RCPT_STAGE.search(context))
    if reason == "filtered" and by_status == "filtered" and at_rcpt and _says("user-unknown", words):
        reason = "user-unknown"  # 5.2.1 "User Unknown" in reply to RCPT TO: the address is gone
    if reason == "user-unknown" and by_status != "user-unknown" and not _DEFINITE.search(words) and (
            _DATA_STAGE.search(text) or _DATA_STAGE.search(context) or not at_rcpt):
        # words alone do not prove the address gone: a refusal after the content (DATA) says the
        # address exists; one at no known command may be a filter speaking loosely
        reason = "filtered"
    temporary = status.startswith("4.") or (not status and re.search(r"(?<![\d.])4\d\d[ -]", text) is not None
                                            and not re.search(r"(?<![\d.])5\d\d[ -]", text))
    if temporary and effect_of(reason) == "hard":
        reason = _TEMPORARY_OF[reason]
    return reason


# Reporting MTAs whose refusals are a rule the recipient domain's owner wrote, not evidence that
# the address is gone: Amazon SES receiving answers with a receipt rule's bounce action, whose
# text ("Mailbox does not exist") the owner picks from a template. Never a hard bounce.
_RULE_REPORTERS = re.compile(r"^inbound-smtp\.[\w-]+\.amazonaws\.com$", re.I)
# the mailbox's state said in a notification's own sentences; soft reasons only
_STATE_REASONS = ("mailbox-full", "suspended")


def refused_by_rule(reporting_mta: str) -> bool:
    """Whether the report comes from a server whose refusals are an owner's rule."""
    host = reporting_mta.split(";", 1)[-1].strip()
    return bool(_RULE_REPORTERS.match(host))


def state_in_notice(notice: str) -> str:
    """A soft reason the notification's general sentences give (not any recipient's own lines):
    "Not enough disk space", "The user(s) account is disabled."; "" when they give none."""
    words = " ".join(notice[:4000].split())
    return next((reason for reason in _STATE_REASONS if _says(reason, words)), "")


def _says(reason: str, words: str) -> bool:
    return any(rule.search(words) for name, rule in _TEXT_RULES if name == reason)
