"""OpenTelemetry: an API request, the batch task it queued (in a real worker
process) and the transport call share one trace. Off unless configured."""

import json

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from config.tracing import tracing_enabled
from notifier.models import Delivery
from tests.api.conftest import ApiClient
from tests.conftest import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

_provider = TracerProvider()
_exported = InMemorySpanExporter()
_provider.add_span_processor(SimpleSpanProcessor(_exported))


@pytest.fixture
def traced_web():
    """This process as a traced web process (instrumented for this test only)."""
    trace.set_tracer_provider(_provider)  # once per process; later calls are ignored
    DjangoInstrumentor().instrument(tracer_provider=_provider)
    CeleryInstrumentor().instrument(tracer_provider=_provider)
    _exported.clear()
    yield _exported
    CeleryInstrumentor().uninstrument()
    DjangoInstrumentor().uninstrument()


def _worker_spans(log_path, start: int) -> list[dict]:
    spans = []
    for line in log_path.read_text(errors="replace")[start:].splitlines():
        if '"trace_id"' in line and "{" in line:
            spans.append(json.loads(line[line.index("{") :]))
    return spans


def test_tracing_is_off_unless_an_exporter_is_configured(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert not tracing_enabled()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert tracing_enabled()


def test_one_trace_from_the_api_request_to_the_transport_call(
    traced_web, celery_worker_process, start_worker, fake_esp
):
    from api.services import api_token_create

    # Only the traced worker consumes the transactional queue during the test.
    celery_worker_process.stop()
    worker = None
    try:
        worker = start_worker(
            "traced",
            queues="transactional",
            OTEL_TRACES_EXPORTER="console",
            OTEL_SERVICE_NAME="notifier-worker",
        )
        start = worker.log_path.stat().st_size
        _token, secret = api_token_create(service="billing")
        response = ApiClient(secret).post(
            "/api/v1/messages", {"to": "ann@example.com", "subject": "Receipt", "text": "Thanks"}
        )
        assert response.status_code == 202
        delivery = Delivery.objects.get()
        wait_for(lambda: Delivery.objects.get().status == "sent", timeout=30)

        (request,) = [s for s in traced_web.get_finished_spans() if s.kind == trace.SpanKind.SERVER]
        trace_id = f"0x{request.context.trace_id:032x}"
        sends = wait_for(
            lambda: [
                s
                for s in _worker_spans(worker.log_path, start)
                if s["name"] == "notifier.transport.send_batch"  # the ESP's batch request
            ],
            timeout=15,
        )
        (send,) = sends
        assert send["context"]["trace_id"] == trace_id
        assert list(send["attributes"]["notifier.deliveries"]) == [str(delivery.uuid)]
        assert list(send["attributes"]["notifier.outcomes"]) == ["sent"]
        assert send["resource"]["attributes"]["service.name"] == "notifier-worker"
        # The task's span is exported when the task ends, after the request's.
        task = wait_for(
            lambda: [
                s
                for s in _worker_spans(worker.log_path, start)
                if s["name"] == "run/notifier.send_deliveries"
            ],
            timeout=15,
        )
        assert task[0]["context"]["trace_id"] == trace_id
        assert send["parent_id"] == task[0]["context"]["span_id"]
    finally:
        if worker is not None:
            worker.stop()
        celery_worker_process.start()
