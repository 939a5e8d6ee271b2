"""Resume state: which shards are committed, and whether the output belongs to this job.

One listing of ``OUT/_done/`` tells which shards are done. ``_job/spec.json`` holds the
fingerprint of the first run; a rerun whose fingerprint differs stops, naming what changed,
unless the user asks for ``--overwrite``.
"""

from __future__ import annotations

from typing import Any

from jobs import layout
from jobs.errors import JobError
from jobs.plan import Shard, describe_changes
from jobs.spec import JobSpec
from jobs.storage import Folder, check_endpoint, describe_error


def check_writable(out: Folder) -> None:
    """Fail early (before Ray or any model) when the output cannot be written."""
    probe = "_job/.write-probe"
    try:
        check_endpoint(out.url, out.storage_options)
        out.write_bytes(probe, b"ok")
        out.fs.rm(out.path(probe))
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot write"
        reason = describe_error(e, out.display(), out.storage_options)
        raise JobError(f"output: cannot write to {out.display()}: {reason}") from None


def committed_shards(out: Folder) -> set[int]:
    """Shard ids with a done marker: one listing of _done/."""
    ids = (layout.shard_id_from_done_name(name) for name in out.list_names(layout.DONE_DIR))
    return {i for i in ids if i is not None}


def prepare(out: Folder, spec: JobSpec, plan: list[Shard], fingerprint: dict[str, Any]) -> set[int]:
    """Claim the output for this job (or check it is ours) and return the committed shard ids."""
    previous = out.read_json(layout.SPEC)["fingerprint"] if out.exists(layout.SPEC) else None
    changes = describe_changes(previous, fingerprint) if previous is not None else []
    if changes and not spec.overwrite:
        raise JobError(
            f"output: {out.display()} holds a job made with other inputs or options:\n  "
            + "\n  ".join(changes)
            + "\nUse a new output folder, or --overwrite to discard the existing output."
        )
    foreign = previous is None and bool(committed_shards(out))  # done markers of an unknown job
    if foreign and not spec.overwrite:
        raise JobError(
            f"output: {out.display()} has committed shards but no {layout.SPEC}; it was not "
            "made by this job. Use a new output folder, or --overwrite to discard it."
        )
    if changes or foreign:  # only with --overwrite, as checked above
        _clear(out)
    if previous is None or changes:  # claim the output for this job
        out.write_json(layout.PLAN, {"num_shards": len(plan), "shards": [s.to_dict() for s in plan]})
        out.write_json(layout.SPEC, {"spec": spec.to_public_dict(), "fingerprint": fingerprint})
    done = committed_shards(out)
    unknown = sorted(done - {s.shard_id for s in plan})
    if unknown:
        raise JobError(f"output: done markers for shards not in the plan: {unknown[:10]}")
    return done


def _clear(out: Folder) -> None:
    """--overwrite: remove only what turbobatch writes, never other files in the folder."""
    for rel in layout.OUTPUT_DIRS:
        out.remove_tree(rel)
