import os

from django.core.wsgi import get_wsgi_application

from config.tracing import tracing_setup

# Production unless told otherwise: a process started by mistake refuses to
# run without production secrets instead of running with DEBUG on.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")
# Before the application loads its middleware (the Django instrumentation adds
# one); Celery tasks that requests publish carry the trace on.
tracing_setup(service="notifier-web", django=True, celery=True)
application = get_wsgi_application()
