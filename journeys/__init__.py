"""Journeys (automations): recipients walk through ordered steps.

For code in other apps::

    from journeys import journey_enroll

    journey_enroll(trigger="signup_confirmed", recipient=recipient)

Imported lazily so that ``import journeys`` works before Django's app
registry is ready.
"""

__all__ = ["journey_enroll"]


def __getattr__(name):
    if name == "journey_enroll":
        from journeys.services.enrollments import journey_enroll

        return journey_enroll
    raise AttributeError(name)
