"""Compile the HTML that is sent for templates saved before it was stored.

A template that cannot be compiled keeps an empty ``compiled_html``; the
sender then sends its body as written, as before.
"""

from django.db import migrations


def compile_templates(apps, schema_editor):
    from notifier.email_html import email_html_compile

    Template = apps.get_model("notifier", "Template")
    for template in Template.objects.filter(compiled_html="").iterator():
        try:
            compiled = email_html_compile(
                source=template.html_body,
                source_format=template.source_format,
                layout=template.layout,
                title=template.subject,
            )
        except ValueError:
            continue
        Template.objects.filter(pk=template.pk).update(compiled_html=compiled)


class Migration(migrations.Migration):
    dependencies = [("notifier", "0009_template_layouts_compiled_html")]

    operations = [migrations.RunPython(compile_templates, migrations.RunPython.noop)]
