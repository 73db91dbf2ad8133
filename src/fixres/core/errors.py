"""The one exception type fixres raises for problems the user can fix.

The CLI turns a :class:`FixresError` into a single line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""


class FixresError(Exception):
    """Bad input or a refused operation, explained in one line."""
