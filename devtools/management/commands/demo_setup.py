from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from devtools.demo import demo_campaigns_setup
from notifier.models import Recipient, SenderIdentity, Template, Topic
from notifier.services.notifications import notify
from notifier.services.recipients import normalize_email
from notifier.services.templates import template_save

DEMO_USER = "admin"
DEMO_PASSWORD = "admin"

WELCOME_HTML = """<h1>Welcome, {{ recipient.first_name|default:"friend" }}!</h1>
<p>Thanks for joining {{ product }}. Here is what you can do next:</p>
<ul>{% for step in steps %}<li>{{ step }}</li>{% endfor %}</ul>
"""


DIGEST_ITEM = '{{ data.author }} commented on <a href="{{ data.url }}">{{ data.post }}</a>'
DEMO_COMMENTS = [
    ("Grace Hopper", "Notes on the Analytical Engine", "ada@example.com"),
    ("Alan Turing", "Notes on the Analytical Engine", "ada@example.com"),
    ("Ada Lovelace", "Nanoseconds, explained with wire", "grace@example.com"),
    ("Hedy Lamarr", "Computing machinery and intelligence", "alan@example.com"),
]


class Command(BaseCommand):
    help = "Create the demo admin user and demo data (development only; idempotent)."

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError("demo_setup creates a known password: it only runs with DEBUG on.")
        with transaction.atomic():
            user_model = get_user_model()
            if not user_model.objects.filter(username=DEMO_USER).exists():
                user_model.objects.create_superuser(DEMO_USER, "admin@example.com", DEMO_PASSWORD)
            if not Template.objects.filter(name="Welcome").exists():
                template_save(
                    template=Template(
                        name="Welcome",
                        kind=Template.Kind.CAMPAIGN,
                        subject="Welcome to {{ product }}, {{ recipient.first_name }}",
                        html_body=WELCOME_HTML,
                    )
                )
            SenderIdentity.objects.get_or_create(
                email="news@example.com", defaults={"name": "Notifier demo"}
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
            topic, _ = Topic.objects.get_or_create(
                key="comments",
                defaults={
                    "name": "Comments on your posts",
                    "description": "Someone commented on something you wrote.",
                    "default_frequency": "hourly",
                    "digest_item": DIGEST_ITEM,
                },
            )
            # A few comments waiting for the next hourly digest ("Send digest
            # now" on the topic shows it at once). Keyed: made once.
            for n, (author, post, email) in enumerate(DEMO_COMMENTS):
                recipient = Recipient.objects.filter(email=email).first()
                if recipient is not None:
                    notify(
                        recipient,
                        topic,
                        {"author": author, "post": post, "url": f"{settings.SITE_URL}/posts/{n}/"},
                        idempotency_key=f"demo-comment-{n}",
                    )
        demo_campaigns_setup()
        site = settings.SITE_URL
        self.stdout.write(
            self.style.SUCCESS(f"Admin: {site}/admin/  login: {DEMO_USER} / {DEMO_PASSWORD}")
        )
        inbox = settings.ANYMAIL["POSTMARK_API_URL"].rstrip("/") + "/_fake/inbox"
        self.stdout.write(
            self.style.SUCCESS(f"Development inbox (every email sent lands here): {inbox}")
        )
