"""Every write to the journeys tables.

* ``definitions``  what a valid step is; steps in order; where a step leads
* ``versions``     activate, pause, resume, stop, new version, move recipients
* ``enrollments``  enter recipients (``journey_enroll``), remove them
* ``execution``    claim due enrollments and run one step each
* ``triggers``     the polling triggers run by the tick (list joins, events,
                   dates, segments)
"""
