"""OpenTelemetry traces, off unless an exporter is configured.

With ``OTEL_EXPORTER_OTLP_ENDPOINT`` set (an OTLP/HTTP collector: Jaeger,
Tempo, Honeycomb...), or ``OTEL_TRACES_EXPORTER=console`` (one JSON object per
span on stdout, for a look without a collector), each process traces:

* web: every request (opentelemetry-instrumentation-django);
* Celery: publishing a task and running it, the trace context carried in the
  task's headers (opentelemetry-instrumentation-celery), so an API request,
  the batch task it queued and the transport call share one trace;
* the engine: one span per hand-off to a transport (``notifier.sending.wire``,
  attributes ``notifier.delivery``, ``notifier.transport``, ``notifier.outcome``).

Without either variable nothing is installed and the engine's spans are the
OpenTelemetry API's no-ops. ``OTEL_SERVICE_NAME`` names the service (default
``notifier-web`` / ``notifier-worker``).
"""

import os

_installed_in: int | None = None  # the process id that installed it (forked children redo it)


def tracing_enabled() -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_TRACES_EXPORTER") == "console"
    )


def _exporter():
    if os.environ.get("OTEL_TRACES_EXPORTER") == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + os.linesep)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # reads OTEL_EXPORTER_OTLP_ENDPOINT and _HEADERS itself


def tracing_setup(*, service: str, django: bool = False, celery: bool = False) -> bool:
    """Install a tracer provider and the instrumentations (once per process).
    Returns whether tracing is on."""
    global _installed_in
    if _installed_in == os.getpid():
        return True
    if not tracing_enabled():
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    console = os.environ.get("OTEL_TRACES_EXPORTER") == "console"
    # The console exporter writes each span as it ends (a killed process loses
    # nothing); a collector gets them in batches off the request path.
    processor = SimpleSpanProcessor if console else BatchSpanProcessor
    provider.add_span_processor(processor(_exporter()))
    trace.set_tracer_provider(provider)
    if _installed_in is None:  # instrumentations survive a fork; the provider's thread does not
        if django:
            from opentelemetry.instrumentation.django import DjangoInstrumentor

            DjangoInstrumentor().instrument()
        if celery:
            from opentelemetry.instrumentation.celery import CeleryInstrumentor

            CeleryInstrumentor().instrument()
    _installed_in = os.getpid()
    return True
