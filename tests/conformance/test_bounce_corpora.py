"""The bounce conformance tier: real bounces nobody here wrote, read by the parser and held
against a reference's verdicts, one printed line of figures per corpus and reference.

Corpora: flufl.bounce's test messages (Apache-2.0), which ``scripts/setup.sh test`` takes from
its sdist on PyPI into var/corpora/flufl-bounce, always; Sisimai's set-of-emails (BSD-2) when
it is at ../shared/corpora/sisimai-set-of-emails. References: Sisimai's verdicts, from Debian's
libsisimai-perl run over the corpus (``scripts/sisimai_verdicts.pl``), and for flufl.bounce's
messages its own table of recipients. The floors below are the figures reached, to hold them;
``python scripts/bounce_corpus.py FOLDER --misses`` lists every disagreement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from worker.feedback.corpus import Figures, Verdict, flufl_verdicts, measure, sisimai_verdicts

ROOT = Path(__file__).resolve().parents[2]
FLUFL = ROOT / "var" / "corpora" / "flufl-bounce"
SISIMAI = ROOT.parent / "shared" / "corpora" / "sisimai-set-of-emails"

References = Callable[[Path], "dict[str, list[Verdict] | None]"]
# corpus, reference -> floors: recall, precision, hard/soft agreement; and the most soft bounces
# suppressed at once
FLOORS: dict[tuple[str, str], tuple[float, float, float, int]] = {
    ("flufl.bounce", "its own table"): (0.96, 0.96, 1.0, 0),
    ("flufl.bounce", "Sisimai (Debian)"): (0.95, 0.95, 0.96, 0),
    ("sisimai set-of-emails", "Sisimai (Debian)"): (0.98, 0.99, 0.95, 8),
}


def _sisimai_folder() -> Path:
    bsd = SISIMAI / "maildir" / "bsd"  # the repository as published: one message a file under maildir/bsd
    return bsd if bsd.is_dir() else SISIMAI


def _cases() -> list[tuple[str, Path, str, References]]:
    cases: list[tuple[str, Path, str, References]] = [
        ("flufl.bounce", FLUFL, "its own table", flufl_verdicts),
        ("flufl.bounce", FLUFL, "Sisimai (Debian)", sisimai_verdicts),
    ]
    if SISIMAI.is_dir():
        cases.append(("sisimai set-of-emails", _sisimai_folder(), "Sisimai (Debian)", sisimai_verdicts))
    return cases


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
