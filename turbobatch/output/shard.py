"""A shard: a contiguous range of the job's image indices within one input file, the unit that is
planned (jobs/prepare/plan.py), rendered (workers/actor.py) and committed (one done marker)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Shard:
    shard_id: int
    file: str  # URL of the Parquet file
    row_start: int  # first row in the file (inclusive)
    row_end: int  # last row in the file (exclusive)
    first_index: int  # global index of row_start
    key_width: int  # digits of zero-padded index keys, the same for the whole job
    # The job's image indices the shard renders, [image_start, image_end); None: one image per row
    # (image index = global index), every image of rows row_start..row_end.
    image_start: int | None = None
    image_end: int | None = None

    @property
    def num_rows(self) -> int:
        """Input rows the shard reads (a row whose images span two shards is read by both)."""
        return self.row_end - self.row_start

    @property
    def images(self) -> range:
        if self.image_start is None or self.image_end is None:
            return range(self.first_index, self.first_index + self.num_rows)
        return range(self.image_start, self.image_end)

    @property
    def num_images(self) -> int:
        """Images the shard makes: its metadata rows (ok or error)."""
        return len(self.images)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def planned_images(plan: dict[str, Any]) -> dict[int, int]:
    """plan.json's shards -> their images (Shard.num_images: plans made before images had their
    own range make one image per row)."""
    return {s["shard_id"]: Shard(**s).num_images for s in plan["shards"]}
