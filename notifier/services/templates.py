"""Every template write, each recorded as a ``TemplateRevision``.

A revision holds the whole content as saved (not a patch), so any one can be
restored on its own and the diff between two is computed when it is shown.
The revision is written in the same transaction as the template: a change
that is not recorded is not saved either. Every write also compiles the
HTML that is sent (``Template.compiled_html``: layout, MJML, inlined CSS),
so the sender never inlines per message.
"""

import difflib

from django.db import transaction

from notifier.email_html import email_html_compile
from notifier.models import Template, TemplateRevision

CONTENT_FIELDS = ("name", "kind", "subject", "source_format", "layout", "html_body", "text_body")


def template_compile(*, template: Template) -> None:
    """Set ``template.compiled_html`` from its source (in memory). Raises
    ``EmailHtmlProblem`` for a source that cannot be compiled (``clean()``
    reports the same as a form error)."""
    template.compiled_html = email_html_compile(
        source=template.html_body,
        source_format=template.source_format,
        layout=template.layout,
        title=template.subject,
    )


def template_sent_html(template: Template) -> str:
    """The HTML source the sender renders: the compiled document (compiled now,
    once per process, for a row saved before it was stored)."""
    if template.compiled_html:
        return template.compiled_html
    try:
        template_compile(template=template)
    except ValueError:  # saved before the check existed: send what was written
        return template.html_body
    return template.compiled_html


def template_can_manage(*, user, template: Template | None = None, kind: str | None = None) -> bool:
    """Whether ``user`` may see and write ``template`` (or templates of ``kind``).

    Campaign templates need only the model permissions; transactional ones
    (used by send(), the API and topics) also need
    ``notifier.manage_transactional_template``.
    """
    kind = template.kind if template is not None else kind
    if kind == Template.Kind.CAMPAIGN:
        return True
    return user.has_perm("notifier.manage_transactional_template")


def _record(
    *, template: Template, action: str, user=None, restored_from: TemplateRevision | None = None
) -> TemplateRevision:
    authenticated = user is not None and user.is_authenticated
    return TemplateRevision.objects.create(
        template=template if action != TemplateRevision.Action.DELETED else None,
        action=action,
        changed_by=user if authenticated else None,
        changed_by_name=user.get_username() if authenticated else "",
        restored_from=restored_from,
        **{field: getattr(template, field) for field in CONTENT_FIELDS},
    )


def template_save(*, template: Template, user=None) -> TemplateRevision | None:
    """Save ``template`` and record a revision (none when nothing changed)."""
    with transaction.atomic():
        created = template.pk is None
        template_compile(template=template)
        template.save()
        if not created:
            last = template.revisions.order_by("-id").first()
            if last is not None and all(
                getattr(last, f) == getattr(template, f) for f in CONTENT_FIELDS
            ):
                return None
        action = TemplateRevision.Action.CREATED if created else TemplateRevision.Action.CHANGED
        return _record(template=template, action=action, user=user)


def template_restore(*, revision: TemplateRevision, user=None) -> Template:
    """Put a revision's subject and bodies back on its template, as a new revision.

    The name and kind stay as they are now: restoring content never moves a
    template between the campaign and transactional sides.
    """
    with transaction.atomic():
        template = Template.objects.select_for_update().get(pk=revision.template_id)
        template.subject = revision.subject
        template.source_format = revision.source_format
        template.layout = revision.layout
        template.html_body = revision.html_body
        template.text_body = revision.text_body
        template.full_clean()
        template_compile(template=template)
        template.save()
        _record(
            template=template,
            action=TemplateRevision.Action.RESTORED,
            user=user,
            restored_from=revision,
        )
    return template


def template_delete(*, template: Template, user=None) -> None:
    """Delete ``template``, keeping its history and a last revision of what it held."""
    with transaction.atomic():
        _record(template=template, action=TemplateRevision.Action.DELETED, user=user)
        template.delete()


def template_history(*, template: Template) -> list[TemplateRevision]:
    """The template's revisions, newest first, each with ``changes``: per changed
    field, the unified diff from the revision before it (the first one is
    diffed against nothing). One query, however long the history.
    """
    revisions = list(template.revisions.select_related("restored_from").order_by("-id"))
    for revision, previous in zip(revisions, [*revisions[1:], None], strict=True):
        revision.changes = _changes(previous, revision)
    return revisions


def _changes(previous: TemplateRevision | None, revision: TemplateRevision) -> list[dict]:
    changes = []
    for field in CONTENT_FIELDS:
        old = getattr(previous, field) if previous is not None else ""
        new = getattr(revision, field)
        if old == new:
            continue
        lines = difflib.unified_diff(
            old.splitlines(), new.splitlines(), fromfile="before", tofile="after", lineterm=""
        )
        label = TemplateRevision._meta.get_field(field).verbose_name
        changes.append({"field": field, "label": label, "diff": list(lines)})
    return changes
