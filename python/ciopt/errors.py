"""The one base class of errors the user can fix (bad BUILD file, config, pattern, path).

The CLI prints them as a single line and exits 2; everything else is a bug.
"""


class UserError(Exception):
    """Bad input: the message names the file:line or the field."""
