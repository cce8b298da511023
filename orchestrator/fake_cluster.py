"""cluster.yaml's node types on one machine: the config of Ray's fake multi-node provider
(`provider: type: fake_multinode`, ray/autoscaler/_private/fake_multi_node/node_provider.py),
derived from the AWS config so the autoscaler plans with the same node types, GPU counts and
worker limits. Pure: a dict in, a dict out; `bench/fake_cluster.py` starts it.

What changes, and why (one small machine runs every "node"):
- the head type is renamed `ray.head.default`: the fake provider tags its head with that name
  (FAKE_HEAD_NODE_TYPE) whatever the config calls it;
- CPUs are scaled down, GPU counts kept: a GPU worker gets `cpus_per_gpu` CPU per GPU (one
  trial slot per GPU at one CPU per trial), the head `head_cpus`. A raylet prestarts one Python
  worker per CPU, so the 48 CPUs of a g5.12xlarge would start 48 processes on 2 cores;
- each node's object store is capped (`object_store_mb`): every fake node would otherwise take
  30% of this machine's memory as its own. Ray's `memory` resource is not set: the fake provider
  refuses it as a node resource, so every fake node reports this machine's memory;
- the idle timeout is shortened, so the workers go away within the demo;
- no AWS keys: no instance types, AMIs, IAM, SSH, setup or start commands (there is nothing to
  install; every node runs this checkout's Ray).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FAKE_HEAD_TYPE = "ray.head.default"  # node_provider.FAKE_HEAD_NODE_TYPE in the installed Ray
NODE_TYPE_LABEL = "medsweep-node-type"  # a node label: which cluster.yaml type a node plays


@dataclass(frozen=True)
class FakeScale:
    """How the AWS node types shrink to fit one small machine."""

    head_cpus: int = 1
    cpus_per_gpu: int = 1
    object_store_mb: int = 200  # Ray's minimum is 75 MB
    idle_timeout_minutes: float = 0.25


def fake_cluster_config(aws: dict[str, Any], gcs_address: str,
                        scale: FakeScale = FakeScale()) -> dict[str, Any]:
    """The fake_multinode autoscaler config for `aws` (cluster.yaml as loaded), its head's GCS
    at `gcs_address` (host:port, where the worker nodes join)."""
    head_name = aws["head_node_type"]
    types: dict[str, Any] = {}
    for name, node_type in aws["available_node_types"].items():
        resources = dict(node_type.get("resources", {}))
        gpus = int(resources.get("GPU", 0))
        if name == head_name:
            cpus = scale.head_cpus
        else:
            cpus = gpus * scale.cpus_per_gpu if gpus else min(int(resources.get("CPU", 1)), 1)
        resources.update(CPU=cpus, GPU=gpus, object_store_memory=scale.object_store_mb << 20)
        fake = {"resources": resources, "node_config": {},
                "labels": {NODE_TYPE_LABEL: name}}
        if name == head_name:
            fake["max_workers"] = 0
        else:
            fake.update(min_workers=node_type.get("min_workers", 0),
                        max_workers=node_type.get("max_workers", aws["max_workers"]))
        types[FAKE_HEAD_TYPE if name == head_name else name] = fake
    return {
        "cluster_name": f"{aws['cluster_name']}-fake",
        "max_workers": aws["max_workers"],
        "upscaling_speed": aws.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": scale.idle_timeout_minutes,
        # launch_multiple: a request for N nodes starts N, as on EC2 (the fake provider's
        # default starts one per request, whatever N, and the autoscaler then asks again)
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address,
                     "launch_multiple": True, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": types,
        "head_node_type": FAKE_HEAD_TYPE,
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def node_type_of(labels: dict[str, str]) -> str:
    """The cluster.yaml type a fake node plays, from its labels (`ray.nodes()[i]["Labels"]`)."""
    return labels.get(NODE_TYPE_LABEL, "?")
