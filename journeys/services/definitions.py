"""What a journey's steps must be, and where each leads.

Steps only point forward: a branch's targets are later positions. So a
journey has no loops, and an enrollment visits each step at most once (which
``JourneyStepRun``'s unique constraint holds it to).
"""

from journeys.models import Journey, JourneyStep

Kind = JourneyStep.Kind
Condition = JourneyStep.Condition


def step_problems(step: JourneyStep) -> dict[str, str]:
    """Field errors of one step (empty when it is valid)."""
    errors: dict[str, str] = {}
    if step.kind == Kind.SEND:
        if step.template_id is None:
            errors["template"] = "A send step needs a campaign template."
        elif step.template.kind != step.template.Kind.CAMPAIGN:
            errors["template"] = "Journeys send campaign templates only."
    elif step.kind == Kind.WAIT:
        if not step.wait_seconds and step.wait_until_time is None and step.wait_weekday is None:
            errors["wait_seconds"] = "Give a duration, a local time of day or a weekday."
    elif step.kind == Kind.BRANCH:
        errors.update(_branch_problems(step))
    elif step.kind == Kind.SET_ATTRIBUTE:
        if not step.attribute:
            errors["attribute"] = "Name the attribute to set."
    elif step.kind in (Kind.ADD_TO_LIST, Kind.REMOVE_FROM_LIST) and step.contact_list_id is None:
        errors["contact_list"] = "Choose the list."
    return errors


def _branch_problems(step: JourneyStep) -> dict[str, str]:
    errors = {}
    if not step.condition:
        errors["condition"] = "A branch needs a condition."
    elif step.condition in (Condition.OPENED, Condition.CLICKED):
        if step.condition_position is None or step.condition_position >= step.position:
            errors["condition_position"] = "Name an earlier send step's position."
    elif step.condition == Condition.ATTRIBUTE and not step.attribute:
        errors["attribute"] = "Name the attribute to compare."
    elif step.condition == Condition.SEGMENT and step.segment_id is None:
        errors["segment"] = "Choose the segment."
    for field in ("then_position", "else_position"):
        target = getattr(step, field)
        if target is not None and target <= step.position:
            errors[field] = "A branch can only lead to a later step."
    return errors


def journey_problems(journey: Journey) -> list[str]:
    """What stops ``journey`` from being activated (empty when nothing does)."""
    steps = list(journey.steps.select_related("template").order_by("position"))
    if not steps:
        return ["A journey needs at least one step."]
    problems = []
    positions = {s.position: s for s in steps}
    for step in steps:
        for field, message in step_problems(step).items():
            problems.append(f"Step {step.position} ({field}): {message}")
        for field in ("then_position", "else_position", "condition_position"):
            target = getattr(step, field)
            if step.kind == Kind.BRANCH and target is not None and target not in positions:
                problems.append(f"Step {step.position}: there is no step {target}.")
        if step.kind == Kind.BRANCH and step.condition in (Condition.OPENED, Condition.CLICKED):
            checked = positions.get(step.condition_position)
            if checked is not None and checked.kind != Kind.SEND:
                problems.append(
                    f"Step {step.position}: step {step.condition_position} sends no email."
                )
    return problems


def step_after(
    steps: list[JourneyStep], current: JourneyStep, target: int | None = None
) -> JourneyStep | None:
    """The step to go to from ``current``: the one at ``target`` when given,
    else the next by position; None when the journey ends."""
    if target is not None:
        return next((s for s in steps if s.position == target), None)
    return next((s for s in steps if s.position > current.position), None)


def step_summary(step: JourneyStep) -> str:
    """One line saying what a step does, for the admin's diagram."""
    if step.kind == Kind.SEND:
        return f"Send “{step.template}”" if step.template_id else "Send (no template)"
    if step.kind == Kind.WAIT:
        parts = []
        if step.wait_seconds:
            parts.append(_duration(step.wait_seconds))
        if step.wait_weekday is not None:
            parts.append(f"until {step.get_wait_weekday_display()}")
        if step.wait_until_time is not None:
            parts.append(f"until {step.wait_until_time:%H:%M} local time")
        return "Wait " + ", then ".join(parts)
    if step.kind == Kind.BRANCH:
        if step.condition in (Condition.OPENED, Condition.CLICKED):
            verb = "opened" if step.condition == Condition.OPENED else "clicked in"
            question = f"{verb} the email of step {step.condition_position}"
        elif step.condition == Condition.ATTRIBUTE:
            question = f"attribute {step.attribute} is “{step.value}”"
        else:
            question = f"in segment “{step.segment}”"
        then = step.then_position or "next"
        other = step.else_position or "next"
        return f"If {question}: go to {then}, else {other}"
    if step.kind == Kind.SET_ATTRIBUTE:
        return f"Set {step.attribute} = “{step.value}”"
    if step.kind == Kind.ADD_TO_LIST:
        return f"Add to list “{step.contact_list}”"
    if step.kind == Kind.REMOVE_FROM_LIST:
        return f"Remove from list “{step.contact_list}”"
    return "Exit the journey"


def _duration(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"
