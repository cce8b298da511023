"""cluster.yaml: Ray's own validator accepts it, and it keeps the cluster's safety properties.

Offline and fast: no AWS call, no network, no Ray cluster. `prepare_config` only merges the AWS
provider's defaults.yaml (a file inside Ray) and needs no boto3; the AWS bootstrap that talks to
EC2 (`ray up`) is never run. Ray's default security-group rules come from the pure functions in
ray/autoscaler/_private/aws/config.py; that module imports boto3 (not a project dependency), so
without boto3 the functions are compiled from Ray's installed source instead of imported.
"""
from __future__ import annotations

import ast
import copy
import itertools
import re
import tomllib
from pathlib import Path

import pytest
import yaml

import ray.autoscaler
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
WORLD = frozenset({"0.0.0.0/0", "::/0"})


# ------------------------------------------------------------------------------------- helpers
def load_cluster_config(path: Path = CLUSTER_YAML) -> dict:
    return yaml.safe_load(path.read_text())


def ray_validate(config: dict) -> dict:
    """Ray's own check, as `ray up` does it: defaults merged, then the schema and its rules."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def world_exposed(ip_permissions: list[dict]) -> list[str]:
    """Every inbound rule reachable from the whole internet other than TCP port 22 alone.

    A rule is world-reachable when one of its IpRanges/Ipv6Ranges is 0.0.0.0/0 or ::/0. It is
    allowed only as tcp (or 6) with FromPort == ToPort == 22; protocol -1 (all traffic), a port
    range, a missing port or any other port is reported, as "proto from-to cidr".
    """
    found = []
    for rule in ip_permissions:
        cidrs = [r.get("CidrIp") for r in rule.get("IpRanges", [])]
        cidrs += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
        for cidr in (c for c in cidrs if c in WORLD):
            proto = str(rule.get("IpProtocol", "-1")).lower()
            ports = (rule.get("FromPort"), rule.get("ToPort"))
            if not (proto in ("tcp", "6") and ports == (22, 22)):
                found.append(f"{proto} {ports[0]}-{ports[1]} {cidr}")
    return found


_RAY_RULE_FUNCTIONS = ("_create_default_inbound_rules",
                       "_create_default_intracluster_inbound_rules",
                       "_create_default_ssh_inbound_rules")


def ray_inbound_rules(sgids: set[str], extended_rules: list[dict]) -> list[dict]:
    """The IpPermissions Ray authorizes on a security group it created (default + config)."""
    try:
        from ray.autoscaler._private.aws.config import _create_default_inbound_rules
    except ImportError:  # boto3 missing: the three functions are pure, compile them from source
        source = Path(ray.autoscaler.__file__).parent / "_private" / "aws" / "config.py"
        tree = ast.parse(source.read_text())
        functions = [node for node in tree.body
                     if isinstance(node, ast.FunctionDef) and node.name in _RAY_RULE_FUNCTIONS]
        missing = set(_RAY_RULE_FUNCTIONS) - {f.name for f in functions}
        assert not missing, f"Ray's AWS security-group code changed: {missing} not in {source}"
        namespace = {"itertools": itertools}
        exec(compile(ast.Module(body=functions, type_ignores=[]), str(source), "exec"), namespace)
        _create_default_inbound_rules = namespace["_create_default_inbound_rules"]
    return _create_default_inbound_rules(sgids, extended_rules)


def all_commands(config: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    commands = [c for key in keys for c in config.get(key) or []]
    for node_type in config["available_node_types"].values():
        for key in ("initialization_commands", "worker_setup_commands"):
            commands += node_type.get(key) or []
    return commands


@pytest.fixture(scope="module")
def raw() -> dict:
    return load_cluster_config()


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    return ray_validate(raw)


# ---------------------------------------------------------------------------- Ray's validator
def test_cluster_yaml_passes_rays_validator(raw):
    try:
        prepared = ray_validate(raw)
    except Exception as err:  # noqa: BLE001 -- show Ray's own message
        pytest.fail(f"Ray rejects cluster.yaml: {type(err).__name__}: {err}")
    assert prepared["provider"]["type"] == "aws"
    assert set(prepared["available_node_types"]) == set(raw["available_node_types"])


def _without_node_config(cfg):
    del cfg["available_node_types"]["worker.gpu1"]["node_config"]


def _unknown_top_level_key(cfg):
    cfg["worker_nodes_extra"] = {}


def _unknown_security_group_key(cfg):
    cfg["provider"]["security_group"]["OpenEverything"] = True


def _head_type_not_defined(cfg):
    cfg["head_node_type"] = "no.such.type"


def _min_workers_over_max(cfg):
    cfg["available_node_types"]["worker.gpu1"]["min_workers"] = cfg["max_workers"] + 1


@pytest.mark.parametrize("break_it", [_without_node_config, _unknown_top_level_key,
                                      _unknown_security_group_key, _head_type_not_defined,
                                      _min_workers_over_max])
def test_validator_rejects_a_broken_config(raw, break_it):
    import jsonschema

    bad = copy.deepcopy(raw)
    break_it(bad)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_validate(bad)


# ---------------------------------------------------------------------------------- node types
def test_cpu_head_and_two_gpu_worker_types(prepared):
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] > 0
    workers = {name: t for name, t in types.items() if name != prepared["head_node_type"]}
    assert sorted(t["resources"]["GPU"] for t in workers.values()) == [1, 4]
    for name, node_type in workers.items():
        assert {"min_workers", "max_workers"} <= set(node_type), name
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= prepared["max_workers"]
    assert prepared["idle_timeout_minutes"] > 0


def test_every_node_has_an_instance_profile_for_the_bucket(raw):
    """Tune uploads checkpoints to --storage-path s3://... from the worker that runs the trial."""
    for name, node_type in raw["available_node_types"].items():
        assert "Arn" in node_type["node_config"].get("IamInstanceProfile", {}), name


# ---------------------------------------------------------------------------- security group
def test_world_exposed_flags_everything_but_ssh():
    ssh = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    office = {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265,
              "IpRanges": [{"CidrIp": "203.0.113.0/24"}]}
    group = {"IpProtocol": "-1", "FromPort": -1, "ToPort": -1,
             "UserIdGroupPairs": [{"GroupId": "sg-0123"}]}
    assert world_exposed([ssh, office, group]) == []

    dashboard = {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265,
                 "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    everything = {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    mlflow_v6 = {"IpProtocol": "tcp", "FromPort": 5000, "ToPort": 5000,
                 "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
    range_with_22 = {"IpProtocol": "tcp", "FromPort": 20, "ToPort": 25,
                     "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    udp_22 = {"IpProtocol": "udp", "FromPort": 22, "ToPort": 22,
              "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    assert world_exposed([ssh, dashboard, everything, mlflow_v6, range_with_22, udp_22]) == [
        "tcp 8265-8265 0.0.0.0/0", "-1 None-None 0.0.0.0/0", "tcp 5000-5000 ::/0",
        "tcp 20-25 0.0.0.0/0", "udp 22-22 0.0.0.0/0"]

    bad = copy.deepcopy(load_cluster_config())
    bad["provider"]["security_group"]["IpPermissions"] = [dashboard]
    ray_validate(bad)  # the schema allows it: only this check catches it
    assert world_exposed(bad["provider"]["security_group"]["IpPermissions"])


def test_only_ssh_is_open_to_the_internet(prepared):
    group = prepared["provider"]["security_group"]
    extended = group.get("IpPermissions", [])
    assert world_exposed(extended) == []
    # What Ray actually authorizes on the group it creates: its defaults plus ours.
    rules = ray_inbound_rules({"sg-cluster"}, extended)
    assert world_exposed(rules) == []
    assert any(r.get("FromPort") == r.get("ToPort") == 22 and
               {"CidrIp": "0.0.0.0/0"} in r.get("IpRanges", []) for r in rules)
    # Intra-cluster traffic (GCS, object manager, raylets) stays open within the group.
    assert any(r["IpProtocol"] == "-1" and {"GroupId": "sg-cluster"} in r.get("UserIdGroupPairs", [])
               for r in rules)
    # Our extra rules must not duplicate Ray's SSH rule: AWS rejects a duplicate permission.
    default_ssh = ray_inbound_rules(set(), [])[-1]
    assert default_ssh not in extended
    # With SecurityGroupIds in a node_config Ray would skip its group (and these rules).
    for name, node_type in prepared["available_node_types"].items():
        assert "SecurityGroupIds" not in node_type["node_config"], name


# ------------------------------------------------------------------------ token authentication
def test_ray_reads_the_auth_mode_from_ray_auth_mode():
    """The mechanism the config relies on exists in the installed Ray."""
    from ray._private.authentication.authentication_token_setup import (
        AUTH_MODE_ENV_VAR, _get_default_token_path)

    assert AUTH_MODE_ENV_VAR == "RAY_AUTH_MODE"
    assert _get_default_token_path() == Path.home() / ".ray" / "auth_token"


_TOKEN_MODE = re.compile(r"(^|[\s;&])(export\s+)?RAY_AUTH_MODE=token\b")


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_token_auth_on_every_ray_start(prepared, key):
    starts = [c for c in prepared[key] if re.search(r"\bray start\b", c)]
    assert starts, f"no `ray start` in {key}"
    for command in starts:
        mode = _TOKEN_MODE.search(command)
        assert mode and mode.start() < command.index("ray start"), command


def test_token_reaches_every_node_and_is_never_disabled(prepared):
    mounts = {k.rstrip("/"): v for k, v in prepared["file_mounts"].items()}
    assert mounts.get("~/.ray/auth_token") == "~/.ray/auth_token"
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"RAY_AUTH_MODE=(?!token\b)", text)
    assert not re.search(r"RAY_AUTH_TOKEN\s*[=:]", text), "a token value in cluster.yaml"


# --------------------------------------------------------------------- install and MLflow server
def test_setup_installs_the_project_with_its_constraints(prepared):
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    mount = {v: k for k, v in prepared["file_mounts"].items()}.get(".")
    assert mount, "the repository ('.') is not mounted"
    installs = [c for c in all_commands(prepared) if "pip install" in c]
    assert installs
    for command in installs:
        assert re.search(r"(-c|--constraint)\s+constraints\.txt\b", command), command
        assert f"cd {mount}" in command, command  # constraints.txt resolves in the mounted repo
        for used in re.findall(r"\.\[([\w,-]+)\]", command):
            assert set(used.split(",")) <= set(extras), command
    project = [c for c in prepared["setup_commands"] if "-e '.[gpu]'" in c]
    assert project, "setup_commands do not install the project with the gpu extra"
    # Ray's rsync keeps the local .venv, runs/ and the MLflow store out of the nodes.
    assert ".gitignore" in prepared["rsync_filter"]


def test_mlflow_server_on_the_head_bound_to_loopback(prepared):
    head = prepared["head_setup_commands"] + prepared["head_start_ray_commands"]
    servers = [c for c in head if "mlflow/start-server.sh" in c]
    assert len(servers) == 1
    server = servers[0]
    assert re.search(r"\bMEDSWEEP_MLFLOW_HOST=127\.0\.0\.1\b", server)
    assert "nohup" in server and re.search(r"&\s*(fi\s*)?$", server)
    assert "MEDSWEEP_MLFLOW_ALLOW_REMOTE" not in server
    workers = prepared["worker_setup_commands"] + prepared["worker_start_ray_commands"]
    assert not any("start-server.sh" in c for c in workers)
    for command in all_commands(prepared):
        assert "0.0.0.0" not in command and "::/0" not in command, command
    dashboard = [c for c in prepared["head_start_ray_commands"] if "ray start --head" in c]
    assert dashboard and all("--dashboard-host=127.0.0.1" in c for c in dashboard)


# ------------------------------------------------------------- the cluster, simulated locally
def test_fake_cluster_keeps_node_types_gpus_and_worker_limits(raw):
    """bench/fake_cluster.py runs this config: the same cluster as cluster.yaml for the
    autoscaler (types, GPUs, min/max), shrunk to one machine, under Ray's fake provider."""
    from orchestrator.fake_cluster import FAKE_HEAD_TYPE, NODE_TYPE_LABEL, fake_cluster_config

    fake = fake_cluster_config(raw, "127.0.0.1:6399")
    assert fake["provider"]["type"] == "fake_multinode"
    assert fake["provider"]["gcs_address"] == "127.0.0.1:6399"
    assert fake["provider"]["launch_multiple"] is True  # N nodes asked for, N started
    assert fake["max_workers"] == raw["max_workers"]
    assert 0 < fake["idle_timeout_minutes"] < raw["idle_timeout_minutes"]
    head = raw["head_node_type"]
    assert fake["head_node_type"] == FAKE_HEAD_TYPE
    names = {FAKE_HEAD_TYPE if name == head else name for name in raw["available_node_types"]}
    assert set(fake["available_node_types"]) == names
    for name, node_type in raw["available_node_types"].items():
        twin = fake["available_node_types"][FAKE_HEAD_TYPE if name == head else name]
        assert twin["labels"][NODE_TYPE_LABEL] == name
        aws, local = node_type["resources"], twin["resources"]
        assert local["GPU"] == aws.get("GPU", 0)
        assert 1 <= local["CPU"] <= aws["CPU"]
        assert 75 << 20 <= local["object_store_memory"] <= 1 << 30
        if name == head:
            assert twin["max_workers"] == 0 and local["GPU"] == 0
        else:
            assert (twin["min_workers"], twin["max_workers"]) == (
                node_type["min_workers"], node_type["max_workers"])
            assert local["GPU"] > 0 and local["CPU"] == local["GPU"]  # one trial slot per GPU


def test_fake_cluster_config_is_one_rays_autoscaler_accepts(raw):
    """What the fake provider needs from the installed Ray: its head type's name, its
    provider registered, the config valid by Ray's schema (the check the autoscaler makes on
    every read; `prepare_config` is not used: the wheel lacks the fake provider's defaults
    file), the node labels valid."""
    from ray._private.label_utils import validate_node_labels
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE
    from ray.autoscaler._private.providers import _NODE_PROVIDERS

    from orchestrator.fake_cluster import FAKE_HEAD_TYPE, FakeScale, fake_cluster_config

    assert FAKE_HEAD_TYPE == FAKE_HEAD_NODE_TYPE
    assert "fake_multinode" in _NODE_PROVIDERS
    fake = fake_cluster_config(raw, "127.0.0.1:6399", FakeScale(cpus_per_gpu=2))
    validate_config(fake)
    for node_type in fake["available_node_types"].values():
        validate_node_labels(node_type["labels"])
    assert fake["available_node_types"]["worker.gpu4"]["resources"]["CPU"] == 8
