"""Public signup pages: no login, no JavaScript.

``/subscribe/<slug>/`` shows a form and takes its post. The post is
``csrf_exempt`` because other sites embed the form (a plain HTML snippet from
the admin) and post to it cross-site. Instead of a CSRF cookie it is guarded
by a per-address rate limit (Redis), a honeypot field (a bot that fills it
is told "check your inbox" and nothing happens) and a signed, timestamped
token that can be used once: a post without one (the embedded snippet) is
shown this page again, filled in, to be sent once more from here. The
confirmation link itself then proves the address (double opt-in).
"""

from django import forms
from django.http import Http404
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt

from campaigns.models import SignupForm
from campaigns.services.signups import (
    SignupRefused,
    SignupRequest,
    confirm_token_read,
    signup_confirm,
    signup_form_token,
    signup_form_token_check,
    signup_form_token_use,
    signup_rate_limit_take,
    signup_request,
)
from config.login import client_ip

HONEYPOT = "website"


def signup_fields_form(form: SignupForm) -> type[forms.Form]:
    fields = {"email": forms.EmailField(label="Email address", max_length=254)}
    if form.ask_name:
        fields["name"] = forms.CharField(label="Name", max_length=200, required=False)
    for attribute in form.attribute_names:
        fields[f"attr_{attribute}"] = forms.CharField(
            label=attribute.replace("_", " ").capitalize(), max_length=200, required=False
        )
    fields["consent"] = forms.BooleanField(label=form.consent_text, required=True)
    fields[HONEYPOT] = forms.CharField(required=False)
    return type("SignupFieldsForm", (forms.Form,), fields)


def _page(request, form, fields, *, token=None, status=200, error="", note=""):
    return render(
        request,
        "campaigns/public/signup.html",
        {
            "signup_form": form,
            "fields": fields,
            "token": token or signup_form_token(form=form),
            "error": error,
            "note": note,
            "honeypot": HONEYPOT,
        },
        status=status,
    )


def _message(request, title: str, text: str, *, status: int = 200):
    return render(
        request, "campaigns/public/message.html", {"title": title, "text": text}, status=status
    )


@csrf_exempt
def signup(request, slug: str):
    form = SignupForm.objects.filter(slug=slug, active=True).first()
    if form is None:
        raise Http404("No such signup form.")
    fields_class = signup_fields_form(form)
    if request.method != "POST":
        return _page(request, form, fields_class())
    ip = client_ip(request)
    if not signup_rate_limit_take(client=ip or "unknown"):
        return _message(
            request,
            "Too many requests",
            "Too many signups from your network in the last hour; please try again later.",
            status=429,
        )
    fields = fields_class(request.POST)
    if request.POST.get(HONEYPOT):
        # A bot: answer as if it worked, do nothing.
        return _message(request, "Check your inbox", "We sent you an email to confirm.")
    token = request.POST.get("token", "")
    if not token:
        fields = fields_class(
            initial={k: v for k, v in request.POST.items() if k in fields_class.base_fields}
        )
        return _page(
            request,
            form,
            fields,
            note="Almost done: check your details and press Subscribe to send your request.",
        )
    try:
        nonce = signup_form_token_check(form=form, token=token)
    except SignupRefused as exc:
        return _page(request, form, fields, status=400, error=str(exc))
    if not fields.is_valid():
        return _page(request, form, fields, token=token, status=400)
    data = fields.cleaned_data
    try:
        signup_form_token_use(nonce=nonce)
        signup_request(
            request=SignupRequest(
                email=data["email"],
                name=data.get("name", ""),
                attributes={
                    name: data[f"attr_{name}"]
                    for name in form.attribute_names
                    if data.get(f"attr_{name}")
                },
                ip_address=ip,
            ),
            lists=list(form.lists.all()),
            consent_text=form.consent_text,
            form=form,
        )
    except SignupRefused as exc:
        return _page(request, form, fields, status=400, error=str(exc))
    return _message(
        request,
        "Check your inbox",
        f"We sent an email to {data['email']}. Follow the link in it to confirm your "
        "subscription; until then you are not subscribed.",
    )


def signup_confirm_view(request, token: str):
    try:
        consent = confirm_token_read(token)
    except SignupRefused as exc:
        status = 410 if exc.kind == "link_expired" else 400
        text = str(exc) + " Sign up again to get a new link."
        return _message(request, "Link not valid", text, status=status)
    if request.method != "POST":
        # A GET changes nothing: mail scanners open links too.
        return render(request, "campaigns/public/confirm.html", {"consent": consent})
    try:
        signup_confirm(consent=consent, ip_address=client_ip(request))
    except SignupRefused as exc:
        return _message(request, "Cannot subscribe", str(exc), status=400)
    return _message(request, "You are subscribed", "Thank you: your subscription is confirmed.")
