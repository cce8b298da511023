"""Weights directories for air-gapped clusters: the file in DIR is the one loaded, `python -m
orchestrator.weights fetch/check`, and the sweep's --weights-dir. Never touches the network:
"downloads" come from a local mirror folder (file://) or an http.server on 127.0.0.1."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

from orchestrator.models import classifier, weights
from orchestrator.sweep import __main__ as sweep_cli
from orchestrator.sweep import runner as sweep_runner
from orchestrator.errors import ConfigError, WeightsUnavailable
from orchestrator.models.classifier import BACKBONES, build_model

ROOT = Path(__file__).resolve().parents[1]
BB = BACKBONES["mobilenetv3small"]  # the smallest pretrainable backbone
RES = BB.min_resolution
FAKE = b"not really ImageNet weights\n" * 64  # what the local mirror serves in CLI tests
FAKE_MD5 = hashlib.md5(FAKE).hexdigest()


@pytest.fixture(autouse=True)
def _never_download(private_keras_home):
    return private_keras_home


def _backbone_weights(model: keras.Model) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.get_layer("backbone").get_weights()]


@pytest.fixture(scope="module")
def donor(tmp_path_factory):
    """A weights dir holding BB's file, in the legacy weights-only HDF5 layout of Keras's own
    ImageNet files, with seeded random values no initialiser produces; and those values."""
    directory = tmp_path_factory.mktemp("weights")
    base = classifier.keras_backbone(BB).constructor((RES, RES, 3), None)
    rng = np.random.default_rng(1234)
    values = [rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) for w in base.get_weights()]
    base.set_weights(values)
    with h5py.File(directory / BB.weights_file, "w") as f:
        save_weights_to_hdf5_group(f, base)
    return directory, values


def _assert_loaded(model: keras.Model, expected: list[np.ndarray]) -> None:
    got = _backbone_weights(model)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


# --- the file in the weights dir is the one loaded -----------------------------------------------


def test_file_in_weights_dir_is_the_one_loaded_by_its_values(donor):
    directory, expected = donor
    with h5py.File(directory / BB.weights_file, "r") as f:  # the keras.applications layout
        assert "layer_names" in f.attrs and "model_weights" not in f
    _assert_loaded(build_model(BB.name, 3, RES, weights="imagenet", weights_dir=directory),
                   expected)
    fresh = _backbone_weights(build_model(BB.name, 3, RES, weights="none"))
    assert sum(not np.array_equal(f, e) for f, e in zip(fresh, expected)) > len(expected) // 2


def test_file_in_env_weights_dir_is_the_one_loaded(donor, monkeypatch):
    directory, expected = donor
    monkeypatch.setenv("MEDSWEEP_WEIGHTS_DIR", str(directory))
    _assert_loaded(build_model(BB.name, 3, RES, weights="imagenet"), expected)


def test_missing_file_names_the_file_and_the_directory(tmp_path, monkeypatch):
    with pytest.raises(WeightsUnavailable) as err:
        build_model(BB.name, 3, RES, weights="imagenet", weights_dir=tmp_path)
    for part in (BB.weights_file, str(tmp_path), "--weights-dir"):
        assert part in str(err.value)
    monkeypatch.setenv("MEDSWEEP_WEIGHTS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(WeightsUnavailable, match=r"\$MEDSWEEP_WEIGHTS_DIR") as err:
        build_model(BB.name, 3, RES, weights="imagenet")
    assert BB.weights_file in str(err.value) and str(tmp_path / "nowhere") in str(err.value)


# --- fetch / check: the functions ----------------------------------------------------------------


@pytest.fixture
def mirror(tmp_path):
    """A folder laid out like Keras's download location: BB's file under its standard name."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / BB.weights_file).write_bytes(FAKE)
    return folder


@pytest.fixture
def fake_registry(monkeypatch):
    """BB with the md5 of the mirror's file: get_file's real md5 check then accepts it."""
    monkeypatch.setitem(BACKBONES, BB.name, dataclasses.replace(BB, weights_hash=FAKE_MD5))
    return BACKBONES[BB.name]


@pytest.fixture
def http_mirror(mirror):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(weights.STAGING_PREFIX)]


def test_fetch_from_a_mirror_skips_good_files_and_replaces_corrupt_ones(
        tmp_path, mirror, fake_registry, http_mirror):
    out = tmp_path / "out" / "weights"  # created by fetch
    lines = []
    (got,) = weights.fetch_weights([BB.name], out, source=str(mirror), log=lines.append)
    target = out / BB.weights_file
    assert got.status == "fetched" and got.path == str(target) and got.size == len(FAKE)
    assert target.read_bytes() == FAKE and not _leftovers(out)
    assert BB.weights_file in lines[0] and "fetched" in lines[0]

    before = target.stat().st_mtime_ns
    (got,) = weights.fetch_weights([BB.name], out, source=http_mirror, log=lines.append)
    assert got.status == "present" and target.stat().st_mtime_ns == before

    target.write_bytes(FAKE[:100])  # truncated copy
    (seen,) = weights.check_weights([BB.name], out)
    assert seen.status == "corrupt" and seen.md5 == hashlib.md5(FAKE[:100]).hexdigest()
    (got,) = weights.fetch_weights([BB.name], out, source=http_mirror, log=lines.append)
    assert got.status == "replaced" and target.read_bytes() == FAKE and not _leftovers(out)
    assert [w.status for w in weights.check_weights(None, out) if w.backbone == BB.name] == [
        "present"]


def test_a_download_with_the_wrong_md5_leaves_no_file_under_the_final_name(tmp_path, mirror):
    out = tmp_path / "out"  # the real registry md5: the mirror's bytes are not ImageNet's
    with pytest.raises(WeightsUnavailable) as err:
        weights.fetch_weights([BB.name], out, source=mirror.as_uri(), log=lambda _: None)
    message = str(err.value)
    assert BB.weights_file in message and str(out) in message and "hash" in message
    assert list(out.iterdir()) == []


def test_check_lists_present_missing_and_corrupt_without_network(tmp_path):
    (tmp_path / BB.weights_file).write_bytes(b"garbage")
    found = {w.backbone: w.status for w in weights.check_weights(None, tmp_path)}
    assert found == {"resnet50": "missing", "densenet121": "missing",
                     "efficientnetb0": "missing", BB.name: "corrupt"}
    with pytest.raises(ConfigError, match="nowhere"):
        weights.check_weights(None, tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="baseline_cnn has no ImageNet weights"):
        weights.select_backbones(["baseline_cnn"])


def test_unwritable_directory_is_refused_by_name(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="not writable") as err:
        weights.fetch_weights([BB.name], blocker / "weights", log=lambda _: None)
    assert str(blocker / "weights") in str(err.value)


# --- the CLI --------------------------------------------------------------------------------------

# The real `python -m orchestrator.weights` entry point, after swapping BB's md5 in the registry
# for the md5 of the mirror's file (the first argument): no real ImageNet file has that md5.
_WITH_FAKE_MD5 = (
    "import dataclasses, sys\n"
    "from orchestrator.models import classifier, weights\n"
    "bb = classifier.BACKBONES[{name!r}]\n"
    "classifier.BACKBONES[bb.name] = dataclasses.replace(bb, weights_hash=sys.argv.pop(1))\n"
    "sys.exit(weights.main(sys.argv[1:]))\n"
).format(name=BB.name)


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MEDSWEEP_WEIGHTS_DIR", None)
    return env


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=120)


def _stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr without TensorFlow's start-up chatter (absl/oneDNN lines before logging is set)."""
    noise = ("WARNING: All log messages", "I0000", "W0000", "E0000", "To enable the following")
    return [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(noise)]


def test_fetch_cli_writes_the_standard_name_then_skips_it(tmp_path, mirror):
    out = tmp_path / "weights"
    args = ["-c", _WITH_FAKE_MD5, FAKE_MD5, "fetch", "--backbones", BB.name, "--source",
            mirror.as_uri(), "weights"]  # relative DIR, after --backbones
    first = _run(args, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    target = out / BB.weights_file
    assert target.read_bytes() == FAKE and os.listdir(out) == [BB.weights_file]
    assert f"{BB.name}" in first.stdout and "fetched" in first.stdout
    assert str(target) in first.stdout and "1.8 kB" in first.stdout
    assert f"--weights-dir {out}" in first.stdout
    assert f"MEDSWEEP_WEIGHTS_DIR={out}" in first.stdout

    before = target.stat().st_mtime_ns
    second = _run(args, tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "present (md5 ok)" in second.stdout and "fetched" not in second.stdout
    assert target.stat().st_mtime_ns == before


def test_corrupt_file_is_reported_by_check_and_refetched(tmp_path, mirror, fake_registry, capsys):
    out = tmp_path / "weights"
    out.mkdir()
    (out / BB.weights_file).write_bytes(b"half a download")
    assert weights.main(["check", "--backbones", BB.name, str(out)]) == 1
    captured = capsys.readouterr()
    assert "CORRUPT" in captured.out and BB.weights_file in captured.out
    assert f"fetch {out}" in captured.err
    assert weights.main(["fetch", "--backbones", BB.name, "--source", str(mirror), str(out)]) == 0
    assert "re-fetched (was corrupt)" in capsys.readouterr().out
    assert (out / BB.weights_file).read_bytes() == FAKE
    assert weights.main(["check", "--backbones", BB.name, str(out)]) == 0
    assert "present (md5 ok)" in capsys.readouterr().out


def test_fetch_cli_unknown_backbone_exits_2_with_one_line(tmp_path):
    proc = _run(["-m", "orchestrator.weights", "fetch", "--backbones", "resnet5O",
                 "mobilenetv3small", str(tmp_path / "w")], tmp_path)
    assert proc.returncode == 2
    (line,) = _stderr_lines(proc)
    assert line.startswith("error: unknown backbone 'resnet5O'") and "mobilenetv3small" in line
    assert not (tmp_path / "w").exists()


def test_fetch_cli_download_failure_exits_2_naming_the_file(tmp_path, mirror, capsys):
    out = tmp_path / "w"
    code = weights.main(["fetch", "--backbones", BB.name, "--source", str(mirror), str(out)])
    assert code == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert line.startswith("error: mobilenetv3small: could not fetch") and BB.weights_file in line
    assert list(out.iterdir()) == []


# --- the sweep's --weights-dir -------------------------------------------------------------------


def test_sweep_cli_refuses_a_missing_weights_dir_before_ray_starts(tmp_path, monkeypatch, capsys,
                                                                  own_ray):
    import ray

    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no-such-weights"
    assert sweep_cli.main(["brain", "--profile", "smoke", "--weights-dir", str(missing)]) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert line.startswith("error: weights directory") and str(missing) in line
    assert not ray.is_initialized()
    assert [p.name for p in tmp_path.iterdir()] == ["keras_home"]  # no runs/, no mlflow/

    monkeypatch.setenv("MEDSWEEP_WEIGHTS_DIR", str(missing))
    with pytest.raises(ConfigError, match=r"\$MEDSWEEP_WEIGHTS_DIR"):
        sweep_runner.run_sweep("brain", profile="smoke", log=lambda _: None)
    assert not ray.is_initialized()


def test_sweep_weights_dir_is_absolute_and_falls_back_to_the_drivers_env(tmp_path, monkeypatch):
    from orchestrator.sweep.inputs import weights_dir_for

    monkeypatch.chdir(tmp_path)
    (tmp_path / "w").mkdir()
    assert weights_dir_for("w") == str(tmp_path / "w")
    assert weights_dir_for(None) is None
    monkeypatch.setenv("MEDSWEEP_WEIGHTS_DIR", "w")
    assert weights_dir_for(None) == str(tmp_path / "w")
    assert sweep_cli._parser().parse_args(["brain", "--weights-dir", "w"]).weights_dir == "w"
