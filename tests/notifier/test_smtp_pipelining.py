"""The SMTP transport's backend (``notifier.sending.smtp``) against the SMTP
sink: commands pipelined where the server offers it, each answer meaning what
it means to ``smtplib`` (the outcome a row gets), and plain ``smtplib`` where
the server does not offer it."""

import smtplib
import socket
import threading

import pytest
from django.core.mail import EmailMessage

from notifier.models import Delivery
from notifier.sending import deliveries_send_batch
from notifier.sending.outcomes import FAILED, RETRY, SENT, UNKNOWN, classify_exception
from notifier.sending.smtp import EmailBackend
from notifier.sending.wire import transport_connection
from tests.notifier.factories import DeliveryFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def backend(smtp_sink):
    """An open connection of the SMTP transport whose first transaction is
    done (EHLO answered), and the writes it makes from then on."""
    conn = transport_connection("smtp")
    assert isinstance(conn, EmailBackend)
    conn.open()
    assert conn.send_messages([_message("warm@example.com")]) == 1
    smtp_sink.messages.clear()
    conn.writes = _record_writes(conn)
    yield conn
    conn.close()


def _message(*to, cc=()):
    return EmailMessage("Hello", "Body\n.leading dot\n", "News <news@example.com>", list(to), cc=cc)


def _record_writes(conn) -> list[bytes]:
    """What the open connection of ``conn`` writes from now on, a write each."""
    writes: list[bytes] = []
    send = conn.connection.send

    def recording_send(data):
        writes.append(data if isinstance(data, bytes) else data.encode())
        return send(data)

    conn.connection.send = recording_send
    return writes


def _verbs(lines: list[bytes]) -> list[str]:
    """The command of each line (its first word), upper case."""
    return [line.split(b" ")[0].rstrip(b"\r\n").decode().upper() for line in lines]


def _commands(write: bytes) -> list[str]:
    return _verbs(write.splitlines())


def test_commands_before_the_message_go_in_one_write(backend, smtp_sink):
    assert backend.send_messages([_message("a@example.com", cc=["b@example.com"])]) == 1
    commands, body = backend.writes
    assert _commands(commands) == ["MAIL", "RCPT", "RCPT", "DATA"]
    assert body.endswith(b"\r\n.\r\n") and b"\r\n..leading dot\r\n" in body
    (received,) = smtp_sink.messages
    assert received["mail_from"] == "news@example.com"
    assert received["rcpt_tos"] == ["a@example.com", "b@example.com"]
    assert received["message"].get_content().splitlines() == ["Body", ".leading dot"]


def test_one_refused_recipient_among_several_is_left_out(backend, smtp_sink):
    smtp_sink.reject["b@example.com"] = (550, "No such user")
    message = _message("a@example.com", "b@example.com", "c@example.com")
    assert backend.send_messages([message]) == 1
    (received,) = smtp_sink.messages
    assert received["rcpt_tos"] == ["a@example.com", "c@example.com"]


def test_all_recipients_refused_sends_nothing(backend, smtp_sink):
    smtp_sink.reject["a@example.com"] = (550, "No such user")
    smtp_sink.reject["b@example.com"] = (450, "Mailbox busy")
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        backend.send_messages([_message("a@example.com", "b@example.com")])
    assert refused.value.recipients == {
        "a@example.com": (550, b"No such user"),
        "b@example.com": (450, b"Mailbox busy"),
    }
    assert classify_exception(refused.value).status == FAILED  # not all of them 4xx
    assert smtp_sink.messages == []
    # DATA was answered (refused), the transaction reset: the connection goes on.
    assert backend.send_messages([_message("c@example.com")]) == 1
    assert [m["rcpt_tos"] for m in smtp_sink.messages] == [["c@example.com"]]


@pytest.mark.parametrize(("code", "status"), [(550, FAILED), (451, RETRY)])
def test_refused_sender(backend, smtp_sink, code, status):
    smtp_sink.refuse_sender = (code, "Sender refused")
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        backend.send_messages([_message("a@example.com", "b@example.com")])
    assert (refused.value.smtp_code, refused.value.sender) == (code, "News <news@example.com>")
    assert classify_exception(refused.value).status == status
    assert smtp_sink.messages == []
    smtp_sink.refuse_sender = None
    assert backend.send_messages([_message("c@example.com")]) == 1
    assert len(smtp_sink.messages) == 1


@pytest.mark.parametrize(("code", "status"), [(554, FAILED), (452, RETRY)])
def test_refused_data(backend, smtp_sink, code, status):
    smtp_sink.refuse_data = (code, "Message refused")
    with pytest.raises(smtplib.SMTPDataError) as refused:
        backend.send_messages([_message("a@example.com")])
    assert refused.value.smtp_code == code
    assert classify_exception(refused.value).status == status
    assert smtp_sink.messages == []
    smtp_sink.refuse_data = None
    assert backend.send_messages([_message("b@example.com")]) == 1
    assert len(smtp_sink.messages) == 1


def test_connection_lost_after_the_data_is_in_doubt(backend, smtp_sink):
    smtp_sink.drop_after_data = True
    with pytest.raises(smtplib.SMTPServerDisconnected) as lost:
        backend.send_messages([_message("a@example.com")])
    assert classify_exception(lost.value).status == UNKNOWN
    # It did arrive: only the answer was lost.
    assert [m["rcpt_tos"] for m in smtp_sink.messages] == [["a@example.com"]]


def test_without_pipelining_it_is_plain_smtplib(smtp_sink):
    smtp_sink.pipelining = False
    conn = transport_connection("smtp")
    conn.open()
    writes = _record_writes(conn)
    try:
        assert conn.send_messages([_message("a@example.com", "b@example.com")]) == 1
        smtp_sink.refuse_sender = (550, "Sender refused")
        with pytest.raises(smtplib.SMTPSenderRefused):
            conn.send_messages([_message("c@example.com")])
    finally:
        conn.close()
    commands = [_commands(write)[0] for write in writes]
    # One command a write: EHLO, MAIL, RCPT, RCPT, DATA, the message; then
    # MAIL (refused: RSET), and QUIT on closing.
    assert commands[:5] == ["EHLO", "MAIL", "RCPT", "RCPT", "DATA"]
    assert commands[6:] == ["MAIL", "RSET", "QUIT"]
    assert [m["rcpt_tos"] for m in smtp_sink.messages] == [["a@example.com", "b@example.com"]]


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        ({"drop_after_data": True}, UNKNOWN),
        ({"refuse_sender": (550, "Sender refused")}, FAILED),
        ({"refuse_data": (451, "Try later")}, Delivery.Status.PENDING),
        ({}, SENT),
    ],
)
def test_a_rows_outcome_over_smtp(smtp_sink, fault, status):
    for name, value in fault.items():
        setattr(smtp_sink, name, value)
    delivery = DeliveryFactory(transport="smtp")
    deliveries_send_batch(delivery_ids=[delivery.id])
    delivery.refresh_from_db()
    assert delivery.status == status


def test_after_a_send_in_doubt_the_batch_goes_on_over_one_new_connection(smtp_sink, settings):
    """The connection a send failed on half-way is replaced once; the rest of
    the batch does not open a connection per message."""
    settings.NOTIFIER_SEND_THREADS = 1
    smtp_sink.drop_after_data = 1
    rows = DeliveryFactory.create_batch(5, transport="smtp")
    deliveries_send_batch(delivery_ids=[row.id for row in rows])
    statuses = [Delivery.objects.get(pk=row.pk).status for row in rows]
    assert statuses == [UNKNOWN] + [SENT] * 4
    assert len(smtp_sink.messages) == 5  # the first arrived; its answer was lost
    assert smtp_sink.greetings == 2


def test_a_connection_the_server_closes_with_421_is_replaced(backend, smtp_sink):
    smtp_sink.refuse_sender = (421, "Closing, try later")
    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        backend.send_messages([_message("a@example.com")])
    assert classify_exception(refused.value).status == RETRY
    closed = backend.connection
    assert closed.sock is None  # smtplib closes it on 421
    smtp_sink.refuse_sender = None
    assert backend.send_messages([_message("b@example.com")]) == 1
    assert backend.send_messages([_message("c@example.com")]) == 1
    # One new connection, kept open for the messages after.
    assert backend.connection is not closed and backend.connection.sock is not None
    assert [m["rcpt_tos"] for m in smtp_sink.messages] == [["b@example.com"], ["c@example.com"]]


def test_ssl_connections_pipeline_too():
    from notifier.sending.smtp import PipeliningSMTP, PipeliningSMTP_SSL

    assert EmailBackend(use_ssl=True).connection_class is PipeliningSMTP_SSL
    assert EmailBackend(use_tls=True).connection_class is PipeliningSMTP


def test_many_recipients_go_unpipelined(backend, smtp_sink, monkeypatch):
    monkeypatch.setattr("notifier.sending.smtp.MAX_PIPELINED_RECIPIENTS", 2)
    to = ["a@example.com", "b@example.com", "c@example.com"]
    assert backend.send_messages([_message(*to)]) == 1
    assert [_commands(write)[0] for write in backend.writes[:5]] == [
        "MAIL",
        "RCPT",
        "RCPT",
        "RCPT",
        "DATA",
    ]
    assert [m["rcpt_tos"] for m in smtp_sink.messages] == [to]


def _scripted_server(*, rcpt: bytes, data: bytes):
    """A one-connection SMTP server offering PIPELINING that answers every
    RCPT TO with ``rcpt`` and DATA with ``data``; returns its port, its
    thread and the lines it receives (for answers the sink cannot give)."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve():
        conn, _ = listener.accept()
        listener.close()
        with conn, conn.makefile("rb") as lines:
            conn.sendall(b"220 scripted\r\n")
            in_data = False
            for line in lines:
                received.append(line)
                command = line[:4].upper()
                if in_data:
                    if line == b".\r\n":
                        in_data = False
                        conn.sendall(b"554 No valid recipients\r\n")
                elif command == b"EHLO":
                    conn.sendall(b"250-scripted\r\n250 PIPELINING\r\n")
                elif command == b"RCPT":
                    conn.sendall(rcpt + b"\r\n")
                elif command == b"DATA":
                    in_data = data.startswith(b"354")
                    conn.sendall(data + b"\r\n")
                elif command == b"QUIT":
                    conn.sendall(b"221 Bye\r\n")
                    return
                else:
                    conn.sendall(b"250 OK\r\n")

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    return listener.getsockname()[1], server, received


def test_data_accepted_after_every_recipient_refused_gets_no_message():
    """A server that answers DATA with 354 though it refused every recipient
    (RFC 2920 allows for it): the client ends the data at once, empty."""
    port, server, received = _scripted_server(rcpt=b"550 No such user", data=b"354 Go ahead")
    backend = EmailBackend(host="127.0.0.1", port=port, timeout=5)
    with backend, pytest.raises(smtplib.SMTPRecipientsRefused):
        backend.send_messages([_message("a@example.com")])
    server.join(5)
    assert _verbs(received)[1:] == ["MAIL", "RCPT", "DATA", ".", "RSET", "QUIT"]


@pytest.mark.parametrize(("code", "status"), [(554, FAILED), (451, RETRY)])
def test_refused_data_command_gets_no_message(code, status):
    """DATA refused after a recipient was accepted: the message is not sent,
    and the transaction is reset for the next one."""
    port, server, received = _scripted_server(rcpt=b"250 OK", data=b"%d No" % code)
    backend = EmailBackend(host="127.0.0.1", port=port, timeout=5)
    with backend, pytest.raises(smtplib.SMTPDataError) as refused:
        backend.send_messages([_message("a@example.com")])
    server.join(5)
    assert refused.value.smtp_code == code
    assert classify_exception(refused.value).status == status
    assert _verbs(received)[1:] == ["MAIL", "RCPT", "DATA", "RSET", "QUIT"]
