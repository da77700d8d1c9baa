import os

from django.core.wsgi import get_wsgi_application

# Production unless told otherwise: a process started by mistake refuses to
# run without production secrets instead of running with DEBUG on.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.production")
application = get_wsgi_application()
