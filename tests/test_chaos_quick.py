"""The short fault-injection run inside the suite: a 2,000-recipient campaign,
two worker SIGKILLs and one Redis restart on the real stack (scenarios 1 and
2 of ``--quick``; ``make chaos ARGS="--quick"`` runs the others too). Fails the suite
if any message is lost or sent twice (see chaos/run.py, ``make chaos``)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.postgresql
@pytest.mark.skipif(
    not shutil.which("redis-server"), reason="needs redis-server (apt-get install redis-server)"
)
def test_quick_chaos_run_loses_and_duplicates_nothing():
    d = connection.settings_dict
    auth = d["USER"] + (f":{d['PASSWORD']}" if d.get("PASSWORD") else "")
    database_url = (
        f"postgres://{auth}@{d['HOST'] or '127.0.0.1'}:{d['PORT'] or 5432}/notifier_chaos_test"
    )
    result = subprocess.run(
        [sys.executable, "-m", "chaos.run", "--quick", "--scenarios", "1,2"],
        cwd=ROOT,
        env={**os.environ, "CHAOS_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=900,
    )
    table = result.stdout[result.stdout.find("Notifier chaos run") :]
    print(table)
    assert result.returncode == 0, table or result.stderr[-3000:]
    assert "2 passed, 0 failed" in table
    rows = re.findall(
        r"^\d .*?\s(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/(\d+)\s+(\d+|-)\s+[\d.]+\s",
        table,
        re.M,
    )
    assert len(rows) == 2, table
    for recipients, once, dupes, missing, before, after, bound in rows:
        assert int(recipients) == 2000
        assert (int(dupes), int(missing)) == (0, 0)
        # At most one request per killed worker was in doubt (the documented
        # bound: two kills, the ESP's batch size each), and the ESP's message
        # search resolved every one.
        limit = 0 if bound == "-" else int(bound)
        assert int(before) <= limit <= 2 * settings.NOTIFIER_TRANSPORTS["esp"]["BATCH_SIZE"]
        assert (int(after), int(once)) == (0, 2000)
