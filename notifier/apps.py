from django.apps import AppConfig


class NotifierConfig(AppConfig):
    name = "notifier"
    verbose_name = "Delivery"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from anymail.signals import tracking

        from notifier import checks  # noqa: F401  (registers system checks)
        from notifier.sending.message import register_message_hook
        from notifier.services.events import tracking_received
        from notifier.services.unsubscribe import unsubscribe_message_hook

        register_message_hook(unsubscribe_message_hook)
        tracking.connect(tracking_received, dispatch_uid="notifier.tracking_received")
