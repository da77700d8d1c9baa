import pytest


@pytest.fixture
def fan_outs(monkeypatch):
    """Record fan-outs instead of publishing chords (for tests without a worker)."""
    published = []
    monkeypatch.setattr(
        "campaigns.services.runs.run_fan_out", lambda *, run_id: published.append(run_id) or 0
    )
    return published
