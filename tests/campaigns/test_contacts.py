"""CSV import and export (acceptance 5)."""

import csv
import io

import pytest

from campaigns.errors import ImportFileError
from campaigns.models import ListMembership
from campaigns.selectors import contact_list_export_rows
from campaigns.services.contacts import contacts_import_csv
from notifier.models import Recipient
from tests.campaigns.factories import ContactListFactory, RecipientFactory

pytestmark = pytest.mark.django_db

MESSY = (
    "Email,Name,Plan,City\n"  # row 1
    "ann@example.com,Ann Archer,pro,Paris\n"  # 2 good
    "not-an-address,Bob,free,Rome\n"  # 3 invalid address
    "carl@example.com,Carl\n"  # 4 missing columns
    "ANN@Example.com,Ann again,free,Oslo\n"  # 5 duplicate of 2
    "\n"  # blank line: skipped, not an error
    "dora@example.com,Dora,,Lima,extra\n"  # 7 too many fields
    ",Nobody,free,Kyiv\n"  # 8 no address
    '"eve@example.com","Eve, the second",free,"New\nYork"\n'  # 9 good (quoted newline)
    "fay@example.com,Fay,pro,\n"  # 10/11 good
)


def _import(text: str | bytes, **kwargs):
    data = text.encode() if isinstance(text, str) else text
    return contacts_import_csv(stream=io.BytesIO(data), **kwargs)


def test_good_rows_are_imported_and_bad_rows_reported():
    contact_list = ContactListFactory()
    report = _import(MESSY, contact_list=contact_list)

    assert report.imported == 3 and report.created == 3
    assert report.rows == 8 and report.error_count == 5
    reasons = dict(report.errors)
    assert sorted(reasons) == [3, 4, 5, 7, 8]
    assert "Invalid email address 'not-an-address'" in reasons[3]
    assert reasons[4] == "Missing columns: 2 fields where the header has 4."
    assert reasons[5] == "Duplicate of row 2 (ann@example.com)."
    assert reasons[7].startswith("Too many fields")
    assert "required" in reasons[8]
    ann = Recipient.objects.get(email="ann@example.com")
    assert ann.name == "Ann Archer" and ann.attributes == {"Plan": "pro", "City": "Paris"}
    eve = Recipient.objects.get(email="eve@example.com")
    assert eve.name == "Eve, the second" and eve.attributes["City"] == "New\nYork"
    assert Recipient.objects.get(email="fay@example.com").attributes == {"Plan": "pro"}
    assert report.list_size == 3 == ListMembership.objects.filter(contact_list=contact_list).count()


def test_existing_contacts_keep_their_status_and_data_unless_asked():
    RecipientFactory(email="ann@example.com", name="Old", status="unsubscribed")
    contact_list = ContactListFactory()
    report = _import("email,name\nann@example.com,New\n", contact_list=contact_list)
    assert report.imported == 1 and report.created == 0
    ann = Recipient.objects.get(email="ann@example.com")
    assert (ann.name, ann.status) == ("Old", "unsubscribed")
    _import("email,name\nann@example.com,New\n", update_existing=True)
    ann.refresh_from_db()
    assert (ann.name, ann.status) == ("New", "unsubscribed")


def test_header_mapping_and_chosen_attributes():
    report = _import(
        "E-mail address;Full name;tier;secret\n".replace(";", ",")
        + "gus@example.com,Gus G,gold,x\n",
        email_column="e-mail address",
        name_column="Full name",
        attribute_columns=["tier"],
    )
    assert report.imported == 1
    gus = Recipient.objects.get(email="gus@example.com")
    assert gus.name == "Gus G" and gus.attributes == {"tier": "gold"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "The file is empty."),
        (b"name,city\nAnn,Paris\n", "No 'email' column in the header"),
        (b"email,name,Email\na@example.com,A,b\n", "repeats the column(s)"),
        # Good rows first, then Latin-1: nothing at all is imported.
        (
            b"email,name\nok1@example.com,Ok\nzoe@example.com,Zo\xeb\n",
            "Row 3 is not UTF-8 text",
        ),
        # UTF-16, as some spreadsheets save "Unicode text".
        ("email,name\nann@example.com,Ann\n".encode("utf-16"), "Row 1 is not UTF-8"),
    ],
)
def test_whole_file_problems_import_nothing(content, message):
    contact_list = ContactListFactory()
    with pytest.raises(ImportFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _import(content, contact_list=contact_list)
    assert not Recipient.objects.exists()
    assert not contact_list.memberships.exists()


def test_export_round_trips_and_defuses_formulas():
    contact_list = ContactListFactory()
    _import(
        "email,name,plan\nann@example.com,=HYPERLINK(1),pro\nbob@example.com,Bob,\n",
        contact_list=contact_list,
    )
    rows = list(contact_list_export_rows(contact_list=contact_list))
    assert rows == [
        ["email", "name", "status", "plan"],
        ["ann@example.com", "'=HYPERLINK(1)", "active", "pro"],
        ["bob@example.com", "Bob", "active", ""],
    ]


# --- Through the admin: never a server error --------------------------------------------


@pytest.mark.parametrize(
    ("content", "shown"),
    [
        (MESSY.encode(), "5 with errors"),
        (b"email,name\nzoe@example.com,Zo\xeb\n", "is not UTF-8 text"),
        (b"\x89PNG\r\n\x1a\n\x00\x00binary", "not UTF-8"),
        (b"name\nAnn\n", "No &#x27;email&#x27; column"),
        (b"email\n" + b'"unterminated\n', "Invalid email address"),
    ],
)
def test_admin_import_reports_and_never_errors(marketer, content, shown):
    contact_list = ContactListFactory()
    upload = io.BytesIO(content)
    upload.name = "contacts.csv"
    response = marketer.post(
        f"/admin/campaigns/contactlist/{contact_list.pk}/import/",
        {"file": upload, "email_column": "email", "name_column": "name"},
    )
    assert response.status_code == 200
    assert shown in response.content.decode()


def test_admin_import_without_a_file_asks_for_one(marketer):
    contact_list = ContactListFactory()
    response = marketer.post(f"/admin/campaigns/contactlist/{contact_list.pk}/import/", {})
    assert response.status_code == 200
    assert "This field is required" in response.content.decode()


def test_admin_export_streams_csv(marketer):
    contact_list = ContactListFactory()
    _import("email,name\nann@example.com,Ann\n", contact_list=contact_list)
    response = marketer.get(f"/admin/campaigns/contactlist/{contact_list.pk}/export/")
    assert response.status_code == 200
    body = b"".join(response.streaming_content).decode()
    assert list(csv.reader(io.StringIO(body))) == [
        ["email", "name", "status"],
        ["ann@example.com", "Ann", "active"],
    ]


# --- Hostile files: refused quickly with a clear message, never a server error ----------


def test_export_defuses_formulas_in_header_cells():
    contact_list = ContactListFactory()
    _import(
        'email,"=HYPERLINK(""http://evil.example"")"\nann@example.com,x\n',
        contact_list=contact_list,
    )
    header = next(contact_list_export_rows(contact_list=contact_list))
    assert header == ["email", "name", "status", '\'=HYPERLINK("http://evil.example")']


def test_a_header_with_too_many_columns_is_refused(settings):
    header = "email," + ",".join(f"c{i}" for i in range(settings.CAMPAIGNS_IMPORT_MAX_COLUMNS))
    with pytest.raises(ImportFileError, match="columns; at most 200"):
        _import(header + "\nann@example.com\n")
    assert not Recipient.objects.exists()


def test_a_line_over_the_cap_is_refused_without_reading_the_rest(settings):
    settings.CAMPAIGNS_IMPORT_MAX_LINE_BYTES = 1000

    class Endless:
        """A 13 MB line: the import must stop at its first chunk."""

        read_calls = 0

        def read(self, size):
            self.read_calls += 1
            return b"x" * size if self.read_calls <= 200 else b""

    stream = Endless()
    with pytest.raises(ImportFileError, match="Line 2 is longer than 1,000 bytes"):
        contacts_import_csv(stream=_prefixed(b"email\n", stream))
    assert stream.read_calls == 1


def _prefixed(first: bytes, stream):
    yield first
    yield from iter(lambda: stream.read(64 * 1024), b"")


def test_a_header_field_over_the_csv_field_limit_is_a_clear_error(settings):
    settings.CAMPAIGNS_IMPORT_MAX_LINE_BYTES = 10_000_000
    with pytest.raises(ImportFileError, match="header row cannot be read"):
        _import('"' + "x" * 140_000 + "\n" + "y" * 10 + '",email\nann@example.com\n')


def test_a_file_over_the_size_cap_is_refused(settings):
    settings.CAMPAIGNS_IMPORT_MAX_BYTES = 100_000
    content = "email\n" + "".join(f"p{i}@example.com\n" for i in range(10_000))
    with pytest.raises(ImportFileError, match=r"over 0\.1 MB"):
        _import(content)
    assert not Recipient.objects.exists()


def test_nul_bytes_and_overlong_fields_are_row_errors(settings):
    settings.CAMPAIGNS_IMPORT_MAX_FIELD_CHARS = 50
    report = _import(
        "email,name,plan\n"
        "ann@example.com,Ann\x00,pro\n"
        "bob@example.com,Bob," + "p" * 51 + "\n"
        "cat@example.com,Cat,pro\n"
    )
    assert report.imported == 1
    assert report.errors == [
        (2, "The row contains a NUL character."),
        (3, "A field is longer than 50 characters."),
    ]
    assert list(Recipient.objects.values_list("email", flat=True)) == ["cat@example.com"]


def test_a_nul_byte_in_the_header_imports_nothing():
    with pytest.raises(ImportFileError, match="NUL"):
        _import("email,pl\x00an\nann@example.com,x\n")


def test_admin_refuses_an_upload_over_the_size_cap(marketer, settings):
    settings.CAMPAIGNS_IMPORT_MAX_BYTES = 10
    contact_list = ContactListFactory()
    upload = io.BytesIO(b"email\nann@example.com\n")
    upload.name = "contacts.csv"
    response = marketer.post(
        f"/admin/campaigns/contactlist/{contact_list.pk}/import/",
        {"file": upload, "email_column": "email", "name_column": "name"},
    )
    assert response.status_code == 200
    assert "split it and import the parts" in response.content.decode()
    assert not Recipient.objects.exists()


@pytest.mark.parametrize(
    "content",
    [
        b"email,name\nann@example.com,A\x00nn\n",
        b'"' + b"x" * 140_000 + b'",email\n',
        b"email," + b",".join(b"c%d" % i for i in range(5000)) + b"\n",
        b"email\n" + b"x" * 200_000 + b"\n",
    ],
)
def test_admin_import_of_hostile_files_never_errors(marketer, content):
    contact_list = ContactListFactory()
    upload = io.BytesIO(content)
    upload.name = "contacts.csv"
    response = marketer.post(
        f"/admin/campaigns/contactlist/{contact_list.pk}/import/",
        {"file": upload, "email_column": "email", "name_column": "name"},
    )
    assert response.status_code == 200


# --- Time zone and locale columns -------------------------------------------------------

LOCAL = (
    "email,name,time_zone,locale,city\n"  # row 1
    "ann@example.com,Ann,Europe/Paris,fr,Paris\n"  # 2 good
    "bob@example.com,Bob,america/new_york,en_us,New York\n"  # 3 good, normalised
    "carl@example.com,Carl,Mars/Olympus,en,Nowhere\n"  # 4 unknown time zone
    "dora@example.com,Dora,UTC,not a locale,Lima\n"  # 5 bad locale
    "eve@example.com,Eve,,,Kyiv\n"  # 6 good, defaults
)


def test_time_zone_and_locale_columns_are_validated_per_row():
    contact_list = ContactListFactory()
    report = _import(LOCAL, contact_list=contact_list)
    assert report.imported == 3 and report.error_count == 2
    assert report.errors == [
        (4, "Unknown time zone 'Mars/Olympus'; use an IANA name such as Europe/Paris."),
        (5, "Unknown locale 'not a locale'; use a language tag such as en, fr or pt-BR."),
    ]
    people = {r.email: r for r in Recipient.objects.all()}
    assert set(people) == {"ann@example.com", "bob@example.com", "eve@example.com"}
    assert (people["ann@example.com"].time_zone, people["ann@example.com"].locale) == (
        "Europe/Paris",
        "fr",
    )
    assert (people["bob@example.com"].time_zone, people["bob@example.com"].locale) == (
        "America/New_York",
        "en-US",
    )
    assert (people["eve@example.com"].time_zone, people["eve@example.com"].locale) == ("UTC", "en")
    # The columns are settings, not attributes.
    assert people["ann@example.com"].attributes == {"city": "Paris"}


def test_existing_contacts_get_a_new_time_zone_only_when_asked_and_given():
    RecipientFactory(email="ann@example.com", time_zone="Asia/Tokyo", locale="ja")
    RecipientFactory(email="eve@example.com", time_zone="Asia/Tokyo", locale="ja")
    _import(LOCAL)
    assert Recipient.objects.get(email="ann@example.com").time_zone == "Asia/Tokyo"
    _import(LOCAL, update_existing=True)
    ann = Recipient.objects.get(email="ann@example.com")
    assert (ann.time_zone, ann.locale) == ("Europe/Paris", "fr")
    eve = Recipient.objects.get(email="eve@example.com")  # empty cells keep what she had
    assert (eve.time_zone, eve.locale) == ("Asia/Tokyo", "ja")


def test_time_zone_columns_by_other_names_and_a_missing_named_one():
    _import("email,Timezone,Language\nann@example.com,Europe/Rome,it\n")
    ann = Recipient.objects.get(email="ann@example.com")
    assert (ann.time_zone, ann.locale, ann.attributes) == ("Europe/Rome", "it", {})
    with pytest.raises(ImportFileError, match="No 'zone' column in the header"):
        _import("email,tz\nbob@example.com,UTC\n", time_zone_column="zone")


def test_admin_import_with_time_zones_reports_row_errors(marketer):
    contact_list = ContactListFactory()
    upload = io.BytesIO(LOCAL.encode())
    upload.name = "people.csv"
    page = marketer.post(
        f"/admin/campaigns/contactlist/{contact_list.pk}/import/",
        {
            "file": upload,
            "email_column": "email",
            "name_column": "name",
            "time_zone_column": "time_zone",
            "locale_column": "locale",
        },
    )
    content = page.content.decode()
    assert page.status_code == 200
    assert "3 imported" in content and "2 with errors" in content
    assert "Unknown time zone &#x27;Mars/Olympus&#x27;" in content
    assert Recipient.objects.get(email="ann@example.com").time_zone == "Europe/Paris"
