"""Errors campaign services raise for a request they refuse; the message says why."""


class CampaignError(ValueError):
    """The action is not possible (now); nothing was changed."""


class ImportFileError(ValueError):
    """The CSV file as a whole cannot be imported (bad header, not UTF-8)."""
