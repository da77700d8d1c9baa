"""Journeys in the admin: the list, a journey's steps (inline) with a
diagram-like summary and per-step statistics, and the enrollments.

A journey that has run is not edited in place: "New version" copies it into a
draft to edit, and activating the draft retires the old version (its
recipients finish it, or staff move them with "Move recipients to the newest
version"). Every action calls a service.
"""

from django.contrib import admin, messages
from django.db.models import Count, Q

from journeys.models import Journey, JourneyEnrollment, JourneyStep
from journeys.selectors import STAT_NAMES, journey_step_stats, journey_steps, journey_totals
from journeys.services.definitions import step_summary
from journeys.services.enrollments import enrollments_remove
from journeys.services.versions import (
    JourneyStateError,
    enrollments_move_to_version,
    journey_activate,
    journey_new_version,
    journey_pause,
    journey_resume,
    journey_stop,
)
from notifier.admin import ReadOnlyAdmin


class JourneyStepInline(admin.StackedInline):
    """A step's form: position, kind and template on one line; what only some
    kinds use folded away (opened by a click, or by an error in it)."""

    model = JourneyStep
    extra = 0
    ordering = ["position"]
    fieldsets = [
        (None, {"fields": [("position", "kind", "template")]}),
        (
            "Wait",
            {
                "fields": [("wait_seconds", "wait_until_time", "wait_weekday")],
                "classes": ["collapse"],
            },
        ),
        (
            "Branch",
            {
                "fields": [
                    ("condition", "condition_position"),
                    ("then_position", "else_position"),
                ],
                "classes": ["collapse"],
            },
        ),
        (
            "Attribute, segment, list",
            {
                "fields": [("attribute", "value"), ("segment", "contact_list")],
                "classes": ["collapse"],
            },
        ),
    ]

    def _editable(self, obj) -> bool:
        return obj is None or obj.status == Journey.Status.DRAFT

    def has_add_permission(self, request, obj=None):
        return self._editable(obj) and super().has_add_permission(request, obj)

    def has_change_permission(self, request, obj=None):
        return self._editable(obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self._editable(obj) and super().has_delete_permission(request, obj)


def _run(request, queryset, service, done: str) -> None:
    for journey in queryset:
        try:
            service(journey=journey)
        except JourneyStateError as exc:
            messages.error(request, f"{journey}: {exc}")
        else:
            messages.success(request, f"{journey}: {done}.")


@admin.register(Journey)
class JourneyAdmin(admin.ModelAdmin):
    list_display = ["name", "version", "status", "trigger", "retired_at", "inside", "finished"]
    list_filter = ["status", "trigger"]
    search_fields = ["name"]
    inlines = [JourneyStepInline]
    change_form_template = "admin/journeys/journey/change_form.html"
    readonly_fields = ["version", "status", "retired_at"]
    fieldsets = [
        (None, {"fields": ["name", ("version", "status", "retired_at")]}),
        (
            "Trigger",
            {
                "fields": [
                    "trigger",
                    ("trigger_list", "trigger_topic", "trigger_segment"),
                    ("trigger_attribute", "trigger_local_time"),
                ]
            },
        ),
        ("Exit rules", {"fields": ["reentry", ("goal_attribute", "goal_value"), "goal_topic"]}),
    ]
    actions = ["activate", "pause", "resume", "stop", "new_version", "move_to_newest"]

    def get_queryset(self, request):
        live = Q(enrollments__state__in=JourneyEnrollment.LIVE_STATES)
        return (
            super()
            .get_queryset(request)
            .annotate(
                inside_count=Count("enrollments", filter=live),
                finished_count=Count("enrollments", filter=~live),
            )
        )

    def get_inline_instances(self, request, obj=None):
        inlines = super().get_inline_instances(request, obj)
        if obj is not None and obj.status != Journey.Status.DRAFT:
            # A journey that has run reads from the step table above; its
            # steps' details (read-only) stay folded until asked for.
            for inline in inlines:
                inline.classes = ["collapse"]
        return inlines

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.status != Journey.Status.DRAFT:
            # A journey that has run changes through a new version only.
            return [f.name for f in Journey._meta.fields if f.editable] + self.readonly_fields
        return self.readonly_fields

    @admin.display(description="inside", ordering="inside_count")
    def inside(self, obj):
        return obj.inside_count

    @admin.display(description="finished", ordering="finished_count")
    def finished(self, obj):
        return obj.finished_count

    def change_view(self, request, object_id, form_url="", extra_context=None):
        journey = self.get_object(request, object_id)
        if journey is not None:
            stats = journey_step_stats(journey=journey)
            extra_context = {
                **(extra_context or {}),
                "totals": journey_totals(journey=journey),
                "diagram": [
                    {
                        "step": step,
                        "summary": step_summary(step),
                        "stats": [(n, stats.get(step.pk, {}).get(n, 0)) for n in STAT_NAMES],
                    }
                    for step in journey_steps(journey=journey)
                ],
            }
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.action(
        description="Activate (a draft; retires the version it replaces)", permissions=["change"]
    )
    def activate(self, request, queryset):
        _run(request, queryset, journey_activate, "active")

    @admin.action(description="Pause", permissions=["change"])
    def pause(self, request, queryset):
        _run(request, queryset, journey_pause, "paused")

    @admin.action(description="Resume", permissions=["change"])
    def resume(self, request, queryset):
        _run(request, queryset, journey_resume, "active again")

    @admin.action(description="Stop (everyone inside leaves)", permissions=["change"])
    def stop(self, request, queryset):
        _run(request, queryset, journey_stop, "stopped")

    @admin.action(description="New version (a draft copy to edit)", permissions=["change"])
    def new_version(self, request, queryset):
        _run(request, queryset, journey_new_version, "a draft of the next version is ready")

    @admin.action(
        description="Move recipients to the newest active version", permissions=["change"]
    )
    def move_to_newest(self, request, queryset):
        for journey in queryset:
            newest = (
                Journey.objects.filter(
                    lineage=journey.lineage,
                    version__gt=journey.version,
                    status__in=[Journey.Status.ACTIVE, Journey.Status.PAUSED],
                )
                .order_by("-version")
                .first()
            )
            if newest is None:
                messages.error(request, f"{journey}: there is no newer active version.")
                continue
            moved = enrollments_move_to_version(source=journey, target=newest)
            messages.success(request, f"{journey}: {moved} recipients moved to v{newest.version}.")


@admin.register(JourneyEnrollment)
class JourneyEnrollmentAdmin(ReadOnlyAdmin):
    list_display = ["recipient", "journey", "step", "state", "exit_reason", "due_at", "entered_at"]
    list_filter = ["state", "exit_reason", "journey"]
    search_fields = ["recipient__email"]
    list_select_related = ["recipient", "journey", "step"]
    raw_id_fields = ["recipient"]
    actions = ["remove"]

    def has_remove_permission(self, request):
        # Taking a recipient out is a change to the journey, not to the row.
        return request.user.has_perm("journeys.change_journey")

    @admin.action(description="Remove from the journey", permissions=["remove"])
    def remove(self, request, queryset):
        removed = enrollments_remove(ids=queryset.values_list("id", flat=True))
        messages.success(request, f"{removed} recipients removed.")
