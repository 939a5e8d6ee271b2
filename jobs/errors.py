"""The one exception type for a job that cannot run as asked."""


class JobError(ValueError):
    """A bad job, found before any actor starts.

    The message names the field (as its CLI flag), the value and what would be valid, so the
    user can fix the command without reading code.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM (`ray job stop`, Kubernetes, the cluster launcher) while the job runs: it stops like
    Ctrl-C does, so the scheduler's cleanup runs (actors killed, nothing more committed) and the
    user is told how to resume."""
