"""A Django project whose own tests run against beanmail's test backend, without beanstalkd:
what docs/webapps.md shows a Django developer (tests/test_testing_backend.py runs them)."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
