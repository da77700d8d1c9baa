"""TRUNCATE of a table a delivery names is refused while a delivery names it.

The foreign key constraints that 0020 replaced also refused a TRUNCATE of the
referenced table (or truncated ``notifier_delivery`` with it under CASCADE).
Here an ``AFTER TRUNCATE`` trigger on each of the three tables fails the
statement if a delivery still names one of its (now gone) rows. AFTER, not
BEFORE: PostgreSQL fires it once every table of the statement is truncated,
so ``TRUNCATE notifier_recipient, notifier_delivery, ...`` (Django's flush)
goes through. SQLite has no TRUNCATE.
"""

from django.db import migrations

REFERENCES = (
    ("recipient_id", "notifier_recipient"),
    ("run_id", "notifier_deliverygroup"),
    ("template_id", "notifier_template"),
)

FUNCTION = """
CREATE FUNCTION notifier_delivery_referenced_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    named boolean;
BEGIN
    EXECUTE format(
        'SELECT EXISTS (SELECT 1 FROM notifier_delivery WHERE %I IS NOT NULL)', TG_ARGV[0]
    ) INTO named;
    IF named THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('%s cannot be truncated: deliveries name its rows (notifier_delivery.%s)', TG_TABLE_NAME, TG_ARGV[0]),
            TABLE = TG_TABLE_NAME;
    END IF;
    RETURN NULL;
END
$$;
"""

TRIGGER = """
CREATE TRIGGER notifier_delivery_referenced_truncated
    AFTER TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION notifier_delivery_referenced_truncated('{column}');
"""


def refuse_truncate(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(FUNCTION)
        for column, table in REFERENCES:
            cursor.execute(TRIGGER.format(column=column, table=table))


def allow_truncate(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        for _column, table in REFERENCES:
            cursor.execute(f"DROP TRIGGER notifier_delivery_referenced_truncated ON {table}")
        cursor.execute("DROP FUNCTION notifier_delivery_referenced_truncated()")


class Migration(migrations.Migration):
    dependencies = [
        ("notifier", "0020_delivery_references_checked_per_statement"),
    ]

    operations = [migrations.RunPython(refuse_truncate, allow_truncate)]
