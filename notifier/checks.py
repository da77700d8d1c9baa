from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=True)
def check_site_url_is_https(app_configs, **kwargs):
    """RFC 8058 one-click unsubscribe needs an https List-Unsubscribe URL."""
    if settings.SITE_URL.startswith("https://"):
        return []
    return [
        Error(
            f"SITE_URL is {settings.SITE_URL!r}; unsubscribe links in bulk mail must be https.",
            hint="Set SITE_URL to the https address the site is served at.",
            id="notifier.E001",
        )
    ]
