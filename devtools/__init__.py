"""Development doubles and tools: the fake ESP, the SMTP sink, demo data and
the benchmark commands.

Installed by the ``local``, ``test`` and ``bench`` settings only; production
never installs it and no production app imports it.
"""
