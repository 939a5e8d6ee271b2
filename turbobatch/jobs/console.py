"""What every command does at its edges: its exit (without the interpreter's teardown), the name it
was invoked by, and JSON option values. Imports from jobs/run only the SIGTERM flag."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn


def json_object(flag: str):
    def parse(text: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at character {e.pos})") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}")
        return value

    parse.__name__ = flag  # argparse names the type in its error message
    return parse


def exit_without_teardown(code: int) -> NoReturn:
    """End the process with ``code`` once Ray is shut down and every output is flushed, skipping the
    interpreter's teardown: Arrow's thread pools can abort it ("terminate called without an active exception",
    exit 134 after the work is done: apache/arrow#34314). Seen after ``verify`` had printed "ok", and in 2 of
    37 runs of a render with duplicate keys (1 of 40 when measured again; the key check reads the key column with
    Arrow's threads).

    What teardown would still do is done here first: Ray shut down (a no-op after render's ray_session),
    atexit handlers run (logging flushes its handlers there), stdout and stderr flushed."""
    import atexit
    import contextlib

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def exit_code_of(command: Callable[[], int]) -> int:
    """``command()``'s return value, or the exit code of what ended it early (see console_main)."""
    import signal
    import traceback

    try:
        return command()
    except SystemExit as e:
        return _exit_code(e.code)
    except KeyboardInterrupt:  # between render's own handlers and here: rare, but the code must still say so
        from turbobatch.jobs.run.signals import SIGTERM_RECEIVED

        return 128 + (signal.SIGTERM if SIGTERM_RECEIVED.is_set() else signal.SIGINT)
    except Exception:
        traceback.print_exc()
        return 1


def _exit_code(code: object) -> int:
    """What ``sys.exit(code)`` would end the process with (a message is printed, as Python does)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def invoked_as() -> str:
    """The command the user typed to start this process, for usage lines: ``python -m turbobatch`` (or
    ``python -m turbobatch.jobs.cli``) when run as a module, else the installed ``turbobatch`` command."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = spec.name.removesuffix(".__main__") if spec is not None else ""
    return f"python -m {name}" if name == "turbobatch" or name.startswith("turbobatch.") else "turbobatch"
