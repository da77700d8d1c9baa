from django.conf import settings
from django.core.management.base import BaseCommand

from devtools.fake_esp import FakeESPServer, FakeESPState


class Command(BaseCommand):
    help = "Run the local fake ESP (Postmark API) that development and tests send to."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8025)
        parser.add_argument(
            "--record", default=None, help="Append accepted messages to this JSONL file."
        )
        parser.add_argument("--verbose", action="store_true")
        parser.add_argument(
            "--light", action="store_true", help="Keep only recipient and metadata (benchmarks)."
        )

    def handle(self, *args, host, port, record, verbose, light, **options):
        token = settings.ANYMAIL.get("POSTMARK_SERVER_TOKEN") or None
        server = FakeESPServer((host, port), FakeESPState(token, record, light), verbose=verbose)
        self.stdout.write(
            f"Fake ESP (Postmark API) on {server.url} - every message it accepts is in the "
            f"development inbox: {server.url}_fake/inbox",
        )
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
