"""The one exception type for a job that cannot run as asked."""


class JobError(ValueError):
    """A bad job, found before any actor starts.

    The message names the field (as its CLI flag), the value and what would be valid, so the
    user can fix the command without reading code.
    """
