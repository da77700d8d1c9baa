#!/usr/bin/env python
import os
import sys


def main() -> None:
    # Production unless told otherwise: a process started by mistake refuses to
    # run without production secrets instead of running with DEBUG on.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
