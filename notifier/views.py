"""Public pages reached from links in emails: no login, plain HTML, no JavaScript.

The signed token in the URL is the only credential (see
``notifier.services.unsubscribe``). The one-click unsubscribe URL accepts a
POST with no CSRF token, as RFC 8058 requires (mail providers post to it);
a GET never changes anything, so link scanners cannot unsubscribe anyone.
"""

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import transaction
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from notifier.forms import PreferencesForm
from notifier.models import Suppression
from notifier.selectors import active_suppression, recipient_topic_frequencies
from notifier.services.preferences import (
    preferences_update,
    recipient_quiet_hours_set,
    recipient_weekly_digest_set,
)
from notifier.services.unsubscribe import (
    SCOPE_ALL,
    InvalidLink,
    LinkExpired,
    preferences_token,
    preferences_token_read,
    recipient_resubscribe,
    recipient_unsubscribe,
    scope_describe,
    unsubscribe_token_read,
)

DONE_MESSAGES = {
    "saved": "Your choices are saved.",
    "unsubscribed": "You are unsubscribed from all email from us.",
    "resubscribed": "You will get email from us again.",
}


def home(request):
    return redirect("admin:index")


def _invalid_link(request, exc: InvalidLink):
    if isinstance(exc, LinkExpired):
        context = {"days": settings.NOTIFIER_PREFERENCE_LINK_DAYS}
        return render(request, "notifier/public/link_expired.html", context, status=410)
    return render(request, "notifier/public/invalid_link.html", {"error": str(exc)}, status=400)


def _hhmm(value) -> str:
    return value.strftime("%H:%M") if value else ""


def _one_click(request) -> bool:
    try:
        return request.POST.get("List-Unsubscribe") == "One-Click"
    except Exception:  # an unreadable body is still an unsubscribe request
        return False


@csrf_exempt
@login_not_required
@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def unsubscribe(request, token: str):
    try:
        recipient, scope = unsubscribe_token_read(token)
    except InvalidLink as exc:
        return _invalid_link(request, exc)
    context = {
        "email": recipient.email,
        "scope_label": scope_describe(scope),
        "preferences_url": reverse(
            "notifier:preferences", args=[preferences_token(recipient=recipient)]
        ),
    }
    if request.method == "POST":
        source = "one-click" if _one_click(request) else "unsubscribe page"
        context["message"] = recipient_unsubscribe(recipient=recipient, scope=scope, source=source)
        return render(request, "notifier/public/unsubscribed.html", context)
    return render(request, "notifier/public/unsubscribe.html", context)


@login_not_required
@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def preferences(request, token: str):
    try:
        recipient = preferences_token_read(token)
    except InvalidLink as exc:
        return _invalid_link(request, exc)
    topics = recipient_topic_frequencies(recipient=recipient)
    status = 200
    if request.method == "POST":
        action = request.POST.get("action", "save")
        done = None
        if action == "unsubscribe_all":
            recipient_unsubscribe(recipient=recipient, scope=SCOPE_ALL, source="preference page")
            done = "unsubscribed"
        elif action == "resubscribe":
            recipient_resubscribe(recipient=recipient)
            done = "resubscribed"
        else:
            form = PreferencesForm(request.POST, topics=topics)
            if form.is_valid():
                with transaction.atomic():
                    preferences_update(recipient=recipient, frequencies=form.frequencies())
                    weekday, at = form.weekly_digest(
                        current=(recipient.weekly_digest_day, recipient.weekly_digest_time)
                    )
                    recipient_weekly_digest_set(recipient=recipient, weekday=weekday, at=at)
                    start, end, mode = form.quiet_hours(
                        current=(
                            recipient.quiet_hours_start,
                            recipient.quiet_hours_end,
                            recipient.quiet_hours_mode,
                        )
                    )
                    recipient_quiet_hours_set(recipient=recipient, start=start, end=end, mode=mode)
                done = "saved"
            else:
                status = 400
        if done:
            return redirect(f"{request.path}?done={done}")
    else:
        form = PreferencesForm(
            topics=topics,
            initial={
                "weekly_digest_day": recipient.weekly_digest_day,
                "weekly_digest_time": recipient.weekly_digest_time.strftime("%H:%M"),
                "quiet_hours_start": _hhmm(recipient.quiet_hours_start),
                "quiet_hours_end": _hhmm(recipient.quiet_hours_end),
                "quiet_hours_mode": recipient.quiet_hours_mode,
            },
        )
    suppression = active_suppression(email=recipient.email)
    context = {
        "email": recipient.email,
        "time_zone": recipient.time_zone,
        "form": form,
        "message": DONE_MESSAGES.get(request.GET.get("done", "")),
        "suppression": suppression,
        "self_unsubscribed": suppression is not None
        and suppression.reason == Suppression.Reason.UNSUBSCRIBED,
    }
    return render(request, "notifier/public/preferences.html", context, status=status)
