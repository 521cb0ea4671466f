"""How well the parser reads real bounces: one corpus folder (a message a file) against a
reference's verdicts for it, Sisimai's (``scripts/sisimai_verdicts.pl`` writes them: one JSON
line per recipient, ``recipient`` null for a file it does not recognise).

Figures, over the files the reference recognises: recipients' recall and precision (a bounce
recipient we name that the reference does not is a false one, so is one named in a report the
reference calls a complaint or a delivery), agreement with its hard/soft over the recipients
both name, how many of its soft bounces we would suppress at once, and how often our reason is
its reason (through ``SISIMAI_REASONS``). ``python scripts/bounce_corpus.py FOLDER`` prints them.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .classify import SISIMAI_REASONS, effect_of
from .parse import parse

ROOT = Path(__file__).resolve().parents[2]
NOT_BOUNCES = ("feedback", "delivered", "vacation")  # Sisimai's reasons for reports that are no bounce


@dataclass(frozen=True)
class Verdict:
    recipient: str
    reason: str  # Sisimai's name; "" when the reference names recipients only
    hard: bool | None  # None when the reference names recipients only


@dataclass(frozen=True)
class Found:
    recipient: str
    reason: str
    hard: bool


@dataclass
class Figures:
    corpus: str
    files: int = 0
    judged: int = 0  # files the reference recognises
    expected: int = 0  # its bounce recipients
    found: int = 0  # ours, in those files
    matched: int = 0
    agree: int = 0  # hard/soft agreement over matched
    same_reason: int = 0
    soft_suppressed: int = 0  # its soft bounces we call hard
    hard_missed: int = 0  # its hard bounces we call soft
    misses: list[str] = field(default_factory=list)  # one line per disagreement, for a failing test

    @property
    def recall(self) -> float:
        return self.matched / self.expected if self.expected else 1.0

    @property
    def precision(self) -> float:
        return self.matched / self.found if self.found else 1.0

    @property
    def agreement(self) -> float:
        return self.agree / self.matched if self.matched else 1.0

    @property
    def reason_agreement(self) -> float:
        return self.same_reason / self.matched if self.matched else 1.0

    def line(self) -> str:
        return (f"{self.corpus}: {self.judged}/{self.files} files judged by the reference, recipients recall"
                f" {self.recall:.3f} ({self.matched}/{self.expected}) precision {self.precision:.3f}"
                f" ({self.matched}/{self.found}), hard/soft agreement {self.agreement:.3f}, soft suppressed at once"
                f" {self.soft_suppressed}, hard read as soft {self.hard_missed}, same reason"
                f" {self.reason_agreement:.3f}")


def sisimai_verdicts(folder: Path) -> dict[str, list[Verdict] | None]:
    """Run the Sisimai perl finds (Debian's libsisimai-perl) over ``folder``."""
    perl = shutil.which("perl")
    if perl is None:
        raise RuntimeError("perl is not installed: no reference verdicts (apt-get install libsisimai-perl)")
    done = subprocess.run([perl, str(ROOT / "scripts" / "sisimai_verdicts.pl"), str(folder)], capture_output=True,
                          text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"sisimai_verdicts.pl failed: {done.stderr[-2000:]}")
    return read_verdicts(done.stdout.splitlines())


def read_verdicts(lines: list[str]) -> dict[str, list[Verdict] | None]:
    """file -> its bounce verdicts; None for a file the reference does not recognise."""
    out: dict[str, list[Verdict] | None] = {}
    for line in lines:
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("recipient") is None:
            out.setdefault(row["file"], None)
            continue
        verdicts = out.get(row["file"]) or []
        if row["reason"] not in NOT_BOUNCES:
            verdicts.append(Verdict(row["recipient"].lower(), row["reason"], bool(row["hardbounce"])))
        out[row["file"]] = verdicts
    return out


def flufl_verdicts(folder: Path) -> dict[str, list[Verdict] | None]:
    """flufl.bounce's own table of what its detectors find in its test messages (its sdist's
    tests/test_detectors.py, which ``scripts/setup.sh test`` keeps beside them as .expected.py):
    recipients only; a file it lists with no address is no bounce it can read."""
    tree = ast.parse((folder / ".expected.py").read_text())
    table = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                 and getattr(node.targets[0], "id", "") == "DETECTORS")
    out: dict[str, list[Verdict] | None] = {}
    for _detector, name, addresses, _temporary in table:
        verdicts = out.setdefault(name, []) or []
        for a in addresses:
            a = (a.decode() if isinstance(a, bytes) else a).lower()
            if all(v.recipient != a for v in verdicts):
                verdicts.append(Verdict(a, "", None))
        out[name] = verdicts
    return out


def ours(raw: bytes) -> list[Found]:
    """What the parser says of one message: each recipient it reports as bounced or delayed."""
    report = parse(raw)
    found: dict[str, Found] = {}
    for f in report.failures:
        if f.classification in ("hard", "soft", "refused", "delayed") and f.address not in found:
            found[f.address] = Found(f.address, f.reason, f.classification == "hard")
    return list(found.values())


def _same(address: str) -> str:
    """``"a.."@example.org`` and ``a..@example.org`` are one address."""
    return address.replace('"', "").lower()


def measure(folder: Path, verdicts: dict[str, list[Verdict] | None], name: str = "") -> Figures:
    figures = Figures(name or folder.name)
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        figures.files += 1
        expected = verdicts.get(path.name)
        if expected is None:
            continue
        figures.judged += 1
        found = {_same(f.recipient): f for f in ours(path.read_bytes())}
        theirs = {_same(v.recipient): v for v in expected}
        figures.expected += len(theirs)
        figures.found += len(found)
        for address, v in theirs.items():
            f = found.get(address)
            if f is None:
                figures.misses.append(f"{path.name}: missed {address} ({v.reason})")
                continue
            figures.matched += 1
            if v.hard is None:  # a reference of recipients only
                figures.agree += 1
                figures.same_reason += 1
                continue
            figures.agree += f.hard == v.hard
            figures.same_reason += SISIMAI_REASONS.get(v.reason, v.reason) == f.reason
            if f.hard and not v.hard:
                figures.soft_suppressed += 1
                figures.misses.append(f"{path.name}: {address} hard ({f.reason}), reference soft ({v.reason})")
            elif v.hard and not f.hard:
                figures.hard_missed += 1
                figures.misses.append(f"{path.name}: {address} {effect_of(f.reason)} ({f.reason}),"
                                      f" reference hard ({v.reason})")
            elif SISIMAI_REASONS.get(v.reason, v.reason) != f.reason:
                figures.misses.append(f"{path.name}: {address} reason {f.reason}, reference {v.reason}")
        for address in found.keys() - theirs.keys():
            figures.misses.append(f"{path.name}: extra {address} ({found[address].reason})")
    return figures
