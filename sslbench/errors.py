"""What the CLI turns into one line and a non-zero exit: bad input (UserError) and a signal (Interrupted)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input a user can fix: the message says what was expected, what was found, what to do."""


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM: like KeyboardInterrupt, not an Exception (no `except Exception` swallows it).
    `message` says what was interrupted and whether --resume can continue it; the exit code is 128 + signal."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message)
        self.signum, self.message = signum, message

    def with_message(self, message: str) -> Interrupted:
        return Interrupted(self.signum, message)
