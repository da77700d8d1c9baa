"""The A/B test in the marketing admin: the variants inline, the test in
words on the campaign page, its results on a run's results page, and the
"choose the winner now" page (a confirmation before anything is sent)."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.forms.models import BaseInlineFormSet
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from campaigns.errors import CampaignError
from campaigns.models import (
    AB_LABELS,
    AB_VARIANTS_MAX,
    AB_VARIANTS_MIN,
    Campaign,
    CampaignRun,
    CampaignVariant,
    RunABTest,
    WinnerMetric,
)
from campaigns.selectors import ABReport, run_ab_report
from campaigns.services.abtests import run_ab_choose_winner, staff_name
from notifier import templating

CHANGE_CAMPAIGN = "campaigns.change_campaign"


# --- The variants -------------------------------------------------------------------------


class VariantForm(forms.ModelForm):
    class Meta:
        model = CampaignVariant
        fields = ["subject", "sender", "template"]
        widgets = {"subject": forms.TextInput(attrs={"size": 50})}

    def clean_subject(self):
        subject = self.cleaned_data.get("subject", "").strip()
        if subject:
            try:
                templating.check_syntax(subject)
            except Exception as exc:
                raise ValidationError(f"This subject does not work as a template: {exc}") from exc
        return subject


class VariantFormSet(BaseInlineFormSet):
    """2-4 variants, no two alike, when the campaign has a test share.

    A post without the variants' fields at all (a script, or a page from
    before variants existed) leaves the saved variants as they are."""

    def __init__(self, data=None, *args, **kwargs):
        prefix = kwargs.get("prefix") or self.get_default_prefix()
        self.variants_posted = data is None or f"{prefix}-TOTAL_FORMS" in data
        if not self.variants_posted:
            data = data.copy()
            data.update({f"{prefix}-TOTAL_FORMS": "0", f"{prefix}-INITIAL_FORMS": "0"})
        super().__init__(data, *args, **kwargs)

    def clean(self):
        super().clean()
        if any(self.errors):
            return
        kept = [
            form.cleaned_data
            for form in self.forms
            if form.cleaned_data and not form.cleaned_data.get("DELETE")
        ]
        if getattr(self.instance, "ab_test_share", None) is None:
            return  # kept for later; a campaign without a test share sends as it is
        if not self.variants_posted:
            count = self.instance.variants.count() if self.instance.pk else 0
            kept = [{"subject": str(n)} for n in range(count)]  # saved ones: checked on save
        if not AB_VARIANTS_MIN <= len(kept) <= AB_VARIANTS_MAX:
            raise ValidationError(
                f"An A/B test needs {AB_VARIANTS_MIN} to {AB_VARIANTS_MAX} variants; "
                f"you entered {len(kept)}. Add variants, or clear the test share above."
            )
        seen: dict[tuple, str] = {}
        for label, data in zip(AB_LABELS, kept, strict=False):
            key = (data.get("subject") or "", data.get("sender"), data.get("template"))
            if key in seen:
                raise ValidationError(
                    f"Variants {seen[key]} and {label} are the same: change the subject, "
                    "sender or template of one of them."
                )
            seen[key] = label


class CampaignVariantInline(admin.TabularInline):
    model = CampaignVariant
    form = VariantForm
    formset = VariantFormSet
    extra = 0
    max_num = AB_VARIANTS_MAX
    verbose_name = "A/B variant"
    verbose_name_plural = (
        "A/B variants: A, B, C, D in this order; an empty field keeps the campaign's own"
    )


# --- The test in words ----------------------------------------------------------------------


def _wait_in_words(minutes: int) -> str:
    hours, rest = divmod(minutes, 60)
    if not hours:
        return f"{minutes} minutes"
    text = f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{text} {rest} minutes" if rest else text


def campaign_ab_summary(campaign: Campaign | None) -> str:
    """The campaign's A/B test as a marketer reads it, with its latest run's decision."""
    if campaign is None or campaign.pk is None or campaign.ab_test_share is None:
        return "No A/B test: every recipient gets the campaign as it is."
    count = campaign.variants.count()
    share = campaign.ab_test_share
    each = f"{share / count:.3g} % each" if count else ""
    if campaign.ab_winner_metric == WinnerMetric.MANUAL:
        then = "you choose the winner (on the run's results page), and it goes"
    else:
        rate = "open" if campaign.ab_winner_metric == WinnerMetric.OPENS else "click"
        wait = _wait_in_words(campaign.ab_wait_minutes)
        then = f"after {wait}, the variant with the highest {rate} rate goes"
    text = format_html(
        "<p>{} % of the audience get one of {} variants ({}); {} to the other {} %.</p>",
        share,
        count,
        each,
        then,
        100 - share,
    )
    test = (
        RunABTest.objects.filter(run__campaign=campaign)
        .select_related("run")
        .order_by("-pk")
        .first()
    )
    if test is None:
        return text
    return format_html('{}<p id="ab-decision">{}</p>', text, run_ab_decision_html(test))


def run_ab_decision_html(test: RunABTest, *, on_results_page: bool = False) -> str:
    """Where a run's test stands: decided (what, when, why) or waiting."""
    run = test.run
    results = format_html(
        '<a href="{}">Results</a>', reverse("admin:campaigns_campaignrun_results", args=[run.pk])
    )
    if on_results_page:
        results = ""
    if test.choice_pending:
        if run.status == CampaignRun.Status.RUNNING:
            state = "its messages for the rest of the audience are being written"
        elif run.status in CampaignRun.ACTIVE:
            state = "it goes to the rest of the audience once the run resumes"
        else:
            state = f"the run was {run.get_status_display().lower()} before it went to the rest"
        return format_html(
            "Run {}: variant <strong>{}</strong> was chosen by {}; {}. {}",
            run.pk,
            test.chosen,
            staff_name(test.decided_by),
            state,
            results,
        )
    if test.winner:
        return format_html(
            "Run {}: variant <strong>{}</strong> won on {} and went to {} more recipients. {} {}",
            run.pk,
            test.winner,
            timezone.localtime(test.decided_at).strftime("%Y-%m-%d %H:%M"),
            test.rest,
            test.decision,
            results,
        )
    if run.status not in CampaignRun.ACTIVE:
        return format_html(
            "Run {}: {} before a winner was chosen. {}",
            run.pk,
            run.get_status_display().lower(),
            results,
        )
    if test.metric == WinnerMetric.MANUAL:
        waiting = "waiting for you to choose the winner"
    else:
        waiting = "the winner is chosen on " + timezone.localtime(test.decide_at).strftime(
            "%Y-%m-%d %H:%M"
        )
    return format_html(
        'Run {}: testing; {}. {} <a href="{}">Choose the winner now…</a>',
        run.pk,
        waiting,
        results,
        reverse("admin:campaigns_campaignrun_winner", args=[run.pk]),
    )


def run_ab_context(run: CampaignRun) -> dict:
    """What the results page shows of the run's A/B test ({} without one)."""
    test = RunABTest.objects.filter(run=run).first()
    if test is None:
        return {}
    report: ABReport = run_ab_report(test=test)
    return {
        "ab": report,
        "ab_statements": [report.statement("opens"), report.statement("clicks")],
        "ab_decision": run_ab_decision_html(test, on_results_page=True),
        # The chosen winner's rows are being written: the page reloads itself.
        "ab_writing": test.choice_pending and run.status == CampaignRun.Status.RUNNING,
        "ab_metric": "staff's choice"
        if test.metric == WinnerMetric.MANUAL
        else test.get_metric_display().lower(),
    }


# --- Choose the winner now ----------------------------------------------------------------


def choose_winner_view(model_admin, request, pk):
    """GET: the variants with their figures and a choice; POST: send it."""
    run = get_object_or_404(CampaignRun.objects.select_related("campaign"), pk=pk)
    if not request.user.has_perm(CHANGE_CAMPAIGN):
        raise PermissionDenied
    test = RunABTest.objects.filter(run=run).first()
    results_url = reverse("admin:campaigns_campaignrun_results", args=[run.pk])
    if test is None:
        model_admin.message_user(request, "This run has no A/B test.", messages.ERROR)
        return HttpResponseRedirect(results_url)
    error = ""
    if request.method == "POST":
        winner = request.POST.get("winner", "")
        try:
            run_ab_choose_winner(run_id=run.pk, winner=winner, user=request.user)
        except CampaignError as exc:
            error = str(exc)
        else:
            model_admin.message_user(
                request,
                f"Variant {winner} goes to the rest of the audience: its messages are being "
                "written now, and this page shows how many once they are.",
                messages.SUCCESS,
            )
            return HttpResponseRedirect(results_url)
    test.refresh_from_db()
    report = run_ab_report(test=test)
    return TemplateResponse(
        request,
        "admin/campaigns/campaignrun/choose_winner.html",
        {
            **model_admin.admin_site.each_context(request),
            "opts": model_admin.model._meta,
            "run": run,
            "title": f"Choose the winner: {run.campaign.name}, run {run.pk}",
            "ab": report,
            "statements": [report.statement("opens"), report.statement("clicks")],
            "error": error,
        },
        status=400 if error else 200,
    )
