"""The one error type the command line turns into a single line and exit code 2."""


class UserError(Exception):
    """Bad input from the user: an unknown name, an impossible number, a missing file.

    The message is one line that says what is wrong and, where it helps, what is valid.
    """
