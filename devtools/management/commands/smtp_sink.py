import time

from django.core.management.base import BaseCommand

from devtools.smtp_sink import start_sink


class Command(BaseCommand):
    help = "Run a local SMTP sink that accepts and counts every message (development, tests)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=1025)
        parser.add_argument("--record", default=None, help="append a JSON line per message here")

    def handle(self, *args, host, port, record, **options):
        controller, handler = start_sink(host, port, record)
        self.stdout.write(f"SMTP sink on {host}:{port}")
        try:
            while True:
                time.sleep(10)
                self.stdout.write(f"{len(handler.messages)} messages received")
        except KeyboardInterrupt:
            controller.stop()
