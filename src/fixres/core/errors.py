"""The one exception type fixres raises for problems the user can fix.

The CLI turns a :class:`FixresError` into a single line on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""


class FixresError(Exception):
    """Bad input or a refused operation, explained in one line."""


def out_of_memory(error: BaseException) -> str | None:
    """One line for an allocation that failed (``MemoryError``, torch's ``OutOfMemoryError`` on a
    GPU, or the CPU allocator's ``RuntimeError``), or ``None`` for any other error: running out
    of memory at a size the user chose is their setting to change, not a bug."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or (
            isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)):
        asked = text.split("you tried to allocate ", 1)[-1].split(".", 1)[0] if "tried to allocate" in text else ""
        return ("out of memory" + (f" (an allocation of {asked})" if asked else "")
                + ": lower --batch-size or the resolution, or use a machine with more memory")
    return None
