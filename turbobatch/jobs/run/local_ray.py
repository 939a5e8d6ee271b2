"""The Ray this driver starts for itself (no RAY_ADDRESS, no ``ray start`` on this machine), and the
parts of Ray's private API that needs: whether it started here, its processes in groups of their own,
token auth set explicitly. nodes.py holds the GCS queries; nothing else touches ``ray._private``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

AUTH_MODE_ENV = "RAY_AUTH_MODE"


def started_here() -> bool:
    """Whether this process started the Ray it runs on (``ray.init()`` without an address)."""
    import ray._private.worker

    node = ray._private.worker._global_node
    return node is not None and node.is_head()


def starts_local_ray() -> bool:
    """Whether ``ray.init()`` will start a Ray of its own: no RAY_ADDRESS and no ``ray start`` cluster recorded
    on this machine (the rule of ray/_private/services.py canonicalize_bootstrap_address)."""
    from ray._private import services

    return services.canonicalize_bootstrap_address(None) is None


@contextlib.contextmanager
def own_process_groups() -> Iterator[None]:
    """Start the local Ray's processes (gcs_server, raylet, monitors) each in a process group of its own.

    Slurm, systemd, Kubernetes and ``timeout`` signal the driver's whole process group. Ray starts these
    processes in the driver's group (ray/_private/services.py start_ray_process; on Windows it already gives
    them a group of their own), so they died first, and the driver then hung 60 s ("Failed to connect to GCS
    within 60 seconds"), exited 1 and left defunct gcs_server and raylet behind. In groups of their own they
    outlive the signal, and the driver stops its actors and shuts Ray down as after a SIGTERM to itself alone.
    Only with kernel fate-sharing (PR_SET_PDEATHSIG): they still die with the driver, even a SIGKILLed one; Ray's
    fallback, a reaper that kills the driver's process group, needs them in that group."""
    from ray._private import services, utils

    if not utils.detect_fate_sharing_support():
        yield
        return
    original = services.ConsolePopen

    class OwnGroupPopen(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("process_group", 0)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = OwnGroupPopen
    try:
        yield
    finally:
        services.ConsolePopen = original


@contextlib.contextmanager
def explicit_auth_mode() -> Iterator[None]:
    """Give the Ray started here the token auth that Ray gives it by default, without Ray's warning.

    A local ``ray.init()`` with RAY_AUTH_MODE unset turns token auth on and warns "Token authentication is enabled
    for this Ray cluster" on every run; with the mode set it is respected silently
    (ray/_private/authentication/authentication_token_setup.py enable_token_auth_by_default). Same security as
    Ray's default (a token in ~/.ray/auth_token, created if missing), one warning less. A mode the user set wins;
    a cluster the user joins is never touched (this runs only when ``ray.init`` starts a Ray). Ray's C++ config
    caches the mode when ray is imported, so it is reloaded after each change, as Ray's _enable_token_auth does."""
    if os.environ.get(AUTH_MODE_ENV) is not None:
        yield
        return
    _set_auth_mode("token")
    try:
        yield
    finally:
        _set_auth_mode(None)


def _set_auth_mode(mode: str | None) -> None:
    from ray._raylet import Config

    if mode is None:
        os.environ.pop(AUTH_MODE_ENV, None)
    else:
        os.environ[AUTH_MODE_ENV] = mode
    Config.initialize("")
