#!/usr/bin/env python3
"""Print how beanmail reads a folder of real bounces against Sisimai's verdicts for them.

    python scripts/bounce_corpus.py FOLDER [--verdicts FILE.jsonl] [--misses]

Without --verdicts it runs scripts/sisimai_verdicts.pl with the Sisimai perl finds
(Debian: apt-get install libsisimai-perl; a newer checkout: PERL5LIB=CHECKOUT/lib).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.feedback.corpus import measure, read_verdicts, sisimai_verdicts  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--verdicts", type=Path, help="Sisimai's verdicts as sisimai_verdicts.pl writes them")
    ap.add_argument("--misses", action="store_true", help="also list every disagreement")
    args = ap.parse_args()
    verdicts = (read_verdicts(args.verdicts.read_text().splitlines()) if args.verdicts
                else sisimai_verdicts(args.folder))
    figures = measure(args.folder, verdicts, args.folder.name)
    if args.misses:
        print("\n".join(figures.misses))
    print(figures.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
