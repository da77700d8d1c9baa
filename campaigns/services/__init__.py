"""Every state change of the marketing domain, as plain functions.

* ``contacts``   CSV import into lists, CSV export
* ``campaigns``  create/edit, launch now, test send, preview, delete
* ``schedules``  the campaign's django-celery-beat entry
* ``runs``       materialise, fan out, pause / resume / cancel, retry, close
"""
