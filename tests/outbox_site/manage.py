#!/usr/bin/env python
"""manage.py of the outbox test project: `manage.py migrate` creates the outbox table."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: producer, tests

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.outbox_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
