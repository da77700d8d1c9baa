import pytest
from django.contrib.auth.models import User


@pytest.fixture
def fan_outs(monkeypatch):
    """Record fan-outs instead of publishing chords (for tests without a worker)."""
    published = []
    monkeypatch.setattr(
        "campaigns.services.runs.run_fan_out", lambda *, run_id: published.append(run_id) or 0
    )
    return published


@pytest.fixture
def marketer(client, marketing_group):
    """The test client, logged in as a staff member of the Marketing group (and nothing else)."""
    user = User.objects.create_user("mia", password="pw", is_staff=True)
    user.groups.add(marketing_group)
    client.force_login(user)
    return client
