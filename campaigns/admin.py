"""The marketing admin: contacts import/export, lists, segments, campaigns, runs.

Every button here calls a service; permissions are Django's model
permissions (the "Marketing" group holds those it needs).
"""

import csv
from html.parser import HTMLParser
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q
from django.http import HttpResponseRedirect, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.template.defaultfilters import pluralize
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import escape, format_html, format_html_join
from django.utils.text import slugify
from django.views.decorators.http import require_POST

from campaigns.abtest_admin import (
    CampaignVariantInline,
    campaign_ab_summary,
    choose_winner_view,
    run_ab_context,
)
from campaigns.charts import results_chart
from campaigns.errors import CampaignError, ImportFileError
from campaigns.forms import CAMPAIGN_FIELDSETS, CRON_FIELDS, READONLY, CampaignForm
from campaigns.models import (
    Campaign,
    CampaignRun,
    Consent,
    ContactList,
    ListMembership,
    Segment,
    SegmentCondition,
    SignupForm,
)
from campaigns.segments import SegmentError, segment_q
from campaigns.selectors import (
    audience_counts,
    audience_of,
    campaign_active_run,
    campaign_audience,
    campaign_next_send_times,
    contact_list_export_rows,
    crontab_in_words,
    run_results,
    run_status_counts,
    run_totals,
    run_waiting_by_due_time,
)
from campaigns.services.campaigns import (
    campaign_cancel,
    campaign_delete,
    campaign_launch_now,
    campaign_preview_message,
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
from notifier.admin import ReadOnlyAdmin
from notifier.models import Delivery, Recipient, SenderIdentity
from notifier.selectors import delivery_event_totals, preview_recipient
from notifier.services.local_times import zone_info
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
    time_zone_column = forms.CharField(
        initial="time_zone",
        max_length=200,
        required=False,
        help_text="IANA names such as Europe/Paris, so digests and schedules follow the "
        "contact's local time. Used when the file has the column; empty cells mean UTC.",
    )
    locale_column = forms.CharField(
        initial="locale",
        max_length=200,
        required=False,
        help_text="Language tags such as en, fr or pt-BR. Used when the file has the column; "
        "empty cells mean en.",
    )
    update_existing = forms.BooleanField(
        required=False,
        help_text="Replace the name, attributes, time zone and locale of contacts that already "
        "exist (their subscription status is never changed).",
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
                    time_zone_column=data["time_zone_column"],
                    locale_column=data["locale_column"],
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
# The fields whose change re-arms a finished or cancelled campaign on save.
SCHEDULE_FIELDS = {"schedule", "send_at", "schedule_time_zone", *CRON_FIELDS}


def panel_actions(*, campaign_status: str, run_status: str | None) -> list[str]:
    """The buttons the run panel shows, for the page and its live updates alike."""
    active = run_status in CampaignRun.ACTIVE
    shown = []
    if not active:
        shown.append("launch")
    if run_status == CampaignRun.Status.RUNNING:
        shown.append("pause")
    if run_status == CampaignRun.Status.PAUSED:
        shown.append("resume")
    if campaign_status == Campaign.Status.SCHEDULED and not active:
        shown.append("unschedule")
    if active or campaign_status == Campaign.Status.SCHEDULED:
        shown.append("cancel")
    return shown


def _audience_text(counts: dict[str, int]) -> str:
    return (
        f"{counts['to_send']} will receive it: {counts['total']} in the audience, "
        f"{counts['suppressed']} skipped (suppressed or bounced), "
        f"of whom {counts['unsubscribed']} unsubscribed."
    )


@admin.register(Campaign)
class CampaignAdmin(admin.ModelAdmin):
    form = CampaignForm
    list_display = ("name", "status", "template", "schedule_summary", "updated_at")
    list_filter = ("status", "schedule")
    search_fields = ("name",)
    list_select_related = ("template",)
    readonly_fields = READONLY
    change_form_template = "admin/campaigns/campaign/change_form.html"
    fieldsets = CAMPAIGN_FIELDSETS
    inlines = [CampaignVariantInline]

    @admin.display(description="The test in words")
    def ab_test_summary(self, obj):
        return format_html('<div id="ab-summary">{}</div>', campaign_ab_summary(obj))

    @admin.display(description="Schedule")
    def schedule_summary(self, obj):
        if obj.schedule == Campaign.Schedule.ONCE:
            if not obj.send_at:
                return "once (no time)"
            local = timezone.localtime(obj.send_at, ZoneInfo(obj.schedule_time_zone))
            return f"once at {local:%Y-%m-%d %H:%M} ({obj.schedule_time_zone})"
        if obj.schedule == Campaign.Schedule.CRONTAB:
            words = crontab_in_words(campaign=obj) or obj.crontab_expression
            return f"{words} ({obj.schedule_time_zone})"
        return "-"

    @admin.display(description="Audience size")
    def audience_size(self, obj):
        url = reverse("admin:campaigns_campaign_audience")
        text = "Choose lists or segments to see how many will receive it."
        if obj is not None and obj.pk is not None:
            try:
                text = _audience_text(audience_counts(campaign_audience(campaign=obj)))
            except SegmentError as exc:
                text = f"A segment cannot be evaluated: {exc}"
        return format_html('<span id="audience-size" data-url="{}">{}</span>', url, text)

    @admin.display(description="Next sends")
    def next_sends(self, obj):
        if obj is None or obj.pk is None or obj.schedule == Campaign.Schedule.NONE:
            return format_html(
                '<div id="next-sends" data-url="{}"><p>Not armed yet: saving arms it.</p></div>',
                reverse("admin:campaigns_campaign_schedule"),
            )
        zone = ZoneInfo(obj.schedule_time_zone)
        times = campaign_next_send_times(campaign=obj)
        words = crontab_in_words(campaign=obj) if obj.schedule == Campaign.Schedule.CRONTAB else ""
        armed = (
            "Armed: it sends on its own."
            if obj.periodic_task_id
            else "Not armed: it will not send on its own."
        )
        items = format_html_join(
            "",
            '<li><time datetime="{}">{}</time></li>',
            (
                (
                    t.isoformat(),
                    f"{timezone.localtime(t, zone):%a %d %b %Y, %H:%M} ({obj.schedule_time_zone})",
                )
                for t in times
            ),
        )
        return format_html(
            '<div id="next-sends" data-url="{}"><p>{} {}</p>{}</div>',
            reverse("admin:campaigns_campaign_schedule"),
            armed,
            f"{words}." if words else "",
            format_html('<ol class="next-times">{}</ol>', items) if times else "No time ahead.",
        )

    def save_model(self, request, obj, form, change):
        arm = obj.status in (Campaign.Status.DRAFT, Campaign.Status.SCHEDULED) or bool(
            SCHEDULE_FIELDS & set(form.changed_data)
        )
        campaign_save(campaign=obj, user=request.user, arm=arm)

    def delete_model(self, request, obj):
        campaign_delete(campaign=obj)

    def delete_queryset(self, request, queryset):
        for campaign in queryset:
            campaign_delete(campaign=campaign)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("audience/", view(self.audience_view), name="campaigns_campaign_audience"),
            path("schedule/", view(self.schedule_view), name="campaigns_campaign_schedule"),
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
            active_run = campaign_active_run(campaign=campaign)
            extra.update(
                runs=runs,
                active_run=active_run,
                latest_run=runs[0] if runs else None,
                panel_actions=panel_actions(
                    campaign_status=campaign.status,
                    run_status=runs[0].status if runs else None,
                ),
                retry_kinds=list(RETRY_KINDS),
                audience_sample=_audience_sample(campaign),
                can_act=self.has_change_permission(request, campaign),
                senders=SenderIdentity.objects.filter(domain=""),
                default_sender=settings.DEFAULT_FROM_EMAIL,
            )
        return super().change_view(request, object_id, form_url, extra_context=extra)

    def audience_view(self, request):
        """How many a choice of lists and segments reaches (the form asks as
        they are ticked): ``?contact_lists=1&segments=2``."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            list_ids = [int(v) for v in request.GET.getlist("contact_lists")]
            segment_ids = [int(v) for v in request.GET.getlist("segments")]
        except ValueError:
            return JsonResponse({"error": "Give list and segment ids as numbers."}, status=400)
        try:
            counts = audience_counts(
                audience_of(
                    list_ids=list_ids,
                    segments=Segment.objects.filter(pk__in=segment_ids).prefetch_related(
                        "conditions"
                    ),
                )
            )
        except SegmentError as exc:
            return JsonResponse({"error": f"A segment cannot be evaluated: {exc}"}, status=400)
        return JsonResponse({**counts, "text": _audience_text(counts)})

    def schedule_view(self, request):
        """A crontab in words and its next three times, as it is typed:
        ``?cron_minute=0&cron_hour=9&…&schedule_time_zone=Europe/Paris``."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        probe = Campaign(schedule=Campaign.Schedule.CRONTAB)
        try:
            for name in (*CRON_FIELDS, "schedule_time_zone"):
                value = request.GET.get(name, "").strip()
                field = Campaign._meta.get_field(name)
                if not value:
                    raise ValidationError(f"Fill in the {field.verbose_name}.")
                field.run_validators(value)
                if len(value) > field.max_length:
                    raise ValidationError(f"{field.verbose_name}: too long.")
                setattr(probe, name, value)
        except ValidationError as exc:
            return JsonResponse({"error": " ".join(exc.messages)}, status=400)
        zone = ZoneInfo(probe.schedule_time_zone)
        return JsonResponse(
            {
                "words": crontab_in_words(campaign=probe),
                "times": [
                    {
                        "at": at.isoformat(),
                        "text": f"{timezone.localtime(at, zone):%a %d %b %Y, %H:%M} "
                        f"({probe.schedule_time_zone})",
                    }
                    for at in campaign_next_send_times(campaign=probe)
                ],
            }
        )

    def progress_view(self, request, pk):
        campaign = get_object_or_404(Campaign, pk=pk)
        if not self.has_view_permission(request, campaign):
            raise PermissionDenied
        run = campaign.runs.order_by("-id").first()
        data = {
            "campaign_status": campaign.status,
            "campaign_status_display": campaign.get_status_display(),
            "run": None,
            "actions": panel_actions(
                campaign_status=campaign.status, run_status=run.status if run else None
            ),
        }
        if run is not None:
            counts = run_status_counts(run_id=run.pk)
            data["run"] = {
                "id": run.pk,
                "status": run.status,
                "status_display": run.get_status_display(),
                "problem": run.problem,
                "problem_display": run.get_problem_display() if run.problem else "",
                "problem_detail": run.problem_detail,
                "recipients": run.recipients,
                "counts": counts,
                "totals": run_totals(counts),
                "results_url": reverse("admin:campaigns_campaignrun_results", args=[run.pk]),
                # A recipient-local send time: what waits for which moment.
                "waiting": [
                    _waiting_entry(wait, campaign=campaign)
                    for wait in run_waiting_by_due_time(run_id=run.pk)
                ],
            }
        return JsonResponse(data)

    def preview_view(self, request, pk):
        campaign = get_object_or_404(Campaign.objects.select_related("template", "sender"), pk=pk)
        if not self.has_view_permission(request, campaign):
            raise PermissionDenied
        email = request.GET.get("recipient", "").strip()
        recipient, note = preview_recipient(email=email)
        message, error = None, ""
        try:
            message = campaign_preview_message(campaign=campaign, recipient=recipient)
        except Exception as exc:  # shown to staff: a broken template is theirs to fix
            error = f"Could not render: {exc}"
        headers = []
        html = ""
        if message is not None:
            extra = message.extra_headers
            headers = [
                ("From", message.from_email),
                ("To", ", ".join(message.to)),
                ("Subject", message.subject),
                *(
                    (name, extra[name])
                    for name in ("List-Unsubscribe", "List-Unsubscribe-Post")
                    if name in extra
                ),
            ]
            html = next((c for c, mime in message.alternatives if mime == "text/html"), "")
        return TemplateResponse(
            request,
            "admin/campaigns/campaign/preview.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "original": campaign,
                "title": f"Preview: {campaign.name}",
                "recipient": recipient,
                "recipient_email": email,
                "is_sample": recipient.pk is None,
                "note": note,
                "error": error,
                "message": message,
                "headers": headers,
                "html": html,
                "links": _links(html),
                "audience_sample": _audience_sample(campaign),
                "can_act": self.has_change_permission(request, campaign),
                "senders": SenderIdentity.objects.filter(domain=""),
                "default_sender": settings.DEFAULT_FROM_EMAIL,
            },
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
        back = request.POST.get("next", "")
        if back != "preview":
            return HttpResponseRedirect(reverse("admin:campaigns_campaign_change", args=[pk]))
        url = reverse("admin:campaigns_campaign_preview", args=[pk])
        return HttpResponseRedirect(f"{url}?{urlencode({'recipient': request.POST.get('as', '')})}")

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
            return _cancel_message(campaign)
        if action == "test":
            sent_to = campaign_send_test(
                campaign=campaign,
                to=request.POST.get("to", ""),
                sender=_test_sender(request),
                render_as=_test_data_of(request),
            )
            return f"Test message sent to {sent_to}."
        if action == "retry":
            run = get_object_or_404(CampaignRun, pk=request.POST.get("run") or 0, campaign=campaign)
            count = campaign_run_retry(run=run, kinds=request.POST.getlist("kinds"))
            return f"{_messages(count)} queued again."
        run = campaign_active_run(campaign=campaign)
        if run is None:
            raise CampaignError("The campaign has no active run.")
        if action == "pause":
            held = campaign_run_pause(run=run)
            text = f"Paused: {_messages(held)} held until you resume."
            sending = run_status_counts(run_id=run.pk).get(Delivery.Status.SENDING, 0)
            if sending:
                text += (
                    f" {_messages(sending)} were being handed over: each is either sent "
                    "or held by its batch."
                )
            return text
        count = campaign_run_resume(run=run)
        return f"Resumed: {_messages(count)} to go."


def _messages(count: int) -> str:
    return f"{count} message{pluralize(count)}"


def _cancel_message(campaign: Campaign) -> str:
    """Cancel, and say what happened to the run's messages in the run's own figures."""
    run = campaign_active_run(campaign=campaign)
    cancelled = campaign_cancel(campaign=campaign)
    if run is None:
        return "Cancelled: the schedule is removed; nothing was being sent."
    counts = run_totals(run_status_counts(run_id=run.pk))
    text = f"Cancelled run {run.pk}: {_messages(cancelled)} not sent"
    if counts["sent_total"]:
        text += f", {counts['sent_total']} already sent"
    text += "."
    if counts["sending"]:
        # Claimed by a batch: it cancels each before handing it over, or
        # finishes the one on the wire; the run's totals say which.
        text += (
            f" {_messages(counts['sending'])} were being handed over: each is either "
            "sent or cancelled by its batch; the run's totals will show which."
        )
    return text


class _LinkCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href") if tag == "a" else None
        if href and href not in self.links:
            self.links.append(href)


def _links(html: str) -> list[str]:
    """The link targets of a message, in order, each once."""
    collector = _LinkCollector()
    collector.feed(html)
    return collector.links


def _audience_sample(campaign: Campaign) -> list[str]:
    try:
        return list(
            campaign_audience(campaign=campaign)
            .order_by("email")
            .values_list("email", flat=True)[:20]
        )
    except SegmentError:
        return []


def _test_data_of(request) -> Recipient | None:
    """The recipient whose data a test send shows (empty: the address's own)."""
    email = request.POST.get("as", "").strip()
    if not email:
        return None
    recipient, _note = preview_recipient(email=email)
    if recipient.pk is None:
        raise CampaignError(f"No recipient {email!r} to take the data from.")
    return recipient


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


WAITING_ZONES_SHOWN = 3


def _waiting_entry(wait, *, campaign: Campaign) -> dict:
    """One moment of a local-time run's waiting list, in words: which zones
    reach their recipients' send time then (at which local time: the same
    for all, or each its own with best hours), and how many recipients."""
    default = campaign.local_time_zone_default or "UTC"
    local = {
        zone: f"{wait.due_at.astimezone(zone_info(zone, default=default)):%H:%M}"
        for zone, _count in wait.zones
    }
    same_time = len(set(local.values())) == 1
    several = len(wait.zones) > 1  # then say how many wait in each zone
    names = [
        (zone or f"an unknown zone (sent as {default})")
        + ("" if same_time else f" at {local[zone]}")
        + (f" ({count})" if several else "")
        for zone, count in wait.zones[:WAITING_ZONES_SHOWN]
    ]
    more = len(wait.zones) - WAITING_ZONES_SHOWN
    if more > 0:
        names.append(f"{more} more zone{pluralize(more)}")
    when = timezone.localtime(wait.due_at)
    at = f"at {next(iter(local.values()))} " if same_time else ""
    return {
        "due_at": wait.due_at.isoformat(),
        "count": wait.count,
        "zones": [{"zone": zone, "count": count} for zone, count in wait.zones],
        "text": (
            f"{wait.count} recipient{pluralize(wait.count)} {at}in {', '.join(names)}: "
            f"{when:%a %d %b, %H:%M} {when.tzname()}"
        ),
    }


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
class CampaignRunAdmin(ReadOnlyAdmin):
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
        winner = path(
            "<int:pk>/winner/",
            view(lambda request, pk: choose_winner_view(self, request, pk)),
            name="campaigns_campaignrun_winner",
        )
        return [results, winner, *super().get_urls()]

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
                "can_choose": request.user.has_perm("campaigns.change_campaign"),
                **run_ab_context(run),
            },
        )


# --- Signup forms and consents ----------------------------------------------------


def signup_embed_snippet(form: SignupForm) -> str:
    """Plain HTML (no script) another site pastes to post to the form."""
    action = settings.SITE_URL + reverse("campaigns:signup", args=[form.slug])
    lines = [f'<form method="post" action="{escape(action)}">']
    lines.append('  <label>Email <input type="email" name="email" required></label>')
    if form.ask_name:
        lines.append('  <label>Name <input type="text" name="name"></label>')
    for attribute in form.attribute_names:
        label = escape(attribute.replace("_", " ").capitalize())
        lines.append(f'  <label>{label} <input type="text" name="attr_{attribute}"></label>')
    lines.append(
        '  <label><input type="checkbox" name="consent" value="on" required> '
        f"{escape(form.consent_text)}</label>"
    )
    # The honeypot: people never see it; bots fill it in.
    lines.append(
        '  <div style="position:absolute;left:-10000px" aria-hidden="true">'
        '<input type="text" name="website" tabindex="-1" autocomplete="off"></div>'
    )
    lines.append('  <button type="submit">Subscribe</button>')
    lines.append("</form>")
    return "\n".join(lines)


@admin.register(SignupForm)
class SignupFormAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "active", "public_page", "confirmed_consents")
    prepopulated_fields = {"slug": ("name",)}
    filter_horizontal = ("lists",)
    readonly_fields = ("public_page", "embed_snippet")
    fieldsets = (
        (None, {"fields": ("name", "slug", "active", "lists")}),
        (
            "What people see",
            {"fields": ("title", "introduction", "ask_name", "attribute_fields", "consent_text")},
        ),
        ("Confirmation email", {"fields": ("confirmation_template",)}),
        ("Publishing", {"fields": ("public_page", "embed_snippet")}),
    )

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(n_confirmed=Count("consents", filter=Q(consents__confirmed_at__isnull=False)))
        )

    @admin.display(description="Confirmed signups", ordering="n_confirmed")
    def confirmed_consents(self, obj):
        return getattr(obj, "n_confirmed", None)

    @admin.display(description="Public page")
    def public_page(self, obj):
        if not obj.pk:
            return "Saved forms get a page."
        url = settings.SITE_URL + reverse("campaigns:signup", args=[obj.slug])
        return format_html('<a href="{}">{}</a>', url, url)

    @admin.display(description="Embeddable HTML")
    def embed_snippet(self, obj):
        if not obj.pk:
            return "Save the form to get its snippet."
        return format_html(
            '<textarea readonly rows="12" cols="90" class="vLargeTextField">{}</textarea>'
            '<p class="help">Paste it into any page: it posts here (no script needed); '
            "the person then confirms once on this site and by email.</p>",
            signup_embed_snippet(obj),
        )


@admin.register(Consent)
class ConsentAdmin(ReadOnlyAdmin):
    """The consent record: read only (when, which form, from where, the text shown)."""

    list_display = ("recipient", "form", "source", "requested_at", "confirmed_at", "ip_address")
    list_filter = ("source", "form", ("confirmed_at", admin.EmptyFieldListFilter))
    search_fields = ("recipient__email",)
    list_select_related = ("recipient", "form")
    readonly_fields = [f.name for f in Consent._meta.fields]
    show_full_result_count = False
