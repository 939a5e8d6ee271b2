"""Tell a job that waits from one that hangs (``--stall-timeout``).

Two clocks: how long no render actor has been ready to take shards (none placed, all still loading,
or fewer than ``--min-workers`` before rendering started), and how long shards have been in flight
with no shard finishing. Either passing the timeout stalls the job. Pure logic, driven by the
scheduler's loop, so the rule is tested without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

NO_ACTOR, NO_COMMIT = "no actor", "no commit"


@dataclass
class StallWatch:
    timeout_s: float
    no_actor_since: float | None = None  # since when no actor takes shards
    busy_since: float | None = None  # since when shards are in flight without one finishing

    def check(self, now: float, can_render: bool, in_flight: int) -> tuple[str, float] | None:
        """(NO_ACTOR or NO_COMMIT, seconds waited) once one clock passed the timeout, else None."""
        if can_render:
            self.no_actor_since = None
        elif self.no_actor_since is None:
            self.no_actor_since = now
        if in_flight == 0:
            self.busy_since = None
        elif self.busy_since is None:
            self.busy_since = now
        for what, since in ((NO_ACTOR, self.no_actor_since), (NO_COMMIT, self.busy_since)):
            if since is not None and now - since >= self.timeout_s:
                return what, now - since
        return None

    def shard_finished(self, now: float) -> None:
        """A shard committed or failed for good: the in-flight clock starts again."""
        if self.busy_since is not None:
            self.busy_since = now
