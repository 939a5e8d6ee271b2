"""The real-Ray half of tests/unit/test_errors.py: what only a running cluster shows."""

from __future__ import annotations

import pytest

from turbobatch.errors import is_retryable


def test_actor_death_is_retryable(ray_cluster):
    import os
    import signal

    @ray_cluster.remote(num_cpus=0)
    class Victim:
        def pid(self) -> int:
            return os.getpid()

        def die(self) -> None:
            os.kill(os.getpid(), signal.SIGKILL)

    victim = Victim.remote()
    ray_cluster.get(victim.pid.remote())
    with pytest.raises(ray_cluster.exceptions.RayActorError) as caught:
        ray_cluster.get(victim.die.remote())
    assert is_retryable(caught.value)
