"""The exception types for user mistakes: the CLI prints the message as one line and exits with
the error's ``exit_code``."""


class UserError(Exception):
    """A problem the user can fix (bad path, flag, or corpus); never shown with a traceback."""

    exit_code = 1


class BadInputError(UserError):
    """Inputs the command refuses outright (parts that do not belong together, a part missing or
    given twice): exit 2, as for a bad flag."""

    exit_code = 2
