"""The user-facing error type.

A :class:`UserError` is a mistake in what the user gave (a command-line value, a config key, a file, a
data set): the CLI prints it as one line and exits with status 2. Everything else — including a
``ValueError`` raised deep inside the library — is a bug or a library misuse and keeps its traceback.
Library code raises ``UserError`` only where it validates user input; it never imports the CLI.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # as a shell reports a process stopped by Ctrl-C (128 + SIGINT)


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit status 2."""
