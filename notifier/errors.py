"""Errors the public API raises for bad input. Each carries a clear message."""


class NotifierError(ValueError):
    """Bad input: nothing was stored."""


class InvalidAddress(NotifierError):
    pass


class InvalidName(NotifierError):
    pass


class InvalidSchedule(NotifierError):
    pass


class InvalidTemplate(NotifierError):
    pass


class InvalidContext(NotifierError):
    pass


class UnknownTransport(NotifierError):
    pass


class InvalidSender(NotifierError):
    pass


class AddressSuppressed(NotifierError):
    """The address belongs to an erased recipient: it may not be stored or
    mailed again until staff lift its suppression."""
