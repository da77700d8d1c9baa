import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from notifier import templating
from notifier.models import (
    Delivery,
    DeliveryEvent,
    Notification,
    Preference,
    Recipient,
    Suppression,
    Template,
    Topic,
)
from notifier.selectors import preview_recipient
from notifier.sending.message import preview_render
from notifier.services.outbox import deliveries_retry
from notifier.services.recipients import normalize_email
from notifier.services.suppressions import suppression_add, suppression_lift


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
    readonly_fields = ("created_at", "updated_at")
    show_full_result_count = False


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    list_display = ("name", "subject", "updated_at", "preview_link")
    search_fields = ("name", "subject")
    readonly_fields = ("created_at", "updated_at")

    @admin.display(description="Preview")
    def preview_link(self, obj):
        url = reverse("admin:notifier_template_preview", args=[obj.pk])
        return format_html('<a href="{}">Preview</a>', url)

    def get_urls(self):
        view = self.admin_site.admin_view
        preview = path(
            "<int:pk>/preview/", view(self.preview_view), name="notifier_template_preview"
        )
        return [preview, *super().get_urls()]

    def preview_view(self, request, pk):
        template = get_object_or_404(Template, pk=pk)
        if not self.has_view_permission(request, template):
            raise PermissionDenied
        raw_context = request.GET.get("context", "").strip() or "{}"

        def render(recipient):
            context = json.loads(raw_context)
            if not isinstance(context, dict):
                raise ValueError("The context must be a JSON object.")
            return preview_render(
                subject=template.subject,
                html_body=template.html_body,
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


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
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
    readonly_fields = [f.name for f in Delivery._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

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


@admin.register(DeliveryEvent)
class DeliveryEventAdmin(admin.ModelAdmin):
    list_display = ("event_type", "email", "occurred_at", "delivery")
    list_filter = ("event_type",)
    search_fields = ("email", "esp_message_id", "event_key")
    raw_id_fields = ("delivery",)
    show_full_result_count = False
    readonly_fields = [f.name for f in DeliveryEvent._meta.fields]

    def has_add_permission(self, request):
        return False


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
