from django import template

from campaigns.dashboard import dashboard_for

register = template.Library()


@register.simple_tag(takes_context=True)
def staff_dashboard(context):
    """The admin home's dashboard for the signed-in user."""
    return dashboard_for(context["request"].user)


@register.filter
def percent_of(part, whole) -> float:
    return 100.0 * (part or 0) / whole if whole else 0.0


@register.filter
def sum_values(values) -> int:
    return sum(values or [])
