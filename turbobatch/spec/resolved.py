"""ResolvedJob: the job the actors receive, every choice made.

The user's ``JobSpec`` leaves some fields to the model and the cluster (size, dtype, device,
worker count and resources: None until known). The driver fills them and adds what only it can
know, from the inputs and the models' listings: the kept columns' Arrow schema and, per
component, the weight variant and the files each node fetches. It does so once, in
jobs/run/render.py ``resolve_job``; everything after that step, the actors included, takes a
``ResolvedJob``. A subclass, so that what both share reads the same on either side.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from turbobatch.errors import JobError
from turbobatch.spec.job import JobSpec

RESOLVED_VARIANTS = ("fp16", "none")
VARIANT_FIELDS = ("model_variant", "vae_variant", "controlnet_variant")


@dataclass
class ResolvedJob(JobSpec):
    """A ``JobSpec`` with its None-means-later fields set, plus what the driver resolved."""

    # The variant each component loads ("fp16" or "none"; None when the component is not used),
    # chosen from --variant, the dtype and the model's listing (models/resolve.py resolve_weights).
    model_variant: str | None = None
    vae_variant: str | None = None
    controlnet_variant: str | None = None
    # Per component: where its files are and which of them a node fetches (models/source.py to_spec).
    sources: dict[str, Any] = field(default_factory=dict)
    # --keep-columns resolved to the columns' Arrow types, the same for every shard (base64 Arrow
    # IPC schema; output/columns.py).
    kept_schema: str | None = None

    # Fields that change what is written (pixels, names, layout): a resume must not mix them.
    OUTPUT_FIELDS = (*JobSpec.OUTPUT_FIELDS, *VARIANT_FIELDS)
    # The fields this type adds to the user's.
    RESOLVED_FIELDS = (*VARIANT_FIELDS, "sources", "kept_schema")

    @classmethod
    def of(cls, spec: JobSpec, **resolved: Any) -> ResolvedJob:
        """The user's spec with the driver's values (any field of either type) set."""
        if isinstance(spec, ResolvedJob):
            return dataclasses.replace(spec, **resolved)
        return cls(**{**dataclasses.asdict(spec), **resolved})

    def validate(self) -> None:
        super().validate()
        for name in VARIANT_FIELDS:
            value = getattr(self, name)
            if value is not None and value not in RESOLVED_VARIANTS:
                raise JobError(f"{name}: {value!r} is not valid; choose one of {', '.join(RESOLVED_VARIANTS)}")

    @staticmethod
    def legacy_value(name: str, old_spec: dict[str, Any]) -> Any:
        """The value an output fingerprinted before field ``name`` existed was made with: weights
        loaded without a variant (plain files) for each component the job used; for any other
        field its default (the option did not exist yet)."""
        if name in VARIANT_FIELDS:
            used = {
                "model_variant": old_spec.get("weights", "pretrained") == "pretrained",
                "vae_variant": bool(old_spec.get("vae")),
                "controlnet_variant": bool(old_spec.get("controlnet")),
            }
            return "none" if used[name] else None
        defaults = {f.name: f.default for f in dataclasses.fields(ResolvedJob) if f.default is not dataclasses.MISSING}
        return defaults.get(name)
