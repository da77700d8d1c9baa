"""CSV import of contacts into a list.

The file is streamed (decoded line by line, parsed by the ``csv`` module) and
written in chunks of bulk inserts, so its size does not matter. Bad rows are
reported (row number and reason) and skipped; good rows are imported. A file
that cannot be read as a whole (not UTF-8, no email column) imports nothing:
it runs in one transaction that a whole-file error rolls back.

Existing contacts keep their status (an unsubscribed contact stays
unsubscribed); their name, attributes, time zone and locale are replaced only
when asked (an empty time zone or locale cell keeps what they have). A time
zone column (IANA names) lets daily digests and schedules use the contact's
local time; a locale column sets their language; a bad value is a row error.

A hostile file is refused early and cheaply: the file size, the length of a
line (checked as bytes arrive, so a huge line is never held whole), the
number of columns and the length of a field are capped (CAMPAIGNS_IMPORT_*
settings); a NUL character (PostgreSQL cannot store it) is a row error.
"""

import codecs
import csv
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from campaigns.errors import ImportFileError
from campaigns.models import ContactList, ListMembership
from notifier.errors import InvalidAddress, InvalidName
from notifier.models import Recipient
from notifier.services.privacy import erased_addresses
from notifier.services.recipients import (
    check_name,
    normalize_email,
    normalize_locale,
    normalize_time_zone,
)

MAX_REPORTED_ERRORS = 1000


@dataclass
class ImportReport:
    rows: int = 0  # data rows read (blank lines not counted)
    imported: int = 0  # good rows
    created: int = 0  # of which new contacts
    list_size: int | None = None  # members of the list after the import
    error_count: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # the first MAX_REPORTED_ERRORS

    def add_error(self, row: int, reason: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append((row, reason))


@dataclass
class _Columns:
    email: int
    name: int | None
    attributes: list[tuple[str, int]]
    width: int
    time_zone: int | None = None
    locale: int | None = None


# Other names the time zone and locale columns are known by.
_ALIASES = {"time_zone": ("timezone", "tz"), "locale": ("language", "lang")}


def _columns(
    header: list[str],
    email_column: str,
    name_column: str,
    attribute_columns: list[str] | None,
    time_zone_column: str = "time_zone",
    locale_column: str = "locale",
) -> _Columns:
    max_columns = settings.CAMPAIGNS_IMPORT_MAX_COLUMNS
    if len(header) > max_columns:
        raise ImportFileError(
            f"The header has {len(header):,} columns; at most {max_columns:,} can be imported."
        )
    names = [h.strip() for h in header]
    if any("\x00" in n for n in names):
        raise ImportFileError("The header contains a NUL character; nothing was imported.")
    folded = [n.casefold() for n in names]
    counts = Counter(folded)
    duplicates = sorted({n for n in names if n and counts[n.casefold()] > 1})
    if duplicates:
        raise ImportFileError(f"The header repeats the column(s) {', '.join(duplicates)}.")
    positions = {name: i for i, name in enumerate(folded)}  # unique, checked above

    def find(column: str) -> int | None:
        return positions.get(column.strip().casefold())

    email = find(email_column)
    if email is None:
        raise ImportFileError(
            f"No {email_column!r} column in the header; the columns are: "
            f"{', '.join(repr(n) for n in names)}."
        )
    name = find(name_column) if name_column.strip() else None
    found = {}
    for key, column in (("time_zone", time_zone_column), ("locale", locale_column)):
        if not column.strip():
            found[key] = None
            continue
        position = find(column)
        if position is None and column.strip().casefold() == key:  # the default: optional
            aliases = [find(alias) for alias in _ALIASES[key]]
            position = next((p for p in aliases if p is not None), None)
        elif position is None:
            raise ImportFileError(f"No {column!r} column in the header.")
        found[key] = position
    special = {email, name, found["time_zone"], found["locale"]}
    if attribute_columns is None:
        attributes = [(n, i) for i, n in enumerate(names) if n and i not in special]
    else:
        missing = [c for c in attribute_columns if find(c) is None]
        if missing:
            raise ImportFileError(f"No column(s) {', '.join(map(repr, missing))} in the header.")
        attributes = [(names[find(c)], find(c)) for c in attribute_columns]
    return _Columns(
        email=email,
        name=name,
        attributes=attributes,
        width=len(names),
        time_zone=found["time_zone"],
        locale=found["locale"],
    )


def _json_rows(vendor: str) -> str:
    """A FROM clause reading (email, name, attributes, time_zone, locale) rows
    out of one JSON parameter (time_zone and locale null when not given)."""
    if vendor == "postgresql":
        return (
            "jsonb_to_recordset(%s::jsonb) AS x(email text, name text, attributes jsonb, "
            "time_zone text, locale text)"
        )
    return (
        "(SELECT json_extract(value, '$.email') AS email, json_extract(value, '$.name') AS name,"
        " json_extract(value, '$.attributes') AS attributes,"
        " json_extract(value, '$.time_zone') AS time_zone,"
        " json_extract(value, '$.locale') AS locale FROM json_each(%s)) AS x"
    )


# --- Erased addresses (GDPR): refused, one query per chunk --------------------------


def _without_erased(chunk: list[dict], rows_by_email: dict[str, int], report) -> list[dict]:
    """The chunk without addresses of erased recipients (notifier.services.privacy),
    each reported as a row error: importing one would store it again."""
    erased = erased_addresses(c["email"] for c in chunk)
    for email in erased:
        report.add_error(rows_by_email.get(email, 0), ERASED_ROW_ERROR)
    return [c for c in chunk if c["email"] not in erased] if erased else chunk


ERASED_ROW_ERROR = "Suppressed: this address was erased at its owner's request (staff can lift it)."


def _flush(
    chunk: list[dict],
    *,
    contact_list: ContactList | None,
    update_existing: bool,
    report: ImportReport,
    rows_by_email: dict[str, int],
) -> None:
    """Upsert a chunk of contacts and add them to the list: three statements,
    each with the whole chunk as one JSON parameter (fast to send and parse)."""
    chunk = _without_erased(chunk, rows_by_email, report)
    if not chunk:
        return
    q = connection.ops.quote_name
    recipients = q(Recipient._meta.db_table)
    rows = _json_rows(connection.vendor)
    payload = json.dumps(chunk)
    now = Recipient._meta.get_field("created_at").get_db_prep_save(timezone.now(), connection)
    defaults = {f: Recipient._meta.get_field(f).get_default() for f in ("time_zone", "locale")}
    if update_existing:
        conflict = (
            "ON CONFLICT (email) DO UPDATE SET name = excluded.name, "
            "attributes = excluded.attributes, updated_at = excluded.updated_at"
        )
    else:
        conflict = "ON CONFLICT (email) DO NOTHING"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT COUNT(*) FROM {recipients} WHERE email IN (SELECT x.email FROM {rows})",
            [payload],
        )
        existing = cursor.fetchone()[0]
        cursor.execute(
            f"""INSERT INTO {recipients}
                    (email, name, attributes, time_zone, locale, status, created_at, updated_at)
                SELECT x.email, x.name, x.attributes, COALESCE(x.time_zone, %s),
                       COALESCE(x.locale, %s), %s, %s, %s FROM {rows}
                WHERE true {conflict}""",
            [
                defaults["time_zone"],
                defaults["locale"],
                Recipient.Status.ACTIVE,
                now,
                now,
                payload,
            ],
        )
        if update_existing:
            # Only the cells that were filled in: an empty one keeps what the
            # contact has (the upsert above cannot tell an empty cell apart).
            for column in ("time_zone", "locale"):
                cursor.execute(
                    f"""UPDATE {recipients} SET {q(column)} = (
                            SELECT x.{column} FROM {rows} WHERE x.email = {recipients}.email)
                        WHERE email IN (
                            SELECT x.email FROM {rows} WHERE x.{column} IS NOT NULL)""",
                    [payload, payload],
                )
        if contact_list is not None:
            cursor.execute(
                f"""INSERT INTO {q(ListMembership._meta.db_table)}
                        (contact_list_id, recipient_id, added_at)
                    SELECT %s, r.id, %s FROM {recipients} r
                    WHERE r.email IN (SELECT x.email FROM {rows})
                    ON CONFLICT DO NOTHING""",
                [contact_list.pk, now, payload],
            )
    report.created += len(chunk) - existing
    report.imported += len(chunk)


def contacts_import_csv(
    *,
    stream: Iterable[bytes],
    contact_list: ContactList | None = None,
    email_column: str = "email",
    name_column: str = "name",
    attribute_columns: list[str] | None = None,
    time_zone_column: str = "time_zone",
    locale_column: str = "locale",
    update_existing: bool = False,
) -> ImportReport:
    """Import contacts from a UTF-8 CSV with a header row; add them to the list.

    ``stream`` yields the file's bytes line by line (an open binary file or a
    Django upload). ``attribute_columns=None`` stores every column other than
    email, name, time zone and locale as an attribute. The time zone and
    locale columns are used when the header has them (``timezone`` and
    ``language`` are read too); empty names leave them out. Row numbers count
    the header as row 1.
    Raises ImportFileError (and imports nothing) for a file that cannot be
    read as a whole.
    """
    report = ImportReport()
    chunk_size = settings.CAMPAIGNS_IMPORT_CHUNK
    reader = csv.reader(codecs.iterdecode(_bounded_lines(stream), "utf-8-sig"))
    seen: dict[str, int] = {}
    row_number = 1
    try:
        with transaction.atomic():
            try:
                header = next(reader)
            except StopIteration:
                raise ImportFileError("The file is empty.") from None
            except csv.Error as exc:
                raise ImportFileError(
                    f"The header row cannot be read ({exc}); nothing was imported."
                ) from None
            columns = _columns(
                header,
                email_column,
                name_column,
                attribute_columns,
                time_zone_column,
                locale_column,
            )
            chunk: list[dict] = []

            def flush(rows: list[dict]) -> None:
                _flush(
                    rows,
                    contact_list=contact_list,
                    update_existing=update_existing,
                    report=report,
                    rows_by_email=seen,
                )

            while True:
                row_number += 1
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    report.rows += 1
                    report.add_error(row_number, f"Unreadable CSV: {exc}.")
                    continue
                if not any(cell.strip() for cell in row):
                    continue
                report.rows += 1
                recipient = _row_recipient(row, columns, row_number, seen, report)
                if recipient is None:
                    continue
                chunk.append(recipient)
                if len(chunk) >= chunk_size:
                    flush(chunk)
                    chunk = []
            flush(chunk)
            if contact_list is not None:
                report.list_size = contact_list.memberships.count()
    except UnicodeDecodeError as exc:
        raise ImportFileError(
            f"Row {row_number} is not UTF-8 text ({exc.reason} at byte {exc.start} of a chunk). "
            "Save the file as 'CSV UTF-8' and import it again; nothing was imported."
        ) from None
    return report


# Bytes read from the stream at a time; a line is split out as soon as it ends.
_READ_SIZE = 64 * 1024


def _line_too_long(line: int, max_line: int) -> ImportFileError:
    return ImportFileError(
        f"Line {line:,} is longer than {max_line:,} bytes; nothing was imported."
    )


def _bounded_lines(stream) -> Iterator[bytes]:
    """The stream's lines (ends kept), refusing a file or a line over its cap
    as soon as the bytes read show it, without holding more than one line."""
    max_bytes = settings.CAMPAIGNS_IMPORT_MAX_BYTES
    max_line = settings.CAMPAIGNS_IMPORT_MAX_LINE_BYTES
    read = getattr(stream, "read", None)
    chunks = iter(lambda: read(_READ_SIZE), b"") if read else iter(stream)
    total = lines_seen = 0
    pending = b""
    for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise ImportFileError(
                f"The file is over {max_bytes / 1e6:g} MB; split it and import the parts."
            )
        lines = (pending + chunk).splitlines(keepends=True)
        # An unfinished last line (or one ending in a \r that a \n may follow)
        # waits for the next chunk.
        pending = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
        for offset, line in enumerate(lines):
            if len(line) > max_line:
                raise _line_too_long(lines_seen + offset + 1, max_line)
        lines_seen += len(lines)
        if len(pending) > max_line:
            raise _line_too_long(lines_seen + 1, max_line)
        yield from lines
    if pending:
        yield pending


def _row_recipient(
    row: list[str], columns: _Columns, row_number: int, seen: dict[str, int], report: ImportReport
) -> dict | None:
    if any("\x00" in cell for cell in row):
        report.add_error(row_number, "The row contains a NUL character.")
        return None
    max_field = settings.CAMPAIGNS_IMPORT_MAX_FIELD_CHARS
    if any(len(cell) > max_field for cell in row):
        report.add_error(row_number, f"A field is longer than {max_field:,} characters.")
        return None
    if len(row) < columns.width:
        report.add_error(
            row_number, f"Missing columns: {len(row)} fields where the header has {columns.width}."
        )
        return None
    if len(row) > columns.width and any(cell.strip() for cell in row[columns.width :]):
        report.add_error(
            row_number, f"Too many fields: {len(row)} where the header has {columns.width}."
        )
        return None
    try:
        email = normalize_email(row[columns.email])
    except InvalidAddress as exc:
        report.add_error(row_number, str(exc))
        return None
    if email in seen:
        report.add_error(row_number, f"Duplicate of row {seen[email]} ({email}).")
        return None
    name = row[columns.name].strip() if columns.name is not None else ""
    try:
        check_name(name)
    except InvalidName as exc:
        report.add_error(row_number, str(exc))
        return None
    settings_of_row = {}
    for key, position, normalize in (
        ("time_zone", columns.time_zone, normalize_time_zone),
        ("locale", columns.locale, normalize_locale),
    ):
        cell = row[position].strip() if position is not None else ""
        if not cell:
            continue
        try:
            settings_of_row[key] = normalize(cell)
        except ValueError as exc:
            report.add_error(row_number, str(exc))
            return None
    seen[email] = row_number
    attributes = {key: row[i].strip() for key, i in columns.attributes if row[i].strip()}
    return {"email": email, "name": name, "attributes": attributes, **settings_of_row}
