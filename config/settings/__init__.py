"""Settings modules: ``local`` (make run), ``test`` (make test), ``production``.

All of them start from ``base``; only ``config.env`` reads the environment.
"""
