"""The bounce conformance tier: real bounces nobody here wrote, read by the parser and held
against a reference's verdicts, one printed line of figures per corpus and reference.

Corpora: flufl.bounce's test messages (Apache-2.0), which ``scripts/setup.sh test`` takes from
its sdist on PyPI into var/corpora/flufl-bounce; Sisimai's set-of-emails (BSD-2-Clause), kept in
tests/conformance/corpora/ (its PROVENANCE.md says from where). References: Sisimai 5.1's
verdicts on set-of-emails, kept beside it; Debian's libsisimai-perl (4.25) run live over both
(``scripts/sisimai_verdicts.pl``); flufl.bounce's own table of recipients for its messages.
The floors below are the issue's goals or, where we do better, the figures reached, to hold
them; ``python scripts/bounce_corpus.py FOLDER [--verdicts FILE] --misses`` lists every
disagreement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from worker.feedback.corpus import Figures, Verdict, flufl_verdicts, measure, read_verdicts, sisimai_verdicts

ROOT = Path(__file__).resolve().parents[2]
FLUFL = ROOT / "var" / "corpora" / "flufl-bounce"
SISIMAI = Path(__file__).resolve().parent / "corpora" / "sisimai-set-of-emails"
SISIMAI_5_VERDICTS = SISIMAI / "verdicts-sisimai-5.1.0p3.jsonl"

References = Callable[[Path], "dict[str, list[Verdict] | None]"]
# corpus, reference -> floors: recall, precision, hard/soft agreement; and the most soft bounces
# suppressed at once
FLOORS: dict[tuple[str, str], tuple[float, float, float, int]] = {
    ("flufl.bounce", "its own table"): (0.96, 0.96, 1.0, 0),
    ("flufl.bounce", "Sisimai (Debian)"): (0.95, 0.95, 0.96, 0),
    ("sisimai set-of-emails", "Sisimai 5.1"): (0.98, 0.99, 0.95, 0),
    # the two Sisimai 4.25 calls soft are its own errors, which 5.1 corrected: "550 5.2.1 User
    # Unknown (in reply to RCPT TO command)" read as the next recipient's "Mailbox Full", and
    # "550 5.1.1 User Unknown" (lhost-postfix-13, lhost-sendmail-02)
    ("sisimai set-of-emails", "Sisimai (Debian)"): (0.98, 0.99, 0.95, 2),
}


def sisimai_5_verdicts(folder: Path) -> "dict[str, list[Verdict] | None]":
    return read_verdicts(SISIMAI_5_VERDICTS.read_text().splitlines())


def _cases() -> list[tuple[str, Path, str, References]]:
    bsd = SISIMAI / "maildir" / "bsd"  # the repository as published: one message a file
    return [
        ("flufl.bounce", FLUFL, "its own table", flufl_verdicts),
        ("flufl.bounce", FLUFL, "Sisimai (Debian)", sisimai_verdicts),
        ("sisimai set-of-emails", bsd, "Sisimai 5.1", sisimai_5_verdicts),
        ("sisimai set-of-emails", bsd, "Sisimai (Debian)", sisimai_verdicts),
    ]


@pytest.mark.parametrize("corpus, folder, reference, verdicts", _cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_bounce_corpus_against_the_reference(corpus: str, folder: Path, reference: str, verdicts: References,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert (folder / ".complete").exists() or folder != FLUFL, \
        f"{folder} is missing: `make setup-test` (scripts/setup.sh test) puts flufl.bounce's corpus there"
    figures: Figures = measure(folder, verdicts(folder), f"{corpus} vs {reference}")
    with capsys.disabled():
        print(f"\n{figures.line()}")
    recall, precision, agreement, soft_suppressed = FLOORS[(corpus, reference)]
    misses = "\n".join(figures.misses[:80])
    assert figures.judged > 0 and figures.expected > 0
    assert figures.recall >= recall, misses
    assert figures.precision >= precision, misses
    assert figures.agreement >= agreement, misses
    assert figures.soft_suppressed <= soft_suppressed, misses
