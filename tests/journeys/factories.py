from datetime import timedelta

from campaigns.models import ContactList
from journeys.models import Journey, JourneyStep
from journeys.services.versions import journey_activate
from notifier.models import Template

Kind = JourneyStep.Kind
WAIT = timedelta(days=2)


def campaign_template(name: str, subject: str) -> Template:
    return Template.objects.create(
        name=name,
        kind=Template.Kind.CAMPAIGN,
        subject=subject,
        html_body="<p>Hello {{ recipient.email }}</p><a href='https://shop.example/'>Shop</a>",
    )


def welcome_journey(*, contact_list: ContactList | None = None, activate: bool = True) -> Journey:
    """Send, wait two days, branch on a click in the welcome email, send one
    of two follow-ups."""
    contact_list = contact_list or ContactList.objects.create(name="Newsletter")
    journey = Journey.objects.create(
        name="Welcome", trigger=Journey.Trigger.LIST_JOINED, trigger_list=contact_list
    )
    welcome = campaign_template("welcome", "Welcome")
    thanks = campaign_template("thanks", "Glad you came by")
    nudge = campaign_template("nudge", "Did you see this?")
    steps = [
        JourneyStep(position=1, kind=Kind.SEND, template=welcome),
        JourneyStep(position=2, kind=Kind.WAIT, wait_seconds=int(WAIT.total_seconds())),
        JourneyStep(
            position=3,
            kind=Kind.BRANCH,
            condition=JourneyStep.Condition.CLICKED,
            condition_position=1,
            then_position=4,
            else_position=6,
        ),
        JourneyStep(position=4, kind=Kind.SEND, template=thanks),
        JourneyStep(position=5, kind=Kind.EXIT),
        JourneyStep(position=6, kind=Kind.SEND, template=nudge),
    ]
    for step in steps:
        step.journey = journey
    JourneyStep.objects.bulk_create(steps)
    if activate:
        journey_activate(journey=journey)
    return journey
