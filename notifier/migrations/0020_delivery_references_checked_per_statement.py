"""Delivery's three references checked once per statement on PostgreSQL.

A foreign key constraint checks each inserted row on its own: a million-row
launch queued three million checks, each a key look-up that also locks the
row it finds (``FOR KEY SHARE``, a tuple lock written to the heap and the
WAL), about 40 % of the launch's database time. Here the three constraints
give way to triggers that keep the same guarantee with one look-up per
statement and no row locks:

* after each INSERT statement into ``notifier_delivery``, one anti-join per
  reference finds a row naming a recipient, group or template that does not
  exist, and fails the statement with ``foreign_key_violation``;
* an UPDATE that changes a row's reference is checked the same way (no
  writer changes them; the check is there for whoever might);
* deleting a recipient, group or template that a delivery names fails with
  ``foreign_key_violation``, as the constraints' ``NO ACTION`` did, and so
  does changing such a row's id.

Concurrency, in place of the row locks: every transaction that writes
deliveries holds a shared advisory lock (``REFERENCES_LOCK``) from its check
to its end; a transaction deleting (or re-keying) a referenced row takes it
exclusively before its check. So a delete waits for the writers in flight
and then sees their rows, and a writer that comes after a delete waits for
it and then sees the row gone (READ COMMITTED: each check takes a fresh
snapshot). The deleter polls for the lock rather than queueing for it, so
writers arriving meanwhile are not held up behind it; after five seconds it
queues. In REPEATABLE READ or SERIALIZABLE (a snapshot older than the check:
Django never uses them here) a writer falls back to key-share locking the
rows it names, as a foreign key check does, and a deleter is refused.

Django keeps ``on_delete=PROTECT`` in the ORM (the fields say
``db_constraint=False``). SQLite keeps its constraints: this migration
changes nothing there (tests check both refuse the same writes).
"""

from django.db import migrations, models

# (column of notifier_delivery, the table it names)
REFERENCES = (
    ("recipient_id", "notifier_recipient"),
    ("run_id", "notifier_deliverygroup"),
    ("template_id", "notifier_template"),
)

# One advisory lock key for the protocol above.
REFERENCES_LOCK = "hashtextextended('notifier_delivery references', 0)"

# A writer's side: the lock, then one check per reference (``_writer_body``,
# with ``rows`` the rows written: the transition table, or NEW as a one-row
# relation; ``prefix`` what the message calls the write).
WRITER_LOCK = f"""
    IF current_setting('transaction_isolation') = 'read committed' THEN
        PERFORM pg_advisory_xact_lock_shared({REFERENCES_LOCK});
    ELSE
{{key_share_locks}}    END IF;
"""

# A snapshot older than the check: lock what the rows name, as a foreign key
# check does (PostgreSQL then refuses a row deleted since the snapshot).
WRITER_KEY_SHARE = """        PERFORM 1 FROM {table} t
            WHERE t.id IN (SELECT r.{column} FROM {rows} r) FOR KEY SHARE OF t;
"""

WRITER_CHECK = """
    SELECT r.{column} INTO missing FROM {rows} r
        WHERE r.{column} IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM {table} t WHERE t.id = r.{column}) LIMIT 1;
    IF FOUND THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('{prefix} names %s = %s, which {table} does not hold', '{column}', missing),
            TABLE = 'notifier_delivery', COLUMN = '{column}';
    END IF;
"""


def _writer_body(rows: str, prefix: str) -> str:
    locks = "".join(
        WRITER_KEY_SHARE.format(rows=rows, column=column, table=table)
        for column, table in REFERENCES
    )
    return WRITER_LOCK.format(key_share_locks=locks) + "".join(
        WRITER_CHECK.format(rows=rows, prefix=prefix, column=column, table=table)
        for column, table in REFERENCES
    )


WRITERS = f"""
CREATE FUNCTION notifier_delivery_references_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    missing bigint;
BEGIN
{_writer_body("inserted", "insert into notifier_delivery")}
    RETURN NULL;
END
$$;
CREATE TRIGGER notifier_delivery_references_inserted
    AFTER INSERT ON notifier_delivery
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION notifier_delivery_references_inserted();

CREATE FUNCTION notifier_delivery_references_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    missing bigint;
BEGIN
{_writer_body("(SELECT NEW.recipient_id AS recipient_id, NEW.run_id AS run_id, NEW.template_id AS template_id)", "update of notifier_delivery")}
    RETURN NULL;
END
$$;
CREATE TRIGGER notifier_delivery_references_updated
    AFTER UPDATE OF recipient_id, run_id, template_id ON notifier_delivery
    FOR EACH ROW
    WHEN (OLD.recipient_id IS DISTINCT FROM NEW.recipient_id
          OR OLD.run_id IS DISTINCT FROM NEW.run_id
          OR OLD.template_id IS DISTINCT FROM NEW.template_id)
    EXECUTE FUNCTION notifier_delivery_references_updated();
"""

# The referenced side. TG_ARGV[0]: the column of notifier_delivery that names
# this table's rows. ``{gone}``: the ids deleted or re-keyed.
DELETER_LOCK = f"""
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE serialization_failure USING
            MESSAGE = format('%s rows that deliveries may name are deleted or re-keyed in READ COMMITTED only', TG_TABLE_NAME);
    END IF;
    -- Wait for the transactions writing deliveries without holding up new
    -- ones behind this one; after five seconds, queue.
    deadline := clock_timestamp() + interval '5 seconds';
    WHILE NOT pg_try_advisory_xact_lock({REFERENCES_LOCK}) LOOP
        IF clock_timestamp() > deadline THEN
            PERFORM pg_advisory_xact_lock({REFERENCES_LOCK});
            EXIT;
        END IF;
        PERFORM pg_sleep(0.01);
    END LOOP;
    EXECUTE format(
        'SELECT d.%1$I FROM {{gone}} JOIN notifier_delivery d ON d.%1$I = g.id LIMIT 1', TG_ARGV[0]
    ) INTO named {{using}};
    IF named IS NOT NULL THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('%s %s is still named by a delivery (notifier_delivery.%s)', TG_TABLE_NAME, named, TG_ARGV[0]),
            TABLE = TG_TABLE_NAME;
    END IF;
"""

DELETERS = f"""
CREATE FUNCTION notifier_delivery_referenced_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    deadline timestamptz;
    named bigint;
BEGIN
{DELETER_LOCK.format(gone="gone g", using="")}
    RETURN NULL;
END
$$;
CREATE FUNCTION notifier_delivery_referenced_rekeyed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    deadline timestamptz;
    named bigint;
BEGIN
{DELETER_LOCK.format(gone="(SELECT $1 AS id) g", using="USING OLD.id")}
    RETURN NULL;
END
$$;
"""

DELETER_TRIGGERS = """
CREATE TRIGGER notifier_delivery_referenced_deleted
    AFTER DELETE ON {table}
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION notifier_delivery_referenced_deleted('{column}');
CREATE TRIGGER notifier_delivery_referenced_rekeyed
    AFTER UPDATE OF id ON {table}
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION notifier_delivery_referenced_rekeyed('{column}');
"""


def _foreign_keys(cursor, connection) -> list[str]:
    """The names of notifier_delivery's foreign key constraints on the three columns."""
    constraints = connection.introspection.get_constraints(cursor, "notifier_delivery")
    columns = {column for column, _table in REFERENCES}
    return [
        name
        for name, info in constraints.items()
        if info["foreign_key"] and info["columns"][0] in columns
    ]


def checks_per_statement(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        for name in _foreign_keys(cursor, connection):
            cursor.execute(f'ALTER TABLE notifier_delivery DROP CONSTRAINT "{name}"')
        cursor.execute(WRITERS)
        cursor.execute(DELETERS)
        for column, table in REFERENCES:
            cursor.execute(DELETER_TRIGGERS.format(column=column, table=table))


def checks_per_row(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        for _column, table in REFERENCES:
            cursor.execute(f"DROP TRIGGER notifier_delivery_referenced_deleted ON {table}")
            cursor.execute(f"DROP TRIGGER notifier_delivery_referenced_rekeyed ON {table}")
        cursor.execute(
            "DROP TRIGGER notifier_delivery_references_inserted ON notifier_delivery;"
            "DROP TRIGGER notifier_delivery_references_updated ON notifier_delivery;"
            "DROP FUNCTION notifier_delivery_references_inserted();"
            "DROP FUNCTION notifier_delivery_references_updated();"
            "DROP FUNCTION notifier_delivery_referenced_deleted();"
            "DROP FUNCTION notifier_delivery_referenced_rekeyed();"
        )
        for column, table in REFERENCES:
            cursor.execute(
                f"ALTER TABLE notifier_delivery ADD CONSTRAINT notifier_delivery_{column}_fk"
                f" FOREIGN KEY ({column}) REFERENCES {table} (id) DEFERRABLE INITIALLY DEFERRED"
            )


class Migration(migrations.Migration):
    dependencies = [
        ("notifier", "0019_notification_idempotency_key_partial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="delivery",
                    name="recipient",
                    field=models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=models.deletion.PROTECT,
                        related_name="deliveries",
                        to="notifier.recipient",
                    ),
                ),
                migrations.AlterField(
                    model_name="delivery",
                    name="run",
                    field=models.ForeignKey(
                        blank=True,
                        db_column="run_id",
                        db_constraint=False,
                        db_index=False,
                        null=True,
                        on_delete=models.deletion.PROTECT,
                        related_name="deliveries",
                        to="notifier.deliverygroup",
                    ),
                ),
                migrations.AlterField(
                    model_name="delivery",
                    name="template",
                    field=models.ForeignKey(
                        blank=True,
                        db_constraint=False,
                        null=True,
                        on_delete=models.deletion.PROTECT,
                        related_name="deliveries",
                        to="notifier.template",
                    ),
                ),
            ],
            database_operations=[migrations.RunPython(checks_per_statement, checks_per_row)],
        ),
    ]
