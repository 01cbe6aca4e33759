"""The one error type the CLI turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input a user can fix: the message says what was expected, what was found, what to do."""
