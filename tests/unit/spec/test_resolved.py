"""The user's JobSpec and the ResolvedJob the actors receive are two types."""

import dataclasses

import pytest

from turbobatch.errors import JobError
from turbobatch.spec.job import SET_FROM_VARIANT, JobSpec
from turbobatch.spec.resolved import ResolvedJob


def test_the_users_spec_has_no_field_the_driver_sets():
    user = {f.name for f in dataclasses.fields(JobSpec)}
    assert not user & set(ResolvedJob.RESOLVED_FIELDS)
    assert {f.name for f in dataclasses.fields(ResolvedJob)} == user | set(ResolvedJob.RESOLVED_FIELDS)
    assert set(SET_FROM_VARIANT) <= set(ResolvedJob.RESOLVED_FIELDS)  # the YAML check names them all


def test_of_keeps_every_user_value_and_adds_the_drivers():
    spec = JobSpec(input="i", output="o", steps=3, sweep=[["steps", [1, 2]]], storage_options={"key": "k"})
    job = ResolvedJob.of(spec, device="cpu", dtype="float32", height=64, width=48, kept_schema="abc")
    assert isinstance(job, ResolvedJob) and (job.device, job.height, job.kept_schema) == ("cpu", 64, "abc")
    assert {k: v for k, v in job.to_dict().items() if k not in ResolvedJob.RESOLVED_FIELDS} == {
        **spec.to_dict(),
        "device": "cpu",
        "dtype": "float32",
        "height": 64,
        "width": 48,
    }
    assert ResolvedJob.of(job, model_variant="fp16").kept_schema == "abc"  # resolving again keeps the rest


def test_the_fingerprint_covers_the_variants_only_once_resolved():
    spec = JobSpec(input="i", output="o")
    assert "model_variant" not in spec.output_fields()
    none, fp16 = (ResolvedJob.of(spec, model_variant=v).output_hash() for v in ("none", "fp16"))
    assert none != fp16


def test_a_resolved_job_round_trips_through_its_dict():
    job = ResolvedJob.of(JobSpec(input="i", output="o"), model_variant="fp16", sources={"model": {"kind": "hub"}})
    assert ResolvedJob.from_dict(job.to_dict()) == job


def test_a_resolved_variant_outside_fp16_and_none_is_refused():
    with pytest.raises(JobError, match="model_variant: 'fp32' is not valid; choose one of fp16, none"):
        ResolvedJob.of(JobSpec(input="i", output="o"), model_variant="fp32").validate()
