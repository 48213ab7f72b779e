"""The one exception type for user mistakes: the CLI prints its message as one line and exits 1."""


class UserError(Exception):
    """A problem the user can fix (bad path, flag, or corpus); never shown with a traceback."""
