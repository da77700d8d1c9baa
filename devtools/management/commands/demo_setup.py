from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from devtools.demo import demo_campaigns_setup
from notifier.models import Recipient, Template, Topic
from notifier.services.recipients import normalize_email

DEMO_USER = "admin"
DEMO_PASSWORD = "admin"

WELCOME_HTML = """<h1>Welcome, {{ recipient.first_name|default:"friend" }}!</h1>
<p>Thanks for joining {{ product }}. Here is what you can do next:</p>
<ul>{% for step in steps %}<li>{{ step }}</li>{% endfor %}</ul>
"""


class Command(BaseCommand):
    help = "Create the demo admin user and demo data (development only; idempotent)."

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError("demo_setup creates a known password: it only runs with DEBUG on.")
        with transaction.atomic():
            user_model = get_user_model()
            if not user_model.objects.filter(username=DEMO_USER).exists():
                user_model.objects.create_superuser(DEMO_USER, "admin@example.com", DEMO_PASSWORD)
            Template.objects.get_or_create(
                name="Welcome",
                defaults={
                    "subject": "Welcome to {{ product }}, {{ recipient.first_name }}",
                    "html_body": WELCOME_HTML,
                },
            )
            for i, (name, tz) in enumerate(
                [
                    ("Ada Lovelace", "Europe/London"),
                    ("Grace Hopper", "America/New_York"),
                    ("Katherine Johnson", "America/Chicago"),
                    ("Alan Turing", "Europe/London"),
                    ("Hedy Lamarr", "Europe/Vienna"),
                ]
            ):
                email = normalize_email(f"{name.split()[0].lower()}@example.com")
                Recipient.objects.get_or_create(
                    email=email,
                    defaults={
                        "name": name,
                        "time_zone": tz,
                        "attributes": {"plan": ["free", "pro"][i % 2]},
                    },
                )
            Topic.objects.get_or_create(
                key="comments",
                defaults={"name": "Comments on your posts", "default_frequency": "hourly"},
            )
        demo_campaigns_setup()
        site = settings.SITE_URL
        self.stdout.write(
            self.style.SUCCESS(f"Admin: {site}/admin/  login: {DEMO_USER} / {DEMO_PASSWORD}")
        )
        self.stdout.write("Fake ESP inbox: http://127.0.0.1:8025/_fake/messages")
