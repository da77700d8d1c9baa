"""Django's SMTP backend with ESMTP command pipelining (RFC 2920).

``smtplib.SMTP.sendmail`` waits for an answer after each command: ``MAIL
FROM``, every ``RCPT TO``, ``DATA``, then the message: at least four round
trips a message. Where the server advertises ``PIPELINING``,
``PipeliningSMTP.sendmail`` writes ``MAIL FROM``, every ``RCPT TO`` and
``DATA`` at once, reads their answers in order, and only on ``354`` sends the
message: two round trips. Without ``PIPELINING`` it is ``smtplib``'s own
``sendmail``.

Every answer means what it means to ``smtplib`` (so ``outcomes`` classifies it
alike): a refused sender raises ``SMTPSenderRefused``; refused recipients are
returned (some) or raise ``SMTPRecipientsRefused`` (all); a refused ``DATA``
or message raises ``SMTPDataError``; a connection lost before the last answer
raises ``SMTPServerDisconnected`` (in doubt once the message may have gone
out). The message itself is never sent unless ``DATA`` was answered ``354``
with at least one recipient accepted. After a refusal the transaction is
reset (``RSET``), so the connection stays usable for the next message;
after a ``421`` it is closed, as ``smtplib`` does.

``EmailBackend`` is Django's SMTP backend (TLS, SSL, login, timeout as there)
over these connections; it replaces a connection closed after a ``421``
before the next message.
"""

import functools
import re
import smtplib

from django.conf import settings
from django.core.mail.backends import smtp
from django.core.mail.message import sanitize_address

from notifier.sending.addresses import plain_address_parts
from notifier.sending.mime import message_bytes

_LEADING_DOT = re.compile(rb"(?m)^\.")
# More recipients than this go the unpipelined way: their answers, unread
# while the commands are still being written, must fit in the socket buffers
# (RFC 2920, 3.1), or client and server would both wait on a full buffer.
MAX_PIPELINED_RECIPIENTS = 100


class PipeliningMixin:
    """``sendmail`` with the commands before the message pipelined."""

    def sendmail(self, from_addr, to_addrs, msg, mail_options=(), rcpt_options=()):
        self.ehlo_or_helo_if_needed()
        if isinstance(to_addrs, str):
            to_addrs = [to_addrs]
        if not self.has_extn("pipelining") or len(to_addrs) > MAX_PIPELINED_RECIPIENTS:
            return super().sendmail(from_addr, to_addrs, msg, mail_options, rcpt_options)
        if isinstance(msg, str):
            msg = smtplib._fix_eols(msg).encode("ascii")
        options = []
        if self.has_extn("size"):
            options.append(f"size={len(msg)}")
        options.extend(mail_options)
        if any(option.lower() == "smtputf8" for option in options):
            if not self.has_extn("smtputf8"):
                raise smtplib.SMTPNotSupportedError("SMTPUTF8 not supported by server")
            self.command_encoding = "utf-8"
        mail_args = " ".join(options)
        rcpt_args = " ".join(rcpt_options)
        commands = [_command("mail", f"FROM:{_quoted_sender(from_addr)}", mail_args)]
        commands += [_command("rcpt", f"TO:{quoted_address(to)}", rcpt_args) for to in to_addrs]
        commands.append("data\r\n")
        self.send("".join(commands))

        code, resp = self.getreply()
        if code != 250:
            if code == 421:
                self.close()
            else:
                self._drain(len(to_addrs))
            raise smtplib.SMTPSenderRefused(code, resp, from_addr)
        refused = {}
        for to in to_addrs:
            code, resp = self.getreply()
            if code not in (250, 251):
                refused[to] = (code, resp)
            if code == 421:
                self.close()
                raise smtplib.SMTPRecipientsRefused(refused)
        if len(refused) == len(to_addrs):
            self._drain(0)
            raise smtplib.SMTPRecipientsRefused(refused)
        code, resp = self.getreply()
        if code != 354:
            self._reset_after(code)
            raise smtplib.SMTPDataError(code, resp)
        body = _LEADING_DOT.sub(b"..", msg)
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        self.send(body + b".\r\n")
        code, resp = self.getreply()
        if code != 250:
            self._reset_after(code)
            raise smtplib.SMTPDataError(code, resp)
        return refused

    def _drain(self, replies: int) -> None:
        """After a refusal that ends the transaction: read the answers still
        due to the pipelined commands (``replies`` ``RCPT`` answers, then
        ``DATA``'s; a ``354`` there is ended by an empty message, which the
        server has no recipient for), then reset. A connection lost meanwhile
        changes nothing: no message was sent. It is closed."""
        try:
            for _ in range(replies):
                self.getreply()
            code, _resp = self.getreply()
            if code == 354:
                self.send(b".\r\n")
                self.getreply()
        except smtplib.SMTPServerDisconnected:
            return
        self._rset()

    def _reset_after(self, code: int) -> None:
        if code == 421:
            self.close()
        else:
            self._rset()


def _command(cmd: str, args: str, options: str) -> str:
    """One command line as ``smtplib.SMTP.putcmd`` writes it."""
    line = f"{cmd} {args} {options}" if options else f"{cmd} {args}"
    if "\r" in line or "\n" in line:
        line = line.replace("\n", "\\n").replace("\r", "\\r")
        raise ValueError(f"command and arguments contain prohibited newline characters: {line}")
    return f"{line}\r\n"


class PipeliningSMTP(PipeliningMixin, smtplib.SMTP):
    pass


class PipeliningSMTP_SSL(PipeliningMixin, smtplib.SMTP_SSL):  # noqa: N801 (as smtplib names it)
    pass


class EmailBackend(smtp.EmailBackend):
    """Django's SMTP backend over ``PipeliningSMTP`` connections."""

    @property
    def connection_class(self):
        return PipeliningSMTP_SSL if self.use_ssl else PipeliningSMTP

    def open(self):
        """Django's ``open``; a connection ``smtplib`` closed itself (the
        server answered ``421``) is replaced by a new one that stays open, as
        the one it replaces did. Django's would keep the closed one, and the
        next message would fail without being sent, as if in doubt."""
        if self.connection is not None and self.connection.sock is None:
            self.connection = None
            return None if super().open() is None else False
        return super().open()

    def drop_connection(self) -> None:
        """Close the connection after a send that failed half-way (its state
        is unknown) so that ``open`` replaces it before the next message and
        keeps the new one open: after ``close`` every later message of the
        batch would open and close a connection of its own."""
        if self.connection is not None:
            try:
                self.connection.close()
            except Exception:
                self.connection = None

    def _send(self, email_message):
        """Django's ``_send``, with the sender's address checked and encoded
        once per process, not once per message (the same for a whole run),
        plain recipient addresses taken as they are (``sanitized_recipient``)
        and the message written by ``mime.message_bytes``."""
        if not email_message.recipients():
            return False
        encoding = email_message.encoding or settings.DEFAULT_CHARSET
        from_email = (
            _sanitized_sender(email_message.from_email, encoding)
            if type(email_message.from_email) is str
            else sanitize_address(email_message.from_email, encoding)
        )
        recipients = [sanitized_recipient(addr, encoding) for addr in email_message.recipients()]
        message = message_bytes(email_message, linesep="\r\n")
        try:
            self.connection.sendmail(from_email, recipients, message)
        except smtplib.SMTPException:
            if not self.fail_silently:
                raise
            return False
        return True


@functools.lru_cache(maxsize=64)
def _sanitized_sender(address: str, encoding: str) -> str:
    return sanitize_address(address, encoding)


def quoted_address(address) -> str:
    """``smtplib.quoteaddr(address)`` (the ``<local@domain>`` of a MAIL FROM
    or RCPT TO command), without parsing a plain one (``addresses``)."""
    parts = plain_address_parts(address)
    if parts is not None:
        return f"<{parts[1]}@{parts[2]}>"
    return smtplib.quoteaddr(address)


@functools.lru_cache(maxsize=64)
def _quoted_sender(address: str) -> str:
    """The sender is the same for a whole run: quoted once per process."""
    return quoted_address(address)


def sanitized_recipient(address, encoding: str) -> str:
    """``sanitize_address(address, encoding)``, without parsing a plain one
    (``addresses``): Django returns such an address unchanged."""
    if plain_address_parts(address) is not None:
        return address
    return sanitize_address(address, encoding)
