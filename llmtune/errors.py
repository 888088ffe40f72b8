"""The one exception type for problems the user can fix."""


class UserError(Exception):
    """Bad input (recipe, data, model, paths): the CLI prints it as one line and exits with 2.

    The message must say what is wrong, where (key, file, line, column) and what was expected.
    Internal bugs raise ordinary exceptions instead, so they keep their traceback.
    """


class DataWarning(UserWarning):
    """Data that llmtune skips or changes (and goes on): the CLI prints it as one `warning:` line."""
