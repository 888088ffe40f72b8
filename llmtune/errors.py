"""The exception for problems the user can fix, and the warnings the CLI shows as one line each."""


class UserError(Exception):
    """Bad input (recipe, data, model, paths): the CLI prints it as one line and exits with 2.

    The message must say what is wrong, where (key, file, line, column) and what was expected.
    Internal bugs raise ordinary exceptions instead, so they keep their traceback.
    """


class Notice(UserWarning):
    """Something the user should know and llmtune goes on with: the CLI prints it as one `warning:` line on stderr."""


class DataWarning(Notice):
    """Data that llmtune skips or changes (and goes on)."""
