from django.apps import AppConfig


class CampaignsConfig(AppConfig):
    name = "campaigns"
    verbose_name = "Marketing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from campaigns.services.runs import run_contexts, run_guard
        from notifier.sending.batch import register_run_guard
        from notifier.sending.message import register_run_context

        # Batches ask it (at most every 0.5 s) whether a run is paused or cancelled.
        register_run_guard(run_guard)
        # And once per batch for the campaign context each run took at launch.
        register_run_context(run_contexts)
