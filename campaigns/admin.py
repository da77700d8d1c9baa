"""The marketing admin: contacts import/export, lists, segments, campaigns, runs.

Every button here calls a service; permissions are Django's model
permissions (the "Marketing" group holds those it needs).
"""

import csv

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpResponseRedirect, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import slugify
from django.views.decorators.http import require_POST

from campaigns.charts import results_chart
from campaigns.errors import CampaignError, ImportFileError
from campaigns.models import (
    Campaign,
    CampaignRun,
    ContactList,
    ListMembership,
    Segment,
    SegmentCondition,
)
from campaigns.segments import SegmentError, segment_q
from campaigns.selectors import (
    campaign_active_run,
    campaign_audience,
    contact_list_export_rows,
    run_results,
    run_status_counts,
    run_totals,
    run_waiting_by_due_time,
)
from campaigns.services.campaigns import (
    campaign_cancel,
    campaign_delete,
    campaign_launch_now,
    campaign_problems,
    campaign_render,
    campaign_save,
    campaign_schedule,
    campaign_send_test,
    campaign_unschedule,
)
from campaigns.services.contacts import contacts_import_csv
from campaigns.services.runs import (
    campaign_run_pause,
    campaign_run_resume,
    campaign_run_retry,
)
from notifier.admin import preview_response
from notifier.models import Delivery, Recipient, SenderIdentity
from notifier.selectors import delivery_event_totals
from notifier.services.outbox import RETRY_KINDS

# --- Contact lists --------------------------------------------------------------------


class ImportForm(forms.Form):
    file = forms.FileField(help_text="A CSV file in UTF-8 with a header row.")
    email_column = forms.CharField(initial="email", max_length=200)
    name_column = forms.CharField(
        initial="name", max_length=200, required=False, help_text="Leave empty if there is none."
    )
    attribute_columns = forms.CharField(
        required=False,
        max_length=2000,
        help_text="Comma-separated columns to keep as attributes; empty: all other columns.",
    )
    update_existing = forms.BooleanField(
        required=False,
        help_text="Replace the name and attributes of contacts that already exist "
        "(their subscription status is never changed).",
    )

    def clean_file(self):
        upload = self.cleaned_data["file"]
        limit = settings.CAMPAIGNS_IMPORT_MAX_BYTES
        if upload.size > limit:
            raise forms.ValidationError(
                f"The file is over {limit / 1e6:g} MB; split it and import the parts."
            )
        return upload


class _Echo:
    def write(self, value):
        return value


@admin.register(ContactList)
class ContactListAdmin(admin.ModelAdmin):
    list_display = ("name", "member_count", "created_at", "tools")
    search_fields = ("name", "description")
    readonly_fields = ("created_at", "updated_at")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(member_count=Count("memberships"))

    @admin.display(description="Members", ordering="member_count")
    def member_count(self, obj):
        return obj.member_count

    @admin.display(description="")
    def tools(self, obj):
        members = reverse("admin:campaigns_listmembership_changelist")
        return format_html(
            '<a href="{}?contact_list__id__exact={}">Members</a> · '
            '<a href="{}">Import CSV</a> · <a href="{}">Export CSV</a>',
            members,
            obj.pk,
            reverse("admin:campaigns_contactlist_import", args=[obj.pk]),
            reverse("admin:campaigns_contactlist_export", args=[obj.pk]),
        )

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/import/", view(self.import_view), name="campaigns_contactlist_import"),
            path("<int:pk>/export/", view(self.export_view), name="campaigns_contactlist_export"),
            *super().get_urls(),
        ]

    def import_view(self, request, pk):
        contact_list = get_object_or_404(ContactList, pk=pk)
        if not (
            self.has_change_permission(request, contact_list)
            and request.user.has_perm("notifier.add_recipient")
        ):
            raise PermissionDenied
        report, error = None, ""
        posted = request.method == "POST"
        form = ImportForm(request.POST, request.FILES) if posted else ImportForm()
        if posted and form.is_valid():
            data = form.cleaned_data
            attribute_columns = [
                c.strip() for c in data["attribute_columns"].split(",") if c.strip()
            ] or None
            try:
                report = contacts_import_csv(
                    stream=data["file"],
                    contact_list=contact_list,
                    email_column=data["email_column"],
                    name_column=data["name_column"],
                    attribute_columns=attribute_columns,
                    update_existing=data["update_existing"],
                )
            except ImportFileError as exc:
                error = str(exc)
        return TemplateResponse(
            request,
            "admin/campaigns/contactlist/import.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "original": contact_list,
                "title": f"Import contacts into {contact_list}",
                "form": form,
                "report": report,
                "error": error,
            },
        )

    def export_view(self, request, pk):
        contact_list = get_object_or_404(ContactList, pk=pk)
        if not self.has_view_permission(request, contact_list):
            raise PermissionDenied
        writer = csv.writer(_Echo())
        rows = (writer.writerow(row) for row in contact_list_export_rows(contact_list=contact_list))
        response = StreamingHttpResponse(rows, content_type="text/csv; charset=utf-8")
        filename = slugify(contact_list.name) or f"list-{contact_list.pk}"
        response["Content-Disposition"] = f'attachment; filename="{filename}.csv"'
        return response


@admin.register(ListMembership)
class ListMembershipAdmin(admin.ModelAdmin):
    list_display = ("recipient", "recipient_status", "contact_list", "added_at")
    list_filter = ("contact_list",)
    search_fields = ("recipient__email", "recipient__name")
    raw_id_fields = ("recipient",)
    list_select_related = ("recipient", "contact_list")
    show_full_result_count = False

    @admin.display(description="Status", ordering="recipient__status")
    def recipient_status(self, obj):
        return obj.recipient.get_status_display()


# --- Segments ------------------------------------------------------------------------------


class SegmentConditionInline(admin.TabularInline):
    model = SegmentCondition
    extra = 1


@admin.register(Segment)
class SegmentAdmin(admin.ModelAdmin):
    list_display = ("name", "match", "summary", "updated_at")
    search_fields = ("name", "description")
    inlines = [SegmentConditionInline]
    readonly_fields = ("matching_recipients",)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("conditions")

    @admin.display(description="Conditions")
    def summary(self, obj):
        joiner = " and " if obj.match == Segment.Match.ALL else " or "
        return joiner.join(str(c) for c in obj.conditions.all()) or "(matches nobody)"

    @admin.display(description="Matches now")
    def matching_recipients(self, obj):
        if obj.pk is None:
            return "-"
        try:
            count = Recipient.objects.filter(segment_q(obj)).count()
        except SegmentError as exc:
            return f"Invalid: {exc}"
        return f"{count} recipients (before suppressions)"


# --- Campaigns ---------------------------------------------------------------------------


CAMPAIGN_FIELDSETS = (
    (None, {"fields": ("name", "status", "template", "context", "sender", "transport")}),
    ("Audience", {"fields": ("contact_lists", "segments")}),
    (
        "Schedule",
        {
            "fields": (
                "schedule",
                "send_at",
                (
                    "cron_minute",
                    "cron_hour",
                    "cron_day_of_month",
                    "cron_month_of_year",
                    "cron_day_of_week",
                ),
                "schedule_time_zone",
            ),
            "description": "Saving a scheduled campaign updates its schedule at once.",
        },
    ),
    ("Recipient-local time", {"fields": ("local_send_time", "local_time_zone_default")}),
    ("History", {"fields": ("created_by", "created_at", "updated_at")}),
)
READONLY = ("status", "created_by", "created_at", "updated_at")


def _flatten(fieldsets) -> list[str]:
    names = []
    for _title, options in fieldsets:
        for item in options["fields"]:
            names.extend(item if isinstance(item, tuple) else [item])
    return names


class CampaignForm(forms.ModelForm):
    transport = forms.ChoiceField(choices=())

    class Meta:
        model = Campaign
        fields = [name for name in _flatten(CAMPAIGN_FIELDSETS) if name not in READONLY]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["transport"].choices = [(t, t) for t in settings.NOTIFIER_TRANSPORTS]
        self.fields["send_at"].help_text = f"For a one-off schedule; in {settings.TIME_ZONE}."
        self.fields["sender"].empty_label = f"Default sender ({settings.DEFAULT_FROM_EMAIL})"
        self.fields["sender"].error_messages["invalid_choice"] = (
            "Choose one of the sender identities; administrators add them under "
            "Notifier > Sender identities."
        )

    def clean_context(self):
        return self.cleaned_data.get("context") or {}

    def clean(self):
        cleaned = super().clean()
        probe = Campaign(
            transport=cleaned.get("transport", ""),
            sender=cleaned.get("sender"),
            template=cleaned.get("template"),
            context=cleaned.get("context") or {},
            schedule=cleaned.get("schedule", Campaign.Schedule.NONE),
            send_at=cleaned.get("send_at"),
        )
        for field, problem in campaign_problems(campaign=probe, check_audience=False).items():
            if field in self.fields and field not in self.errors:
                self.add_error(field, problem)
        return cleaned


ACTIONS = {
    "schedule": "change",
    "unschedule": "change",
    "launch": "change",
    "pause": "change",
    "resume": "change",
    "cancel": "change",
    "retry": "change",
    "test": "change",
}


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    form = CampaignForm
    list_display = ("name", "status", "template", "schedule_summary", "updated_at")
    list_filter = ("status", "schedule")
    search_fields = ("name",)
    list_select_related = ("template",)
    filter_horizontal = ("contact_lists", "segments")
    readonly_fields = READONLY
    change_form_template = "admin/campaigns/campaign/change_form.html"
    fieldsets = CAMPAIGN_FIELDSETS

    @admin.display(description="Schedule")
    def schedule_summary(self, obj):
        if obj.schedule == Campaign.Schedule.ONCE:
            return f"once at {obj.send_at:%Y-%m-%d %H:%M %Z}" if obj.send_at else "once (no time)"
        if obj.schedule == Campaign.Schedule.CRONTAB:
            return f"cron {obj.crontab_expression} ({obj.schedule_time_zone})"
        return "-"

    def save_model(self, request, obj, form, change):
        campaign_save(campaign=obj, user=request.user)

    def delete_model(self, request, obj):
        campaign_delete(campaign=obj)

    def delete_queryset(self, request, queryset):
        for campaign in queryset:
            campaign_delete(campaign=campaign)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path(
                "<int:pk>/progress/", view(self.progress_view), name="campaigns_campaign_progress"
            ),
            path("<int:pk>/preview/", view(self.preview_view), name="campaigns_campaign_preview"),
            path(
                "<int:pk>/do/<slug:action>/",
                view(require_POST(self.action_view)),
                name="campaigns_campaign_action",
            ),
            *super().get_urls(),
        ]

    # the change page ---------------------------------------------------------------
    def change_view(self, request, object_id, form_url="", extra_context=None):
        campaign = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if campaign is not None:
            runs = list(campaign.runs.select_related("launched_by")[:20])
            live = _live_counts([r.pk for r in runs if r.finished_at is None])
            for run in runs:
                run.summary = run.totals if run.finished_at else run_totals(live.get(run.pk, {}))
            extra.update(
                runs=runs,
                active_run=campaign_active_run(campaign=campaign),
                latest_run=runs[0] if runs else None,
                retry_kinds=list(RETRY_KINDS),
                audience_sample=campaign_audience(campaign=campaign)
                .order_by("email")
                .values_list("email", flat=True)[:20],
                can_act=self.has_change_permission(request, campaign),
                senders=SenderIdentity.objects.filter(domain=""),
                default_sender=settings.DEFAULT_FROM_EMAIL,
            )
        return super().change_view(request, object_id, form_url, extra_context=extra)

    def progress_view(self, request, pk):
        campaign = get_object_or_404(Campaign, pk=pk)
        if not self.has_view_permission(request, campaign):
            raise PermissionDenied
        run = campaign.runs.order_by("-id").first()
        data = {"campaign_status": campaign.status, "run": None}
        if run is not None:
            counts = run_status_counts(run_id=run.pk)
            data["run"] = {
                "id": run.pk,
                "status": run.status,
                "problem": run.problem,
                "problem_detail": run.problem_detail,
                "recipients": run.recipients,
                "counts": counts,
                "totals": run_totals(counts),
                # A recipient-local send time: what waits for which moment.
                "waiting": [
                    {"due_at": due_at.isoformat(), "count": count}
                    for due_at, count in run_waiting_by_due_time(run_id=run.pk)
                ],
            }
        return JsonResponse(data)

    def preview_view(self, request, pk):
        campaign = get_object_or_404(Campaign.objects.select_related("template"), pk=pk)
        if not self.has_view_permission(request, campaign):
            raise PermissionDenied
        return preview_response(
            self,
            request,
            original=campaign,
            render=lambda recipient: campaign_render(campaign=campaign, recipient=recipient),
            template_name="admin/campaigns/campaign/preview.html",
            audience_sample=campaign_audience(campaign=campaign)
            .order_by("email")
            .values_list("email", flat=True)[:20],
        )

    def action_view(self, request, pk, action):
        campaign = get_object_or_404(Campaign, pk=pk)
        if action not in ACTIONS or not self.has_change_permission(request, campaign):
            raise PermissionDenied
        try:
            text = self._act(request, campaign, action)
        except CampaignError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            self.message_user(request, text, messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:campaigns_campaign_change", args=[pk]))

    def _act(self, request, campaign: Campaign, action: str) -> str:
        if action == "schedule":
            campaign_schedule(campaign=campaign)
            return "Scheduled."
        if action == "unschedule":
            campaign_unschedule(campaign=campaign)
            return "Schedule removed; the campaign is a draft again."
        if action == "launch":
            run = campaign_launch_now(campaign=campaign, user=request.user)
            return f"Run {run.pk} is starting."
        if action == "cancel":
            count = campaign_cancel(campaign=campaign)
            return f"Cancelled ({count} unsent messages cancelled)."
        if action == "test":
            delivery = campaign_send_test(
                campaign=campaign, to=request.POST.get("to", ""), sender=_test_sender(request)
            )
            if delivery.status == Delivery.Status.SUPPRESSED:
                raise CampaignError(f"Not sent: {delivery.status_reason}.")
            return f"Test message queued to {delivery.recipient.email}."
        if action == "retry":
            run = get_object_or_404(CampaignRun, pk=request.POST.get("run") or 0, campaign=campaign)
            count = campaign_run_retry(run=run, kinds=request.POST.getlist("kinds"))
            return f"{count} messages queued again."
        run = campaign_active_run(campaign=campaign)
        if run is None:
            raise CampaignError("The campaign has no active run.")
        if action == "pause":
            campaign_run_pause(run=run)
            return "Paused."
        count = campaign_run_resume(run=run)
        return f"Resumed ({count} messages to go)."


def _test_sender(request) -> SenderIdentity | None:
    """The address identity picked for a test send (empty: the default sender)."""
    chosen = request.POST.get("sender", "")
    if not chosen:
        return None
    sender = (
        SenderIdentity.objects.filter(pk=chosen, domain="").first() if chosen.isdigit() else None
    )
    if sender is None:
        raise CampaignError("Choose a sender from the list of sender identities.")
    return sender


def _live_counts(run_ids: list[int]) -> dict[int, dict[str, int]]:
    counts: dict[int, dict[str, int]] = {}
    if not run_ids:
        return counts
    rows = (
        Delivery.objects.filter(run_id__in=run_ids)
        .order_by()
        .values_list("run_id", "status")
        .annotate(n=Count("id"))
    )
    for run_id, status, n in rows:
        counts.setdefault(run_id, {})[status] = n
    return counts


@admin.register(CampaignRun)
class CampaignRunAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "campaign",
        "status",
        "trigger",
        "recipients",
        "totals_summary",
        "started_at",
        "finished_at",
        "problem_summary",
        "links",
    )
    list_filter = ("status", "problem", "trigger")
    search_fields = ("campaign__name",)
    list_select_related = ("campaign",)
    show_full_result_count = False
    readonly_fields = [f.name for f in CampaignRun._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="Problem", ordering="problem")
    def problem_summary(self, obj):
        if not obj.problem:
            return "-"
        return format_html(
            '<strong class="run-problem">{}</strong><br>{}',
            obj.get_problem_display(),
            obj.problem_detail,
        )

    @admin.display(description="Totals")
    def totals_summary(self, obj):
        if not obj.totals:
            return "(running)" if obj.finished_at is None else "-"
        keys = ("sent_total", "failed", "suppressed", "unknown", "cancelled")
        return ", ".join(f"{k.replace('_total', '')} {obj.totals.get(k, 0)}" for k in keys)

    @admin.display(description="")
    def links(self, obj):
        return format_html(
            '<a href="{}">Results</a> · <a href="{}?run_id={}">Deliveries</a>',
            reverse("admin:campaigns_campaignrun_results", args=[obj.pk]),
            reverse("admin:notifier_delivery_changelist"),
            obj.pk,
        )

    def get_urls(self):
        view = self.admin_site.admin_view
        results = path(
            "<int:pk>/results/", view(self.results_view), name="campaigns_campaignrun_results"
        )
        return [results, *super().get_urls()]

    def results_view(self, request, pk):
        run = get_object_or_404(CampaignRun.objects.select_related("campaign"), pk=pk)
        if not self.has_view_permission(request, run):
            raise PermissionDenied
        results = run_results(run_id=run.pk)
        totals = run.totals if run.finished_at else run_totals(run_status_counts(run_id=run.pk))
        return TemplateResponse(
            request,
            "admin/campaigns/campaignrun/results.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "run": run,
                "title": f"Results: {run.campaign.name}, run {run.pk}",
                "chart": results_chart(results),
                "rows": results.rows(),
                "totals": totals,
                "events": delivery_event_totals(run_id=run.pk),
                "time_zone": timezone.get_current_timezone_name(),
            },
        )
