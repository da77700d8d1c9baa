from django.contrib import admin, messages

from api.models import ApiToken
from api.services import api_token_create, api_tokens_revoke


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = (
        "service",
        "key_prefix",
        "description",
        "rate_limit_per_minute",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    list_filter = ("service", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("service", "description", "key_prefix")
    readonly_fields = ("key_prefix", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("service", "description", "rate_limit_per_minute")
        return (
            "service",
            "key_prefix",
            "description",
            "rate_limit_per_minute",
            *self.readonly_fields[1:],
        )

    def get_readonly_fields(self, request, obj=None):
        # The service names a token's messages and idempotency keys: fixed once created.
        return ("service", *self.readonly_fields) if obj else self.readonly_fields

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        token, secret = api_token_create(
            service=obj.service,
            description=obj.description,
            rate_limit_per_minute=obj.rate_limit_per_minute,
        )
        obj.pk = token.pk
        obj.key_prefix, obj.key_hash, obj.created_at = (
            token.key_prefix,
            token.key_hash,
            token.created_at,
        )
        messages.warning(
            request,
            f"The token for {token.service} is {secret} . Copy it now: it is not stored and "
            "cannot be shown again.",
        )

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke(self, request, queryset):
        count = api_tokens_revoke(ids=list(queryset.values_list("id", flat=True)))
        self.message_user(request, f"Revoked {count} token(s).", messages.SUCCESS)
