"""Structured logs: JSON lines, and the delivery and run ids on every line about a send."""

import io
import json
import logging
import logging.config

import pytest

from config.logging import build_logging, log_context
from notifier.models import Delivery, DeliveryGroup
from notifier.sending import deliveries_send_batch
from tests.notifier.factories import RecipientFactory


@pytest.fixture
def json_log():
    """The production logging config, writing into a buffer."""
    stream = io.StringIO()
    config = build_logging(fmt="json", level="INFO")
    logging.config.dictConfig(config)
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)
    yield stream
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


def _lines(stream) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_the_bound_ids(json_log):
    logger = logging.getLogger("notifier.test")
    with log_context(delivery_id=7, run_id=3):
        logger.info("inside")
        with log_context(campaign_id=9):
            logger.warning("nested")
    logger.info("outside")
    inside, nested, outside = _lines(json_log)
    assert inside["message"] == "inside" and inside["level"] == "INFO"
    assert (inside["delivery_id"], inside["run_id"]) == (7, 3)
    assert (nested["delivery_id"], nested["run_id"], nested["campaign_id"]) == (7, 3, 9)
    assert "delivery_id" not in outside and "context" not in outside


@pytest.mark.django_db
@pytest.mark.parametrize("batch_size, outcomes", [(1, {"retry", "sent"}), (10, {"retry"})])
def test_every_line_about_a_send_names_its_delivery_and_run(
    json_log, fake_esp, settings, batch_size, outcomes
):
    """One message per request, or both in one batch request: either way
    each message's line names its delivery and run."""
    transports = {name: dict(config) for name, config in settings.NOTIFIER_TRANSPORTS.items()}
    transports["esp"]["BATCH_SIZE"] = batch_size
    settings.NOTIFIER_TRANSPORTS = transports
    recipients = [RecipientFactory() for _ in range(2)]
    DeliveryGroup.objects.create(pk=41, owner="test")
    deliveries = [
        Delivery.objects.create(
            recipient=r,
            subject="s",
            text_body="t",
            run_id=41,
            status="pending",
            next_attempt_at="2000-01-01T00:00:00Z",
        )
        for r in recipients
    ]
    fake_esp.faults["script"] = [{"status": 503}]  # the first request fails, transiently
    deliveries_send_batch(delivery_ids=[d.id for d in deliveries])

    lines = [line for line in _lines(json_log) if line["logger"].startswith("notifier")]
    sends = [line for line in lines if line["message"].startswith("Handed to")]
    assert len(sends) == 2
    assert {line["delivery_id"] for line in sends} == {d.id for d in deliveries}
    assert {line["delivery"] for line in sends} == {str(d.uuid) for d in deliveries}
    assert all(line["run_id"] == 41 and line["claim"] for line in lines)
    assert {line["message"].split(": ")[1].split()[0] for line in sends} == outcomes


def test_plain_format_shows_the_ids(capsys):
    stream = io.StringIO()
    config = build_logging(fmt="plain", level="INFO")
    logging.config.dictConfig(config)
    logging.getLogger().handlers[0].setStream(stream)
    try:
        with log_context(delivery_id=5):
            logging.getLogger("x").info("hello")
    finally:
        from django.conf import settings

        logging.config.dictConfig(settings.LOGGING)
    assert "x [delivery_id=5] hello" in stream.getvalue()


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        build_logging(fmt="xml", level="INFO")
