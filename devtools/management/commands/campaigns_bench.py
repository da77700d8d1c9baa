"""Print how fast a large CSV imports and a large run materialises.

Everything happens in one transaction that is rolled back at the end, so the
database is left as it was. No Celery task is published.
"""

import resource
import tempfile
import time
import tracemalloc

from django.core.management.base import BaseCommand
from django.db import transaction

from campaigns.models import Campaign, CampaignRun, ContactList
from campaigns.services.contacts import contacts_import_csv
from campaigns.services.runs import run_materialise
from notifier.models import Template


class _Rollback(Exception):
    pass


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Command(BaseCommand):
    help = "Import N generated CSV rows into a list, then materialise a run to it (rolled back)."

    def add_arguments(self, parser):
        parser.add_argument("--rows", type=int, default=100_000)

    def handle(self, *args, rows: int, **options):
        with tempfile.TemporaryFile() as fh:
            fh.write(b"email,name,plan,city\n")
            for n in range(rows):
                fh.write(f"bench{n}@example.com,Bench Person {n},pro,City {n % 50}\n".encode())
            size = fh.tell()
            fh.seek(0)
            try:
                with transaction.atomic():
                    self._run(fh, rows, size)
                    raise _Rollback
            except _Rollback:
                self.stdout.write("Rolled back: the database is unchanged.")

    def _run(self, fh, rows: int, size: int) -> None:
        contact_list = ContactList.objects.create(name="bench list (rolled back)")
        rss = _max_rss_mib()
        start = time.perf_counter()
        report = contacts_import_csv(stream=fh, contact_list=contact_list)
        seconds = time.perf_counter() - start
        self.stdout.write(
            f"CSV import: {report.imported} of {rows} rows ({size / 1e6:.1f} MB) in "
            f"{seconds:.1f}s = {report.imported / seconds:,.0f} rows/s; "
            f"errors {report.error_count}; max RSS {rss:.0f} -> {_max_rss_mib():.0f} MiB"
        )
        template = Template.objects.create(
            name="bench template (rolled back)",
            kind=Template.Kind.CAMPAIGN,
            subject="Hi",
            html_body="<p>Hi</p>",
        )
        campaign = Campaign.objects.create(name="bench campaign (rolled back)", template=template)
        campaign.contact_lists.set([contact_list])
        run = CampaignRun.objects.create(campaign=campaign)
        tracemalloc.start()
        start = time.perf_counter()
        created = run_materialise(run=run)
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        self.stdout.write(
            f"Run materialised: {created} deliveries in {seconds:.1f}s with one INSERT ... SELECT; "
            f"Python peak allocation {peak / 1024:.0f} KiB"
        )
