"""The exceptions that end a job early, and how a failure is named in one line."""


class JobError(ValueError):
    """A bad job, found before any actor starts.

    The message names the field (as its CLI flag), the value and what would be valid, so the
    user can fix the command without reading code.
    """


class MissingArgument(JobError):
    """INPUT or OUTPUT given neither on the command line nor in --config.

    It keeps the argument's name so the command line can restate the usage with the command the
    user typed (``turbobatch render``, ``python -m turbobatch render``, ...).
    """

    def __init__(self, name: str, prog: str = "python -m turbobatch.jobs.run.render") -> None:
        self.name = name
        super().__init__(f"{name}: missing; usage: {prog} INPUT OUTPUT [options] (or {name}: in the --config file); "
                         "--help lists the options")  # fmt: skip


class JobStalled(RuntimeError):
    """The job cannot go on: no render actor is ready, or nothing commits, for --stall-timeout
    seconds, or a crash loop left no actor. The message says what it waited for."""


def error_text(e: BaseException) -> str:
    """One line naming the failure: the remote exception's type and message for task errors."""
    cause = getattr(e, "cause", None)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}".strip().splitlines()[0][:500]
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first}"[:500] if first else type(e).__name__
