"""Every write to the journeys tables.

* ``definitions``  what a valid step is; steps in order; where a step leads
* ``versions``     activate, pause, resume, stop, new version, move recipients
* ``enrollments``  enter recipients (``journey_enroll``), remove them
* ``execution``    publish due enrollments, claim them, run them in rounds
* ``steps``        one round: the current step of a set of enrollments
* ``triggers``     the polling triggers run by the tick (list joins, events,
                   dates, segments)
"""
