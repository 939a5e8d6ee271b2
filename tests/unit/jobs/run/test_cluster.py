"""resolve_spec (jobs/run/cluster.py): worker resources and what may wait for the cluster to grow."""

import pytest

from turbobatch.errors import JobError
from turbobatch.jobs.run.cluster import ClusterInfo, actor_resources, capacity_note, resolve_spec
from turbobatch.models.resolve import ModelInfo
from turbobatch.spec.job import JobSpec

MODEL = ModelInfo("m", "m", "StableDiffusionPipeline", 512, 512, 1024, None, 4, 8)
CPU_NODE = {"CPU": 2.0}


def resolve(cluster: ClusterInfo, **fields) -> JobSpec:
    return resolve_spec(JobSpec(input="i", output="o", **fields), MODEL, cluster)


def test_cpu_jobs_split_the_clusters_cpus_and_cuda_jobs_take_one_gpu_and_one_cpu():
    spec = resolve(ClusterInfo(gpus=0, cpus=4, nodes=({"CPU": 4.0},)), workers=2)
    assert (spec.device, spec.worker_cpus, spec.worker_gpus) == ("cpu", 2, 0)
    assert actor_resources(spec) == {"CPU": 2}
    gpu = resolve(ClusterInfo(gpus=2, cpus=16, nodes=({"CPU": 16.0, "GPU": 2.0},)), worker_gpus=0.5)
    assert (gpu.device, gpu.workers, gpu.worker_cpus, gpu.worker_gpus) == ("cuda", 4, 1, 0.5)  # fills the GPUs
    assert capacity_note(gpu, ClusterInfo(gpus=2, cpus=16, nodes=({"CPU": 16.0, "GPU": 2.0},))) is None


def test_more_workers_than_fit_now_waits_on_a_cluster_that_can_grow():
    cluster = ClusterInfo(gpus=0, cpus=1, nodes=({"CPU": 1.0},), local=False)
    spec = resolve(cluster, workers=3, worker_cpus=1)
    assert spec.workers == 3
    assert capacity_note(spec, cluster) == (
        "turbobatch: the cluster has room for 1 of 3 render actors of {'CPU': 1} now; the others start as "
        "nodes join (autoscaler or `ray start`)"
    )


def test_a_ray_started_by_the_job_cannot_grow():
    with pytest.raises(JobError, match=r"--workers: 3 actors need 3 CPUs; the Ray cluster has 2 \(a Ray started"):
        resolve(ClusterInfo(gpus=0, cpus=2, nodes=(CPU_NODE,), local=True), workers=3)


def test_a_request_no_node_type_can_hold_fails_at_once():
    cluster = ClusterInfo(gpus=0, cpus=2, nodes=(CPU_NODE,), node_types=({"CPU": 8.0, "GPU": 1.0}, {"CPU": 2.0}))
    assert resolve(cluster, device="cuda", workers=4).workers == 4  # the GPU node type holds one
    with pytest.raises(
        JobError,
        match=r"--worker-gpus / --worker-cpus: one actor needs \{'CPU': 1, 'GPU': 2\}; "
        r"no node type of this cluster has that",
    ):
        resolve(cluster, device="cuda", worker_gpus=2)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"workers": None, "min_workers": 2}, "--min-workers: 2 is more than the 1 worker(s)"),
        ({"device": "cpu", "worker_gpus": 0.5}, "--worker-gpus: 0.5 given but the job renders on CPU"),
    ],
)
def test_worker_fields_that_depend_on_the_cluster_are_checked_before_any_actor(fields, message):
    with pytest.raises(JobError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve(ClusterInfo(gpus=0, cpus=2, nodes=(CPU_NODE,)), **fields)


PUBLISH_NODE_TYPES = """
import ray, ray._raylet as r
from ray.core.generated import autoscaler_pb2
from ray.experimental.internal_kv import _internal_kv_put
ray.init(logging_level="ERROR")
config = autoscaler_pb2.ClusterConfig()
group = config.node_group_configs.add(name="cpu-small", max_count=4)
group.resources["CPU"] = 1
_internal_kv_put(r.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode(), config.SerializeToString(), overwrite=True,
                 namespace=r.GCS_AUTOSCALER_STATE_NAMESPACE.encode())
"""
