"""Email addresses: the one judgement of what is an address, for every producer and the worker.

``Notifier``, the Django backend, Flask, and the worker's validation of jobs written in any
language (PHP, Ruby, ...) all call this module, so an address is accepted, refused or
normalized the same way wherever it comes from, and never re-parsed into a different one:
``"carl@exa mple.com"`` is refused, not sent to ``carl@example.com``; ``"to@other.com
<to@example.com>"`` is refused, not split into two recipients.

The rules (docs/envelope.md states them for other languages):

- a mailbox is ``local@domain`` or ``Name <local@domain>``, parsed by the standard library's
  RFC 5322 parser (the one Django's SMTP backend uses); anything left over, any parser defect,
  and any control character (CR, LF, NUL, tab, ...) refuses it;
- a domain is required (``tester`` is refused); it is a host name, checked label by label;
  a non-ASCII domain is converted to its A-labels by IDNA 2008 (UTS #46 mapping, the ``idna``
  package); an ASCII domain is kept as written, its ``xn--`` labels checked by IDNA 2008 and
  never re-encoded (``xn--10cl1a0b660p`` stays, though IDNA 2003 would make it another name);
  domain literals (``[127.0.0.1]``) are refused;
- the local part is a dot-atom or a quoted string (RFC 5322), of ASCII or UTF-8 (EAI, RFC 6531:
  such an address needs a server that offers SMTPUTF8), at most 64 octets, without invisible or
  unassigned characters (format, private-use, line and paragraph separators).

Only the standard library and ``idna`` are used: a web application that enqueues needs no more
(``email-validator`` would bring dnspython).

Errors are ``AddressError``, a ``ValueError`` whose message starts ``Invalid address`` as the
message of Django's SMTP backend does; ``reason`` holds the why alone.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from email import _header_value_parser as rfc5322  # the parser behind email.headerregistry
from email.errors import HeaderParseError, NonASCIILocalPartDefect
from functools import lru_cache

import idna

__all__ = ["AddressError", "Mailbox", "parse_mailbox", "check_address", "check_name", "mailbox_address", "ascii_domain",
           "needs_smtputf8"]

# every control character, tab included: CR and LF split commands and headers, the rest corrupt them
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# the common case, checked without the full parser: an ASCII dot-atom local part, an ASCII domain
_PLAIN_TEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9.-]+"
_PLAIN = re.compile(_PLAIN_TEXT)
# and ``Name <plain>`` with a name of atoms (RFC 6532: UTF-8 but white space is atext) one space
# apart, which the parser reads as itself (an encoded-word, ``=?``, it would decode: not here)
_ATOM = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f\s])+"
_NAMED = re.compile(rf"({_ATOM}(?: {_ATOM})*) <({_PLAIN_TEXT})>")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f]")  # RFC 6531: UTF-8 is atext
_QTEXT = re.compile(r"[\x20-\x7e]|[^\x00-\x7f]")  # within quotes: printable, space, UTF-8
# Unicode categories refused in a local part: format (ZWJ, bidi controls), surrogates,
# private use, unassigned, line and paragraph separators
_UNSAFE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
MAX_LOCAL = 64
MAX_ADDRESS = 254  # RFC 5321's path of 256 octets less its angle brackets


class AddressError(ValueError):
    """Not one valid address. ``str()`` is ``Invalid address '…': <reason>``."""

    def __init__(self, text: object, reason: str) -> None:
        super().__init__(f"Invalid address {text!r}: {reason}")
        self.text = text
        self.reason = reason


@dataclass(frozen=True)
class Mailbox:
    """``address``: as it goes into MAIL FROM / RCPT TO, the domain in A-labels."""

    address: str
    name: str = ""

    @property
    def smtputf8(self) -> bool:
        return needs_smtputf8(self.address)


def needs_smtputf8(address: str) -> bool:
    """True when a checked address has a UTF-8 local part (its domain is ASCII already)."""
    return not address.isascii()


@lru_cache(maxsize=4096)
def ascii_domain(domain: str) -> str:
    """The domain as it goes on the wire; raises AddressError (its ``text`` is the domain).
    Cached: a mailout sends to a few domains many times."""
    if not domain:
        raise AddressError(domain, "no domain after the @-sign")
    if domain.startswith("["):
        raise AddressError(domain, "a domain literal (an IP address in brackets) is not accepted; give a host name")
    if domain.isascii():
        ascii_name = domain
        for label in domain.split("."):
            if label[:4].lower() == "xn--":
                try:
                    idna.decode(label)  # IDNA 2008, CONTEXTJ (ZWJ, ZWNJ) included
                except (idna.IDNAError, UnicodeError) as exc:
                    raise AddressError(domain, f"the label {label!r} is not a valid IDNA 2008 A-label: {exc}") from None
    else:
        try:
            ascii_name = idna.encode(domain, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise AddressError(domain, f"the domain {domain!r} is not a valid internationalized domain name "
                                       f"(IDNA 2008): {exc}") from None
    if len(ascii_name) > 253:
        raise AddressError(domain, "the domain is longer than 253 characters")
    for label in ascii_name.split("."):
        if not _LABEL.fullmatch(label):
            why = "has an empty label (two dots, or a dot at an end)" if not label else \
                f"has the label {label!r}, not a host name label (letters, digits and inner hyphens, at most 63)"
            raise AddressError(domain, f"the domain {domain!r} {why}")
    return ascii_name


def _local_part(text: str, local: str, quoted: bool) -> None:
    """``local``: the local part's content (unquoted); ``quoted``: whether it needs the quotes."""
    if not local:
        raise AddressError(text, "nothing before the @-sign")
    if len(local.encode()) > MAX_LOCAL:
        raise AddressError(text, f"the part before the @-sign is longer than {MAX_LOCAL} octets")
    for ch in local:
        if not (_QTEXT if quoted else _ATEXT).match(ch) and not (not quoted and ch == "."):
            raise AddressError(text, f"the part before the @-sign has a character not allowed there: {ch!r}")
        if not ch.isascii() and (unicodedata.category(ch) in _UNSAFE or (not quoted and ch.isspace())):
            raise AddressError(text, f"the part before the @-sign has an invisible or unassigned character: "
                                     f"U+{ord(ch):04X} {unicodedata.name(ch, '')}".rstrip())
    if not quoted and (local.startswith(".") or local.endswith(".") or ".." in local):
        raise AddressError(text, "the part before the @-sign has a dot at an end or two dots in a row")


def _parse(text: object) -> tuple[str, str, bool]:
    """(display name, checked address, whether ``text`` was the bare address as written)."""
    if not isinstance(text, str):
        raise AddressError(text, f"an address is a string, not {type(text).__name__}")
    if _CONTROL.search(text):
        raise AddressError(text, "it contains a control character (CR, LF, NUL, tab or another)")
    # the hot paths: forms the full parser reads as written, checked without it (ten times faster)
    if _PLAIN.fullmatch(text):
        return "", _plain(text, text), True
    named = _NAMED.fullmatch(text)
    if named and "=?" not in named.group(1):
        return named.group(1), _plain(text, named.group(2)), False
    try:
        token, rest = rfc5322.get_mailbox(text)
        defects = [d for d in token.all_defects if not isinstance(d, NonASCIILocalPartDefect)]
    except (HeaderParseError, ValueError, IndexError, AttributeError, TypeError):  # (the last two: parser bugs)
        raise AddressError(text, "not an address (local@domain, or Name <local@domain>)") from None
    if rest:
        raise AddressError(text, f"not one recipient address (only {str(token).strip()!r} could be parsed)")
    if token.local_part is None:
        raise AddressError(text, "an empty address")
    if token.domain is None:
        raise AddressError(text, "no domain (an address is local@domain)")
    if defects:
        raise AddressError(text, str(defects[0]) or type(defects[0]).__name__)
    spec = token.addr_spec  # the local part quoted only where it must be, no comments or spaces
    local = spec.rpartition("@")[0]
    _local_part(text, token.local_part, local.startswith('"'))
    address = f"{local}@{_domain(text, token.domain)}"
    _length(text, address)
    bare = token[0].token_type == "addr-spec" and not _has_cfws(token)
    return token.display_name or "", address, bare


def _has_cfws(token: list) -> bool:  # type: ignore[type-arg]
    """Whether white space or a comment lies outside quotes: ``zoe @ example.com``, ``zoe(c)@…``."""
    for part in token:
        if part.token_type in ("cfws", "comment"):
            return True
        if isinstance(part, list) and part.token_type != "bare-quoted-string" and _has_cfws(part):
            return True
    return False


def _plain(text: str, spec: str) -> str:
    local, _, domain = spec.rpartition("@")
    if len(local) > MAX_LOCAL:
        _local_part(text, local, False)
    address = f"{local}@{_domain(text, domain)}"
    _length(text, address)
    return address


def _domain(text: str, domain: str) -> str:
    try:
        return ascii_domain(domain)
    except AddressError as exc:
        raise AddressError(text, exc.reason) from None


def _length(text: str, address: str) -> None:
    if len(address.encode()) > MAX_ADDRESS:
        raise AddressError(text, f"longer than {MAX_ADDRESS} bytes")


def parse_mailbox(text: str) -> Mailbox:
    """``"Zoë <zoe@example.com>"``, ``"zoe@example.com"``: one mailbox, checked, or AddressError."""
    name, address, _ = _parse(text)
    return Mailbox(address, name)


def check_address(text: str) -> str:
    """A bare address exactly as an envelope carries it (no name, brackets, comments or spaces),
    checked; returned with its domain in A-labels. AddressError otherwise."""
    name, address, bare = _parse(text)
    if name or not bare:
        raise AddressError(text, f"the address alone is expected here, as local@domain (such as {address!r}): "
                                 "no name, angle brackets, comments or spaces (a name has its own field)")
    return address


def mailbox_address(value: object) -> str:
    """The address of one entry of a recipient list as web frameworks hold it: a string (a lazy
    translation string too) in either form, or a ``(name, address)`` pair; AddressError if not."""
    if isinstance(value, tuple) and len(value) == 2:
        check_name(str(value[0]))
        return check_address(str(value[1]))
    return parse_mailbox(str(value)).address


def check_name(name: str) -> str:
    """A display name: any text without control characters (CR and LF would split a header)."""
    if _CONTROL.search(name):
        raise AddressError(name, "the display name contains a control character (CR, LF, NUL, tab or another)")
    return name
