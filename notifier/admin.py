import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.defaultfilters import pluralize
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from notifier import templating
from notifier.email_html import LAYOUT_CHOICES
from notifier.engagement import (
    HISTORY_DAYS,
    MIN_EVENTS,
    engagement_insight,
    hours_chart,
    recipient_engagement_hours,
)
from notifier.models import (
    Delivery,
    DeliveryEvent,
    DeliveryResolution,
    Notification,
    Preference,
    Recipient,
    RecipientErasure,
    SenderIdentity,
    Suppression,
    Template,
    TemplateRevision,
    Topic,
    WebhookDelivery,
    WebhookEndpoint,
)
from notifier.selectors import delivery_timeline, preview_recipient
from notifier.sending.message import delivery_build_message, preview_render
from notifier.services.digests import digests_send_now
from notifier.services.outbox import deliveries_retry
from notifier.services.privacy import AlreadyErased, email_hashes, recipient_erase, recipient_export
from notifier.services.recipients import normalize_email
from notifier.services.suppressions import suppression_add, suppression_lift
from notifier.services.templates import (
    template_can_manage,
    template_compile,
    template_delete,
    template_history,
    template_restore,
    template_save,
    template_sent_html,
)
from notifier.services.webhooks import webhooks_send_again


class ReadOnlyAdmin(admin.ModelAdmin):
    """A record staff read but never add, change or delete here."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class RecipientForm(forms.ModelForm):
    class Meta:
        model = Recipient
        fields = ["email", "name", "attributes", "time_zone", "locale", "status"]

    def clean_email(self):
        from notifier.errors import InvalidAddress

        try:
            return normalize_email(self.cleaned_data["email"])
        except InvalidAddress as exc:
            raise forms.ValidationError(str(exc)) from exc


def preview_response(
    model_admin, request, *, original, render, template_name: str, **extra
) -> TemplateResponse:
    """A preview page (template or campaign): ``render(recipient)`` for the
    recipient named in ``?recipient=`` (sample data if none); a broken render
    is shown to staff, never a server error."""
    email = request.GET.get("recipient", "").strip()
    recipient, error = preview_recipient(email=email)
    rendered = None
    try:
        rendered = render(recipient)
    except Exception as exc:
        error = f"{error} Could not render: {exc}".strip()
    return TemplateResponse(
        request,
        template_name,
        {
            **model_admin.admin_site.each_context(request),
            "opts": model_admin.model._meta,
            "original": original,
            "title": f"Preview: {original.name}",
            "rendered": rendered,
            "error": error,
            "recipient_email": email,
            **extra,
        },
    )


@admin.register(Recipient)
class RecipientAdmin(admin.ModelAdmin):
    form = RecipientForm
    list_display = ("email", "name", "status", "time_zone", "created_at")
    list_filter = ("status", "locale")
    search_fields = ("email", "name")
    readonly_fields = ("created_at", "updated_at", "send_time_insight")
    show_full_result_count = False
    actions = ["send_digest_now", "export_data", "erase"]
    change_list_template = "admin/notifier/recipient/change_list.html"

    @admin.display(description="When they open and click")
    def send_time_insight(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        hours = recipient_engagement_hours(recipient=obj)
        best = hours.best
        zone = obj.time_zone or "UTC"
        if best is not None:
            caption = (
                f"Best hour: {best:02d}:00 their time ({zone}), from {hours.total} opens and "
                f"clicks in the last {HISTORY_DAYS} days."
            )
        else:
            caption = (
                f"{hours.total} opens and clicks in the last {HISTORY_DAYS} days: not enough "
                f"for a best hour (it takes {MIN_EVENTS}); campaigns send at their local time."
            )
        label = f"Opens and clicks of {obj.email} by hour of their day"
        # The template escapes what it shows; the result is HTML to keep.
        return mark_safe(
            render_to_string(
                "admin/notifier/engagement_hours.html",
                {"chart": hours_chart(hours.counts, label=label, best=best), "caption": caption},
            )
        )

    def get_urls(self):
        view = self.admin_site.admin_view(self.engagement_view)
        return [
            path("engagement/", view, name="notifier_recipient_engagement"),
            *super().get_urls(),
        ]

    def engagement_view(self, request):
        """Send-time insight over every recipient (their local hours)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        insight = engagement_insight()
        peak = insight.hours.best
        peak_text = f"; busiest: {peak:02d}:00" if peak is not None else ""
        with_best = sum(insight.best_hour_recipients)
        return TemplateResponse(
            request,
            "admin/notifier/recipient/engagement.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "title": "Send-time insight",
                "insight": insight,
                "history_days": HISTORY_DAYS,
                "min_events": MIN_EVENTS,
                "all_chart": hours_chart(
                    insight.hours.counts, label="Opens and clicks by local hour", best=peak
                ),
                "all_caption": f"{insight.events_read} opens and clicks of "
                f"{insight.recipients_with_history} recipients{peak_text}.",
                "best_chart": hours_chart(
                    insight.best_hour_recipients, label="Recipients by their best local hour"
                ),
                "best_caption": _recipients_have(with_best, "a best hour")
                + "; "
                + _recipients_have(
                    insight.recipients_with_history - with_best, "too few opens and clicks"
                )
                + ".",
            },
        )

    @admin.action(
        description="Send digest now (their pending hourly/daily notifications)",
        permissions=["change"],
    )
    def send_digest_now(self, request, queryset):
        _digest_sent_message(
            self,
            request,
            digests_send_now(recipient_ids=list(queryset.values_list("pk", flat=True))),
        )

    @admin.action(description="Export all their data (GDPR, JSON)", permissions=["view"])
    def export_data(self, request, queryset):
        exports = [recipient_export(recipient=r) for r in queryset[:100]]
        document = exports[0] if len(exports) == 1 else {"recipients": exports}
        response = HttpResponse(
            json.dumps(document, indent=2, ensure_ascii=False),
            content_type="application/json; charset=utf-8",
        )
        name = "recipient-export.json"
        if len(exports) == 1:
            name = f"recipient-{exports[0]['recipient']['public_id']}.json"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response

    @admin.action(
        description="Erase selected recipients (GDPR; asks to confirm)", permissions=["delete"]
    )
    def erase(self, request, queryset):
        if request.POST.get("confirm_erase") != "yes":
            return TemplateResponse(
                request,
                "admin/notifier/recipient_erase.html",
                {
                    **self.admin_site.each_context(request),
                    "opts": self.model._meta,
                    "queryset": queryset,
                    "title": "Erase recipients",
                    "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
                },
            )
        erased = skipped = 0
        for recipient in queryset:
            try:
                recipient_erase(
                    recipient=recipient,
                    by=f"staff:{request.user.get_username()}",
                    user=request.user,
                )
                erased += 1
            except AlreadyErased:
                skipped += 1
        text = f"{erased} recipients erased; their addresses are suppressed by hash."
        if skipped:
            text += f" {skipped} were erased already."
        self.message_user(request, text, messages.SUCCESS)
        return None


def _recipients_have(count: int, what: str) -> str:
    return f"{count} recipient{pluralize(count)} {pluralize(count, 'has,have')} {what}"


# What the links a message gets render as in the editor's preview (sample data).
LIVE_PREVIEW_LINKS = {
    "unsubscribe_url": "https://example.com/unsubscribe/sample",
    "preferences_url": "https://example.com/preferences/sample",
}


class LivePreviewForm(forms.Form):
    """What the template editor posts while staff type."""

    subject = forms.CharField(max_length=500, required=False)
    source_format = forms.ChoiceField(choices=Template.SourceFormat.choices, required=False)
    layout = forms.ChoiceField(choices=LAYOUT_CHOICES, required=False)
    html_body = forms.CharField(max_length=200_000, required=False, strip=False)
    text_body = forms.CharField(max_length=200_000, required=False, strip=False)


class TemplateForm(forms.ModelForm):
    class Meta:
        model = Template
        fields = ["name", "kind", "subject", "source_format", "layout", "html_body", "text_body"]

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        # Left out (an older form, a script): HTML in the default layout.
        for name in ("source_format", "layout"):
            self.fields[name].required = False
        if user is not None and not template_can_manage(
            user=user, kind=Template.Kind.TRANSACTIONAL
        ):
            # Campaign templates only: the kind is fixed, whatever is posted.
            self.fields["kind"].choices = [(Template.Kind.CAMPAIGN, Template.Kind.CAMPAIGN.label)]
            self.fields["kind"].disabled = True
            self.initial["kind"] = Template.Kind.CAMPAIGN

    def clean_source_format(self):
        return self.cleaned_data["source_format"] or Template.SourceFormat.HTML

    def clean_layout(self):
        return self.cleaned_data["layout"] or Template._meta.get_field("layout").default


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    """Templates, split by kind: campaign ones for marketing staff, transactional
    ones (send(), API, topics) only for holders of manage_transactional_template.

    Every save, restore and delete goes through ``notifier.services.templates``,
    which records a revision; the History page shows each revision's diff and
    restores one.
    """

    form = TemplateForm
    change_form_template = "admin/notifier/template/change_form.html"
    list_display = ("name", "kind", "subject", "updated_at", "preview_link")
    list_filter = ("kind",)
    search_fields = ("name", "subject")
    readonly_fields = ("created_at", "updated_at")
    object_history_template = "admin/notifier/template_history.html"

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if not template_can_manage(user=request.user, kind=Template.Kind.TRANSACTIONAL):
            queryset = queryset.filter(kind=Template.Kind.CAMPAIGN)
        return queryset

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)

        class UserTemplateForm(form):
            def __init__(self, *args, **inner):
                super().__init__(*args, user=request.user, **inner)

        return UserTemplateForm

    def _may_manage(self, request, obj) -> bool:
        return obj is None or template_can_manage(user=request.user, template=obj)

    def has_view_permission(self, request, obj=None):
        return super().has_view_permission(request, obj) and self._may_manage(request, obj)

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and self._may_manage(request, obj)

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and self._may_manage(request, obj)

    def save_model(self, request, obj, form, change):
        template_save(template=obj, user=request.user)

    def delete_model(self, request, obj):
        template_delete(template=obj, user=request.user)

    def delete_queryset(self, request, queryset):
        for template in queryset:
            template_delete(template=template, user=request.user)

    @admin.display(description="Preview")
    def preview_link(self, obj):
        url = reverse("admin:notifier_template_preview", args=[obj.pk])
        return format_html('<a href="{}">Preview</a>', url)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/preview/", view(self.preview_view), name="notifier_template_preview"),
            path(
                "live-preview/",
                view(require_POST(self.live_preview_view)),
                name="notifier_template_live_preview",
            ),
            path(
                "<int:pk>/history/<int:revision_id>/restore/",
                view(require_POST(self.restore_view)),
                name="notifier_template_restore",
            ),
            *super().get_urls(),
        ]

    def history_view(self, request, object_id, extra_context=None):
        """Every revision of the template with its diff, newest first."""
        template = self.get_object(request, unquote(object_id))
        if template is None:
            raise Http404("No such template.")
        if not self.has_view_permission(request, template):
            raise PermissionDenied
        revisions = template_history(template=template)
        return TemplateResponse(
            request,
            self.object_history_template,
            {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "original": template,
                "object": template,
                "title": f"History: {template.name}",
                "revisions": revisions,
                "can_restore": self.has_change_permission(request, template),
            },
        )

    def restore_view(self, request, pk, revision_id):
        template = get_object_or_404(self.get_queryset(request), pk=pk)
        if not self.has_change_permission(request, template):
            raise PermissionDenied
        revision = get_object_or_404(TemplateRevision, pk=revision_id, template=template)
        try:
            template_restore(revision=revision, user=request.user)
        except ValidationError as exc:
            self.message_user(request, f"Not restored: {exc}", messages.ERROR)
        else:
            self.message_user(
                request,
                f"Restored the version of {revision.created_at:%Y-%m-%d %H:%M:%S} "
                f"(revision {revision.pk}).",
                messages.SUCCESS,
            )
        return HttpResponseRedirect(reverse("admin:notifier_template_history", args=[pk]))

    def live_preview_view(self, request):
        """The editor's live preview: the posted (unsaved) source compiled as
        a save would (layout, MJML, inlined CSS) and rendered with sample data.
        JSON: {subject, html, text} or {error}; a broken source is an answer,
        not a server error."""
        if not (self.has_add_permission(request) or self.has_change_permission(request)):
            raise PermissionDenied
        form = LivePreviewForm(request.POST)
        if not form.is_valid():
            problems = "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items())
            return JsonResponse({"error": f"Cannot preview: {problems}"}, status=400)
        data = form.cleaned_data
        unsaved = Template(
            subject=data["subject"],
            html_body=data["html_body"],
            text_body=data["text_body"],
            source_format=data["source_format"] or Template.SourceFormat.HTML,
            layout=data["layout"] or Template._meta.get_field("layout").default,
        )
        try:
            template_compile(template=unsaved)
            subject, html, text = preview_render(
                subject=unsaved.subject,
                html_body=unsaved.compiled_html,
                text_body=unsaved.text_body,
                context=LIVE_PREVIEW_LINKS,
                recipient=preview_recipient(email="")[0],
            )
        except Exception as exc:  # the author's half-typed source: say what is wrong
            return JsonResponse({"error": str(exc)})
        return JsonResponse({"subject": subject, "html": html, "text": text})

    def preview_view(self, request, pk):
        template = get_object_or_404(self.get_queryset(request), pk=pk)
        if not self.has_view_permission(request, template):
            raise PermissionDenied
        raw_context = request.GET.get("context", "").strip() or "{}"

        def render(recipient):
            context = json.loads(raw_context)
            if not isinstance(context, dict):
                raise ValueError("The context must be a JSON object.")
            return preview_render(
                subject=template.subject,
                html_body=template_sent_html(template),
                text_body=template.text_body,
                context=templating.plain_data(context),
                recipient=recipient,
            )

        return preview_response(
            self,
            request,
            original=template,
            render=render,
            template_name="admin/notifier/template_preview.html",
            raw_context=raw_context,
        )


@admin.register(TemplateRevision)
class TemplateRevisionAdmin(ReadOnlyAdmin):
    """Every recorded template version, deleted templates' included (read-only)."""

    list_display = ("name", "kind", "action", "changed_by_name", "created_at", "template")
    list_filter = ("action", "kind")
    search_fields = ("name", "changed_by_name")
    list_select_related = ("template",)
    readonly_fields = [f.name for f in TemplateRevision._meta.fields]

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if not template_can_manage(user=request.user, kind=Template.Kind.TRANSACTIONAL):
            queryset = queryset.filter(kind=Template.Kind.CAMPAIGN)
        return queryset


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    """Deliveries for people: each page shows the message as its recipient got
    it (rendered again from the stored template and data), the timeline of
    what the ESP reported, and the outcome in words. The outbox's machinery
    (claim, lease, dispatch times, raw context) stays off the page. Rows are
    never edited here: retries are list actions.
    """

    list_display = (
        "id",
        "recipient",
        "kind",
        "status",
        "attempts",
        "next_attempt_at",
        "sent_at",
        "short_error",
    )
    list_filter = ("status", "kind", "transport")
    search_fields = ("recipient__email", "esp_message_id", "idempotency_key", "=uuid")
    list_select_related = ("recipient",)
    show_full_result_count = False
    date_hierarchy = "created_at"
    actions = ["retry_failed", "retry_failed_and_unknown"]
    change_form_template = "admin/notifier/delivery/change_form.html"
    fieldsets = [
        (None, {"fields": ["recipient_link", "message_label", "kind", "group_label"]}),
        (
            "Outcome",
            {
                "fields": [
                    "status",
                    "status_reason",
                    "failure_kind",
                    "last_error",
                    "attempts",
                    "next_attempt_at",
                    "sent_at",
                    "opens",
                    "clicks",
                ]
            },
        ),
        (
            "Sending",
            {"fields": ["from_email", "transport", "esp_id", "created_at"]},
        ),
    ]
    # Shown only when they say something about the row's state.
    FIELDS_FOR_STATUS = {
        "next_attempt_at": {Delivery.Status.PENDING},
        "failure_kind": {Delivery.Status.FAILED},
        "last_error": {Delivery.Status.FAILED, Delivery.Status.UNKNOWN, Delivery.Status.PENDING},
    }
    # Every field shown is read only: what was sent is never edited here.
    readonly_fields = [name for _title, options in fieldsets for name in options["fields"]]

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return self.fieldsets
        hidden = {
            name
            for name, statuses in self.FIELDS_FOR_STATUS.items()
            if obj.status not in statuses and not (name == "last_error" and obj.last_error)
        }
        return [
            (title, {**options, "fields": [f for f in options["fields"] if f not in hidden]})
            for title, options in self.fieldsets
        ]

    def get_queryset(self, request):
        """Campaign deliveries only, unless the user may read message content.

        Transactional, notification and digest rows carry secrets in their
        context, bodies and headers (password-reset links); without
        ``notifier.view_message_content`` they are not listed, not found by
        search and not opened (the change page answers as for a missing row).
        """
        queryset = super().get_queryset(request)
        if not request.user.has_perm("notifier.view_message_content"):
            queryset = queryset.filter(kind=Delivery.Kind.CAMPAIGN)
        return queryset

    def get_list_filter(self, request):
        if request.user.has_perm("notifier.view_message_content"):
            return self.list_filter
        return tuple(f for f in self.list_filter if f != "kind")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        # The list's retry actions need the permission; a row's own page is
        # read-only (no Save buttons).
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None):
        return False

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is not None:
            obj = (
                Delivery.objects.select_related("recipient", "template", "run")
                .filter(pk=obj.pk)
                .first()
            )
        return obj

    @admin.display(description="Recipient")
    def recipient_link(self, obj):
        url = reverse("admin:notifier_recipient_change", args=[obj.recipient_id])
        return format_html('<a href="{}">{}</a>', url, obj.recipient)

    @admin.display(description="Message")
    def message_label(self, obj):
        if obj.template_id:
            return f"Template: {obj.template.name}"
        return obj.subject or obj.get_kind_display()

    @admin.display(description="Sent with")
    def group_label(self, obj):
        return str(obj.run) if obj.run_id else "-"

    @admin.display(description="ESP message ID")
    def esp_id(self, obj):
        return obj.esp_message_id or "-"

    def change_view(self, request, object_id, form_url="", extra_context=None):
        delivery = self.get_object(request, unquote(object_id))
        extra = dict(extra_context or {})
        if delivery is not None and self.has_view_permission(request, delivery):
            message, error = delivery_as_received(delivery)
            subject = message.subject if message is not None else str(delivery.template or "")
            extra.update(
                title=f"{subject or delivery.get_kind_display()} \u2192 {delivery.recipient.email}",
                subtitle=None,  # the title says it
                received=message,
                received_html=_html_part(message),
                received_headers=_shown_headers(message),
                render_error=error,
                timeline=delivery_timeline(delivery=delivery),
            )
        return super().change_view(request, object_id, form_url, extra_context=extra)

    @admin.display(description="Last error")
    def short_error(self, obj):
        return (obj.last_error or obj.status_reason)[:80]

    @admin.action(description="Retry selected failed sends", permissions=["change"])
    def retry_failed(self, request, queryset):
        count = deliveries_retry(
            ids=queryset.values_list("id", flat=True), kinds=["transient", "permanent"]
        )
        self.message_user(request, f"{count} failed deliveries queued again.", messages.SUCCESS)

    @admin.action(
        description="Retry selected failed and in-doubt (unknown) sends; may duplicate in-doubt ones",
        permissions=["change"],
    )
    def retry_failed_and_unknown(self, request, queryset):
        count = deliveries_retry(
            ids=queryset.values_list("id", flat=True), kinds=["transient", "permanent", "unknown"]
        )
        self.message_user(request, f"{count} deliveries queued again.", messages.SUCCESS)


# The headers a delivery page shows, in this order (the rest is plumbing).
SHOWN_HEADERS = ("From", "To", "Subject", "Reply-To", "List-Unsubscribe", "Message-ID")


def delivery_as_received(delivery: Delivery):
    """(message, error): ``delivery`` rendered as its recipient got it, or
    why it cannot be (a template changed since into one that fails)."""
    try:
        return delivery_build_message(delivery), ""
    except Exception as exc:
        return None, f"The message cannot be rendered again: {exc}"


def _html_part(message) -> str:
    if message is None:
        return ""
    return next((body for body, mime in message.alternatives if mime == "text/html"), "")


def _shown_headers(message) -> list[tuple[str, str]]:
    if message is None:
        return []
    values = {
        "From": message.from_email,
        "To": ", ".join(message.to),
        "Subject": message.subject,
        **message.extra_headers,
    }
    return [(name, values[name]) for name in SHOWN_HEADERS if values.get(name)]


@admin.register(DeliveryEvent)
class DeliveryEventAdmin(admin.ModelAdmin):
    list_display = ("event_type", "email", "occurred_at", "delivery")
    list_filter = ("event_type",)
    search_fields = ("email", "esp_message_id", "event_key")
    raw_id_fields = ("delivery",)
    list_select_related = ("delivery__recipient", "delivery__template")
    show_full_result_count = False
    readonly_fields = [f.name for f in DeliveryEvent._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # a record of what the ESP said: read-only


class SuppressionForm(forms.ModelForm):
    class Meta:
        model = Suppression
        fields = ["email", "reason", "note"]

    def clean_email(self):
        from notifier.errors import InvalidAddress

        try:
            email = normalize_email(self.cleaned_data["email"])
        except InvalidAddress as exc:
            raise forms.ValidationError(str(exc)) from exc
        active = Suppression.objects.filter(email=email, lifted_at__isnull=True).first()
        if self.instance.pk is None and active is not None:
            raise forms.ValidationError(
                f"{email} is already suppressed ({active.get_reason_display()})."
            )
        return email


@admin.register(Suppression)
class SuppressionAdmin(admin.ModelAdmin):
    """Staff see every suppression and lift them with a recorded reason.

    Suppressions are never deleted (history of why an address was not mailed);
    lifting keeps the row with who lifted it, when and why.
    """

    form = SuppressionForm
    list_display = ("email", "reason", "created_at", "lifted_at", "lifted_by", "lifted_reason")
    list_filter = ("reason", ("lifted_at", admin.EmptyFieldListFilter))
    search_fields = ("email",)
    readonly_fields = ("created_at", "lifted_at", "lifted_reason", "lifted_by")
    list_select_related = ("lifted_by",)

    def get_search_results(self, request, queryset, search_term):
        """An erased address is found by typing it: its hash is compared."""
        results, distinct = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        if "@" in term:
            try:
                hashes = email_hashes(normalize_email(term))
            except Exception:
                return results, distinct
            results = results | queryset.filter(email_hash__in=hashes)
        return results, distinct

    show_full_result_count = False
    actions = ["lift"]

    def get_readonly_fields(self, request, obj=None):
        if obj is not None:
            return ("email", "reason", *self.readonly_fields)
        return self.readonly_fields

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        created = suppression_add(email=obj.email, reason=obj.reason, note=obj.note)
        obj.pk, obj.created_at = created.pk, created.created_at
        obj._state.adding = False

    @admin.action(
        description="Lift selected suppressions (asks for a reason)", permissions=["change"]
    )
    def lift(self, request, queryset):
        reason = request.POST.get("lift_reason", "").strip()
        if not reason:
            return TemplateResponse(
                request,
                "admin/notifier/suppression_lift.html",
                {
                    **self.admin_site.each_context(request),
                    "opts": self.model._meta,
                    "queryset": queryset,
                    "title": "Lift suppressions",
                    "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
                    "asked_again": "lift_reason" in request.POST,
                },
            )
        lifted = 0
        for suppression in queryset.filter(lifted_at__isnull=True):
            suppression_lift(suppression=suppression, reason=reason, user=request.user)
            lifted += 1
        self.message_user(request, f"{lifted} suppressions lifted.", messages.SUCCESS)
        return None


@admin.register(SenderIdentity)
class SenderIdentityAdmin(admin.ModelAdmin):
    """The From identities mail may use (see notifier.services.senders).

    Administrators only: the Marketing group has no permission on this model,
    it picks from these identities on a campaign.
    """

    list_display = ("__str__", "name", "email", "domain", "created_at")
    search_fields = ("name", "email", "domain")
    readonly_fields = ("created_at",)


class TopicForm(forms.ModelForm):
    class Meta:
        model = Topic
        fields = [
            "key",
            "name",
            "description",
            "default_frequency",
            "instant_template",
            "digest_item",
            "digest_cap",
            "critical",
            "quiet_hours_start",
            "quiet_hours_end",
        ]
        help_texts = {
            "instant_template": "Email sent for an instant notification (context: data, topic). "
            "Leave empty for a plain email with the topic name and the digest entry.",
            "digest_item": "One entry of this topic's digest section (context: data, topic, "
            "created_at).",
        }

    def clean_digest_item(self):
        source = self.cleaned_data["digest_item"]
        try:
            templating.check_syntax(source)
        except templating.TemplateSyntaxProblem as exc:
            raise forms.ValidationError(str(exc)) from exc
        return source


@admin.register(Topic)
class TopicAdmin(admin.ModelAdmin):
    form = TopicForm
    list_display = ("key", "name", "default_frequency", "digest_cap")
    search_fields = ("key", "name")
    prepopulated_fields = {"key": ("name",)}
    actions = ["send_digest_now"]

    @admin.action(
        description="Send digest now to everyone with pending notifications of these topics",
        permissions=["change"],
    )
    def send_digest_now(self, request, queryset):
        _digest_sent_message(
            self, request, digests_send_now(topic_ids=list(queryset.values_list("pk", flat=True)))
        )


def _digest_sent_message(model_admin, request, result: dict[str, int]) -> None:
    if not result["recipients"]:
        model_admin.message_user(
            request, "Nobody has pending digest notifications: nothing to send.", messages.WARNING
        )
        return
    model_admin.message_user(
        request,
        f"Building and sending the digests of {result['recipients']} "
        f"recipient{'s' if result['recipients'] != 1 else ''} now; they appear under Deliveries "
        "within a few seconds.",
        messages.SUCCESS,
    )


@admin.register(Preference)
class PreferenceAdmin(admin.ModelAdmin):
    list_display = ("recipient", "topic", "frequency", "updated_at")
    list_filter = ("frequency", "topic")
    search_fields = ("recipient__email",)
    raw_id_fields = ("recipient",)
    list_select_related = ("recipient", "topic")


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("recipient", "topic", "frequency", "created_at", "included_at")
    list_filter = ("frequency", "topic", ("included_at", admin.EmptyFieldListFilter))
    search_fields = ("recipient__email",)
    raw_id_fields = ("recipient", "digest")
    list_select_related = ("recipient", "topic")
    show_full_result_count = False


@admin.register(DeliveryResolution)
class DeliveryResolutionAdmin(ReadOnlyAdmin):
    """What the provider said about in-doubt deliveries (read-only)."""

    list_display = ("created_at", "delivery", "verdict", "detail")
    list_filter = ("verdict",)
    search_fields = ("delivery__uuid", "delivery__recipient__email")
    list_select_related = ("delivery__recipient",)
    raw_id_fields = ("delivery",)


@admin.register(RecipientErasure)
class RecipientErasureAdmin(ReadOnlyAdmin):
    """The erase audit: read only, never deleted."""

    list_display = ("erased_at", "erased_by_name", "recipient", "email_hash")
    readonly_fields = [f.name for f in RecipientErasure._meta.fields]


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(label="URL", max_length=500, assume_scheme="https")
    event_types = forms.MultipleChoiceField(
        choices=WebhookEndpoint.EventType.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="The events this endpoint is told about.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["name", "url", "secret", "event_types", "active"]
        widgets = {"secret": forms.TextInput(attrs={"size": 60, "autocomplete": "off"})}
        help_texts = {
            "secret": "Signs every call (HMAC-SHA256): give the receiver the same secret. "
            "Use a long random string.",
        }


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    list_display = ("name", "url", "active", "events", "log_link")

    @admin.display(description="Events")
    def events(self, obj):
        return ", ".join(obj.event_types or [])

    @admin.display(description="Log")
    def log_link(self, obj):
        url = (
            reverse("admin:notifier_webhookdelivery_changelist") + f"?endpoint__id__exact={obj.pk}"
        )
        return format_html('<a href="{}">Calls</a>', url)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    """Each endpoint's log of calls; "send again" makes chosen calls once more."""

    list_display = (
        "created_at",
        "endpoint",
        "event_type",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "delivered_at",
    )
    list_filter = ("status", "event_type", "endpoint")
    list_select_related = ("endpoint",)
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields] + ["uuid"]
    show_full_result_count = False
    actions = ["send_again"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Send selected calls again", permissions=["change"])
    def send_again(self, request, queryset):
        n = webhooks_send_again(rows=queryset)
        self.message_user(request, f"{n} calls will be sent again.", messages.SUCCESS)
