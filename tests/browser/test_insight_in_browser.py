"""Send-time insight as staff see it: a recipient's hours and the aggregate."""

import itertools
from datetime import time, timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from notifier.models import Delivery, DeliveryEvent, Recipient
from notifier.services.local_times import next_local_time, zone_info
from tests.browser.conftest import log_in, screenshot_path
from tests.notifier.factories import DeliveryFactory

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]
PASSWORD = "a-long-browser-test-password"


def test_send_time_insight_pages(page, live_server, marketing_group):
    from playwright.sync_api import expect

    keys = itertools.count()
    now = timezone.now()
    people = []
    for i, (zone, hour, opens) in enumerate(
        [("Europe/Berlin", 8, 5), ("Asia/Tokyo", 20, 3), ("America/New_York", 8, 4), ("UTC", 13, 1)]
    ):
        person = Recipient.objects.create(email=f"r{i}@example.com", time_zone=zone)
        delivery = DeliveryFactory(recipient=person, status=Delivery.Status.SENT)
        first = next_local_time(after=now - timedelta(days=10), zone=zone_info(zone), at=time(hour))
        for day in range(opens):
            DeliveryEvent.objects.create(
                delivery=delivery,
                event_key=f"test:{next(keys)}",
                event_type="opened" if day % 2 else "clicked",
                email=person.email,
                occurred_at=first + timedelta(days=day, minutes=7),
            )
        people.append(person)

    User.objects.create_user("mia", password=PASSWORD, is_staff=True).groups.add(marketing_group)
    page.set_viewport_size({"width": 1366, "height": 900})
    log_in(page, live_server, "mia", PASSWORD)

    page.goto(f"{live_server.url}/admin/notifier/recipient/{people[0].pk}/change/")
    field = page.locator(".field-send_time_insight")
    expect(field).to_contain_text("Best hour: 08:00 their time (Europe/Berlin), from 5 opens")
    field.screenshot(path=screenshot_path("insight-recipient"))

    page.goto(f"{live_server.url}/admin/notifier/recipient/")
    page.get_by_role("link", name="Send-time insight").click()
    expect(page.locator("#content-main")).to_contain_text(
        "13 opens and clicks of 4 recipients; busiest: 08:00"
    )
    expect(page.locator("#content-main")).to_contain_text("3 recipients have a best hour")
    page.screenshot(path=screenshot_path("insight-aggregate"), full_page=True)
