"""The journeys part of ``make bench``: journey steps per second on the workers.

N bench recipients enter a two-step journey (send an email, then set an
attribute). The driver plays beat (a journeys tick every half second); the
steps run as batch tasks on the campaign workers, the emails leave through
the fake ESP. Measured in the same run:

* **journeys alone**: steps/s from the first tick to the last enrollment done,
  and how long until the last journey email reached the ESP;
* **campaign alone**: a campaign to the same N recipients, messages/s;
* **together**: the campaign and a second journey run at once while
  transactional messages go through the public API (``POST /api/v1/messages``,
  ten a second) to a worker of their own, the campaign workers at a lower CPU
  priority (as the urgent part runs them): both rates, and the transactional
  p50/p99 (target p99 <= 1 s).

Every figure is checked: each enrollment ran each step exactly once (the
step-run rows, the attribute on every recipient), each journey email is one
Delivery and reached the ESP once per recipient. A run that lost or
duplicated anything is reported as such instead of a speed.
"""

import statistics
import threading
import time
from collections import Counter
from datetime import datetime

from django.db import close_old_connections, connections

from bench.campaign import audience_list, ensure_recipients
from bench.stack import Row
from journeys.models import Journey, JourneyEnrollment, JourneyStep, JourneyStepRun
from journeys.services.enrollments import enrollments_create
from journeys.services.execution import journeys_tick
from journeys.services.versions import journey_activate
from notifier.models import Delivery, Recipient, Template

TICK_SECONDS = 0.5


def journey_template(label: str) -> Template:
    template, _ = Template.objects.update_or_create(
        name=f"Bench journey {label}",
        defaults={
            "kind": Template.Kind.CAMPAIGN,
            "subject": f"Journey {label}: welcome, {{{{ recipient.first_name }}}}",
            "html_body": "<p>Hello {{ recipient.name }}, welcome on the "
            "{{ recipient.attributes.plan }} plan.</p>",
            "text_body": "",
        },
    )
    return template


def two_step_journey(label: str) -> Journey:
    """Send an email, then set the attribute ``bench_<label>``."""
    journey = Journey.objects.create(name=f"Bench journey {label} {time.time_ns()}")
    JourneyStep.objects.bulk_create(
        [
            JourneyStep(
                journey=journey,
                position=1,
                kind=JourneyStep.Kind.SEND,
                template=journey_template(label),
            ),
            JourneyStep(
                journey=journey,
                position=2,
                kind=JourneyStep.Kind.SET_ATTRIBUTE,
                attribute=f"bench_{label}",
                value="done",
            ),
        ]
    )
    return journey_activate(journey=journey)


def _enter(journey: Journey, n: int) -> float:
    """Enter the first ``n`` bench recipients; returns the seconds it took."""
    ids = audience_list(n).memberships.values_list("recipient_id", flat=True)
    started = time.monotonic()
    entered = enrollments_create(journey=journey, entries=dict.fromkeys(ids, ""))
    if entered != n:
        raise RuntimeError(f"{entered} of {n} recipients entered the journey")
    return time.monotonic() - started


class Beat(threading.Thread):
    """The journeys tick every ``TICK_SECONDS``, as beat would run it."""

    def __init__(self):
        super().__init__(daemon=True)
        self.halt = threading.Event()
        self.error: Exception | None = None

    def run(self):
        try:
            while not self.halt.is_set():
                journeys_tick()
                self.halt.wait(TICK_SECONDS)
        except Exception as exc:  # reported by the caller
            self.error = exc
        finally:
            close_old_connections()
            connections.close_all()

    def stop(self):
        self.halt.set()
        self.join(60)
        if self.error:
            raise self.error


def _journey_finished_at(journey: Journey, n: int, timeout: float) -> float:
    live = JourneyEnrollment.objects.filter(
        journey=journey, state__in=JourneyEnrollment.LIVE_STATES
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not live.exists():
            return time.monotonic()
        time.sleep(0.2)
    raise TimeoutError(f"journey {journey.pk}: {live.count()} of {n} still inside after {timeout}s")


def _journey_mails(journey: Journey):
    return Delivery.objects.filter(
        idempotency_key__startswith="journey:", template__in=journey_templates(journey)
    )


def journey_templates(journey: Journey) -> list[int]:
    return list(journey.steps.exclude(template=None).values_list("template_id", flat=True))


def _mails_sent_at(journey: Journey, timeout: float) -> float:
    mails = _journey_mails(journey)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not mails.filter(status__in=[Delivery.Status.PENDING, Delivery.Status.SENDING]).exists():
            return time.monotonic()
        time.sleep(0.2)
    raise TimeoutError(f"journey {journey.pk}: emails still unsent after {timeout}s")


def journey_check(stack, journey: Journey, n: int, messages: list[dict]) -> str:
    """'ok' when every recipient ran each step once and got the email once."""
    steps = list(journey.steps.order_by("position"))
    runs = Counter(
        JourneyStepRun.objects.filter(enrollment__journey=journey)
        .values_list("step_id", flat=True)
        .order_by()
    )
    for step in steps:
        if runs.get(step.pk, 0) != n:
            return f"LOST: step {step.position} ran {runs.get(step.pk, 0)} times for {n} recipients"
    states = Counter(journey.enrollments.values_list("state", flat=True).order_by())
    if states != {JourneyEnrollment.State.DONE: n}:
        return f"LOST: enrollments {dict(states)}"
    attribute = steps[1].attribute
    marked = Recipient.objects.filter(**{f"attributes__{attribute}": "done"}).count()
    if marked != n:
        return f"LOST: attribute set on {marked} of {n} recipients"
    mails = Counter(_journey_mails(journey).values_list("status", flat=True).order_by())
    if mails != {Delivery.Status.SENT: n}:
        return f"LOST: journey emails {dict(mails)}"
    received = _received_by_recipient(messages, _journey_mails(journey))
    if len(received) < n:
        return f"LOST: {n - len(received)} recipients got no journey email at the ESP"
    if max(received.values()) > 1:
        return f"DUPLICATED: {sum(c - 1 for c in received.values())} extra journey emails"
    return "ok"


def _received_by_recipient(messages: list[dict], deliveries) -> Counter:
    """How many of ``deliveries``' messages each address received at the ESP."""
    uuids = {str(u) for u in deliveries.values_list("uuid", flat=True)}
    return Counter(m["To"] for m in messages if m["Metadata"].get("delivery") in uuids)


def _run_journey(stack, label: str, n: int) -> dict:
    """Enter n recipients into a fresh journey, tick until it finished."""
    journey = two_step_journey(label)
    enter_seconds = _enter(journey, n)
    beat = Beat()
    started = time.monotonic()
    beat.start()
    try:
        done = _journey_finished_at(journey, n, timeout=max(300, n / 20))
        sent = _mails_sent_at(journey, timeout=max(300, n / 20))
    finally:
        beat.stop()
    return {
        "journey": journey,
        "enter seconds": enter_seconds,
        "seconds": done - started,
        "mail seconds": sent - started,
        "steps": 2 * n,
    }


def _journey_row(label: str, result: dict, n: int, verdict: str) -> Row:
    rate = result["steps"] / result["seconds"] if verdict == "ok" else 0.0
    return Row(
        "journeys",
        label,
        {
            "N": n,
            "enter s": round(result["enter seconds"], 2),
            "steps s": round(result["seconds"], 1),
            "steps/s": round(rate, 1),
            "last email s": round(result["mail seconds"], 1),
        },
        verdict,
    )


def _transactional_stream(
    committed: dict[str, float], halt: threading.Event, errors: list[str]
) -> None:
    """Transactional messages through the public API (``POST /api/v1/messages``),
    ten a second, until halted; ``committed`` maps each one's id to when the
    API answered (it is committed by then)."""
    from django.test import Client

    from api.services import api_token_create

    _token, secret = api_token_create(service="bench")
    client = Client(HTTP_HOST="localhost", headers={"Authorization": f"Bearer {secret}"})
    try:
        i = 0
        while not halt.is_set():
            response = client.post(
                "/api/v1/messages",
                {"to": f"journey-urgent{i}@bench.example", "subject": "Code", "text": f"{i}"},
                content_type="application/json",
                headers={"Idempotency-Key": f"bench-journey-{time.time_ns()}"},
            )
            if response.status_code != 202:
                errors.append(f"the API answered {response.status_code}: {response.content[:200]}")
                return
            committed[response.json()["id"]] = time.time()
            i += 1
            halt.wait(0.1)
    except Exception as exc:  # reported in the table
        errors.append(repr(exc))
    finally:
        connections.close_all()


def _latencies(messages: list[dict], committed: dict[str, float]) -> list[float]:
    return sorted(
        datetime.fromisoformat(m["ReceivedAt"]).timestamp() - committed[m["Metadata"]["delivery"]]
        for m in messages
        if m.get("Metadata", {}).get("delivery") in committed
    )


def journeys(stack, args) -> list[Row]:
    from bench.parts import _distinct_check, launch_campaign, ours, wait_run_done

    n = args.journey_n
    ensure_recipients(n)
    audience_list(n)
    rows: list[Row] = []
    workers = stack.start_workers("campaigns", "campaigns,maintenance", args.w)
    try:
        # Journeys alone.
        stack.esp_reset()
        connections.close_all()
        result = _run_journey(stack, "alone", n)
        verdict = journey_check(stack, result["journey"], n, stack.esp_messages())
        rows.append(_journey_row("journey alone (send, set attribute)", result, n, verdict))

        # A campaign alone, on the same workers.
        stack.esp_reset()
        campaign = ours(stack, "esp", n, args.w, workers=workers)
        verdict = _distinct_check(stack, n)
        rows.append(
            Row(
                "journeys",
                "campaign alone",
                {
                    "N": n,
                    "seconds": round(campaign["seconds"], 1),
                    "msg/s": round(n / campaign["seconds"], 1) if verdict == "ok" else 0.0,
                },
                verdict,
            )
        )
    finally:
        stack.stop(workers, "campaign worker (journeys part)")
    # Together, transactional mail on its own worker; the campaign workers at
    # a lower CPU priority, as the urgent part runs them (deploy/README.md).
    workers = stack.start_workers("campaigns", "campaigns,maintenance", args.w, nice=10)
    try:
        rows += _together(stack, args, n, launch_campaign, wait_run_done)
    finally:
        stack.stop(workers, "campaign worker (journeys part)")
    return rows


def _together(stack, args, n, launch_campaign, wait_run_done) -> list[Row]:
    stack.esp_reset()
    transactional = stack.start_workers("urgent", "transactional", 1)
    connections.close_all()
    committed: dict[str, float] = {}
    errors: list[str] = []
    halt = threading.Event()
    stream = threading.Thread(
        target=_transactional_stream, args=(committed, halt, errors), daemon=True
    )
    started = time.monotonic()
    run = launch_campaign(n, "esp")
    stream.start()
    try:
        result = _run_journey(stack, "together", n)
        campaign_done = wait_run_done(run.pk, n, timeout=max(300, n / 20))
    finally:
        halt.set()
        stream.join(120)
    deadline = time.monotonic() + 120
    sent = Delivery.objects.filter(uuid__in=list(committed), status=Delivery.Status.SENT)
    while time.monotonic() < deadline and sent.count() < len(committed):
        time.sleep(0.2)
    stack.stop(transactional, "transactional worker")
    messages = stack.esp_messages()
    rows = [
        _journey_row(
            "journey with a campaign running",
            result,
            n,
            journey_check(stack, result["journey"], n, messages),
        )
    ]
    campaign_subject = _received_by_recipient(messages, Delivery.objects.filter(run_id=run.pk))
    campaign_rows = Counter(Delivery.objects.filter(run_id=run.pk).values_list("status", flat=True))
    if campaign_rows != {Delivery.Status.SENT: n} or len(campaign_subject) < n:
        verdict = f"LOST: campaign rows {dict(campaign_rows)}, {len(campaign_subject)} at the ESP"
    elif max(campaign_subject.values()) > 1:
        verdict = "DUPLICATED: a campaign recipient got more than one"
    else:
        verdict = "ok"
    seconds = campaign_done - started
    rows.append(
        Row(
            "journeys",
            "campaign with a journey running",
            {"N": n, "seconds": round(seconds, 1), "msg/s": round(n / seconds, 1)},
            verdict,
        )
    )
    latencies = _latencies(messages, committed)
    if errors:
        rows.append(Row("journeys", "transactional during both", {}, f"ERROR: {errors[0]}"))
        return rows
    if not committed or len(latencies) < len(committed):
        rows.append(
            Row(
                "journeys",
                "transactional during both",
                {"sent": len(committed), "received": len(latencies)},
                f"LOST: {len(committed) - len(latencies)} transactional messages",
            )
        )
        return rows
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    rows.append(
        Row(
            "journeys",
            f"{len(latencies)} transactional sends during both",
            {
                "p50 ms": round(statistics.median(latencies) * 1000, 1),
                "p99 ms": round(p99 * 1000, 1),
                "target p99 ms": 1000,
            },
            "ok" if p99 <= 1.0 else "over target",
        )
    )
    return rows
