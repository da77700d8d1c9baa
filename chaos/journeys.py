"""Chaos scenario 7: a journey on the real stack while workers are SIGKILLed.

Beat's ``journeys.tick`` enters every member of a fresh list into a journey
(send, wait 3 s, branch on the ``plan`` attribute, send one of two
follow-ups) and publishes due steps; worker processes are killed and
restarted while the steps run. Afterwards, recipient by recipient: each
enrollment ran exactly the steps of its path (no step missing, none twice),
and each email of its path reached the ESP exactly once.
"""

import time
from collections import Counter

from chaos.run import Result, _query

WAIT_SECONDS = 3


def _template(name: str, subject: str):
    from notifier.models import Template

    template, _ = Template.objects.update_or_create(
        name=name,
        defaults={
            "kind": Template.Kind.CAMPAIGN,
            "subject": subject,
            "html_body": "<p>Hi {{ recipient.name }}: " + subject + "</p>",
            "text_body": "",
        },
    )
    return template


def journey_start(n: int):
    """A fresh list, an active journey on it, then ``n`` bench recipients join."""
    from django.db import connection

    from campaigns.models import ContactList
    from journeys.models import Journey, JourneyStep
    from journeys.services.versions import journey_activate

    stamp = time.time_ns()
    contact_list = ContactList.objects.create(name=f"chaos-journey-{stamp}")
    journey = Journey.objects.create(
        name=f"Chaos welcome {stamp}",
        trigger=Journey.Trigger.LIST_JOINED,
        trigger_list=contact_list,
    )
    kind = JourneyStep.Kind
    JourneyStep.objects.bulk_create(
        [
            JourneyStep(
                journey=journey, position=1, kind=kind.SEND, template=_template("J1", "Welcome")
            ),
            JourneyStep(journey=journey, position=2, kind=kind.WAIT, wait_seconds=WAIT_SECONDS),
            JourneyStep(
                journey=journey,
                position=3,
                kind=kind.BRANCH,
                condition=JourneyStep.Condition.ATTRIBUTE,
                attribute="plan",
                value="pro",
                then_position=4,
                else_position=6,
            ),
            JourneyStep(
                journey=journey, position=4, kind=kind.SEND, template=_template("J2", "Pro tips")
            ),
            JourneyStep(journey=journey, position=5, kind=kind.EXIT),
            JourneyStep(
                journey=journey, position=6, kind=kind.SEND, template=_template("J3", "Upgrade")
            ),
        ]
    )
    journey_activate(journey=journey)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO campaigns_listmembership (contact_list_id, recipient_id, added_at)
            SELECT %s, id, now() FROM notifier_recipient
            WHERE email LIKE 'u%%@bench.example' ORDER BY id LIMIT %s
            """,
            [contact_list.pk, n],
        )
    return journey


def _step_runs(journey) -> int:
    from journeys.models import JourneyStepRun

    return _query(JourneyStepRun.objects.filter(step__journey=journey).count)


def _settled(journey) -> bool:
    from journeys.models import JourneyEnrollment
    from notifier.models import Delivery

    live = JourneyEnrollment.objects.filter(journey=journey, state__in=["active", "waiting"])
    enrolled = JourneyEnrollment.objects.filter(journey=journey).count()
    open_mail = Delivery.objects.filter(
        idempotency_key__startswith="journey:", status__in=["pending", "sending"]
    )
    return enrolled > 0 and not live.exists() and not open_mail.exists()


def journey_count(stack, journey, n: int, seconds: float) -> Result:
    """Compare each enrollment's step runs and emails with its path."""
    from journeys.models import JourneyEnrollment, JourneyStepRun
    from notifier.models import Delivery

    steps = {s.position: s.pk for s in journey.steps.all()}
    result = Result(name="7 journey, workers SIGKILLed", seconds=round(seconds, 1))
    enrollments = list(
        JourneyEnrollment.objects.filter(journey=journey).values_list(
            "id", "recipient__attributes", "state"
        )
    )
    result.recipients = len(enrollments)
    missing_entries = n - len(enrollments)
    ran: dict[int, Counter] = {}
    for enrollment_id, step_id in JourneyStepRun.objects.filter(step__journey=journey).values_list(
        "enrollment_id", "step_id"
    ):
        ran.setdefault(enrollment_id, Counter())[step_id] += 1
    mail = {
        key: (str(uuid), status)
        for key, uuid, status in Delivery.objects.filter(
            idempotency_key__startswith="journey:"
        ).values_list("idempotency_key", "uuid", "status")
    }
    accepted = stack.accepted()
    missing_steps = extra_steps = 0
    for enrollment_id, attributes, _state in enrollments:
        pro = (attributes or {}).get("plan") == "pro"
        path = [1, 2, 3, 4, 5] if pro else [1, 2, 3, 6]
        counts = ran.get(enrollment_id, Counter())
        missing_steps += sum(1 for p in path if counts[steps[p]] == 0)
        extra_steps += sum(c - 1 for c in counts.values() if c > 1)
        extra_steps += sum(c for s, c in counts.items() if s not in {steps[p] for p in path})
        for position in (1, 4 if pro else 6):
            uuid, status = mail.get(f"journey:{enrollment_id}:{steps[position]}", (None, None))
            got = accepted.get(uuid, 0) if uuid else 0
            if got == 1:
                result.exactly_once += 1
            elif got > 1:
                result.duplicates += 1
            elif status != Delivery.Status.UNKNOWN:
                result.missing += 1
            if status == Delivery.Status.UNKNOWN:
                result.unknown += 1
    result.duplicates += extra_steps
    result.missing += missing_steps + missing_entries
    result.final = dict(Counter(state for _, _, state in enrollments))
    result.final["missing_steps"] = missing_steps
    result.final["steps_twice"] = extra_steps
    return result


def journey_scenario(stack, *, n: int, kills: int, rng, timeout: float) -> Result:
    from django.db import connections

    connections.close_all()
    started = time.monotonic()
    try:
        journey = journey_start(n)
        expected_runs = n * 4.5  # three steps each, then two (pro) or one
        for k in range(kills):
            target = expected_runs * (k + 1) / (kills + 2)
            deadline = time.monotonic() + 120
            while _step_runs(journey) < target and time.monotonic() < deadline:
                time.sleep(0.2)
            victim = rng.choice(sorted(stack.workers))
            stack.kill_worker(victim)
            time.sleep(0.5)
            stack.start_worker(victim)
        deadline = time.monotonic() + timeout
        while not _query(lambda: _settled(journey)) and time.monotonic() < deadline:
            time.sleep(0.5)
        result = _query(lambda: journey_count(stack, journey, n, time.monotonic() - started))
        if not _query(lambda: _settled(journey)):
            result.note = "ERROR: enrollments or emails still open at the deadline"
        return result
    except Exception as exc:  # reported in the table
        return Result(
            name="7 journey, workers SIGKILLed", note=f"ERROR: {type(exc).__name__}: {exc}"
        )
