"""API tokens of calling services and the answers kept for Idempotency-Keys."""

from django.db import models


class ApiToken(models.Model):
    """A calling service's credential. Only a SHA-256 hash of the secret is
    stored (the secret is random and long, so a slow hash adds nothing); the
    secret itself is shown once, when the token is created."""

    # 40: "api:<service>:<Idempotency-Key>" must fit Delivery.idempotency_key.
    service = models.SlugField(
        max_length=40,
        help_text="The calling service. Its tokens share its messages and idempotency keys.",
    )
    description = models.CharField(max_length=200, blank=True)
    key_prefix = models.CharField(
        max_length=16, editable=False, help_text="The token's first characters, to recognise it."
    )
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Requests per minute for this token; empty: API_RATE_LIMIT_PER_MINUTE.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["service", "-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.service} ({self.key_prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class IdempotencyRecord(models.Model):
    """The first successful answer to a request carrying an Idempotency-Key.

    Written in the same transaction as the work it describes, so a record
    exists exactly when the work was done. ``request_hash`` covers method,
    path and the canonical JSON body: the same key with another body is
    refused.
    """

    service = models.SlugField(max_length=40)
    key = models.CharField(max_length=200)
    request_hash = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField(default=0)
    response = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["service", "key"], name="idempotency_one_per_key"),
        ]
        indexes = [models.Index(fields=["created_at"], name="idempotency_created_idx")]

    def __str__(self) -> str:
        return f"{self.service}:{self.key}"
