"""A hospital's DICOM export end to end: a folder of DICOM files (the brain DICOM phantom: 12-bit
values behind a window, some MONOCHROME1, RLE or without extension, one structured report) with
a `labels.csv`, swept (smoke, one trial), ensembled, registered and served over HTTP; then no
patient identifier from the headers anywhere in what MedSweep recorded or printed."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pydicom
import pytest

from orchestrator.clinical.calibration import apply_temperature
from orchestrator.data.dataset import prepare_dataset
from orchestrator.data.dicom import is_dicom_file
from orchestrator.data.phantoms import write_phantom
from orchestrator.sweep.runner import run_sweep
from orchestrator.tta.policies import get_policy
from orchestrator.tta.predict import tta_predict
from tasks import get_task

from test_ensemble_build import _member_file, _model_server

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
MODEL = "models:/medsweep-folder@candidate"
# 20 images a class (80 in all): the report is 1 of 21 files of its class, within the 5% rule
PER_CLASS = 20
# A window other than the files' own: the served answers match only if the server reads the
# window the sweep recorded (the export's files all carry a window of their own)
WINDOW = "auto"
OVERRIDES = {"resolution": 32, "epochs": 1, "lr_multiplier": 10.0, "dicom_window": WINDOW}
IDENTIFYING = ("PatientName", "PatientID", "AccessionNumber", "PatientBirthDate",
               "InstitutionName")


class _CapturedFds:
    """Everything printed while inside: Python's stdout and stderr, and file descriptors 1 and
    2 (the C++ below, what Ray forwards from its workers), appended to `path`, kept in `text`."""

    def __init__(self, path: Path):
        self.path, self.text = path, ""

    def __enter__(self):
        self.file = open(self.path, "ab")  # append mode: both writers add at the end
        self.stream = open(self.path, "a", buffering=1, encoding="utf-8")
        self.saved = [os.dup(1), os.dup(2)]
        for fd in (1, 2):
            os.dup2(self.file.fileno(), fd)
        self.python = contextlib.ExitStack()
        self.python.enter_context(contextlib.redirect_stdout(self.stream))
        self.python.enter_context(contextlib.redirect_stderr(self.stream))
        return self

    def __exit__(self, *exc):
        self.python.close()
        for fd, saved in zip((1, 2), self.saved):
            os.dup2(saved, fd)
            os.close(saved)
        self.stream.close()
        self.file.close()
        self.text = self.path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture(scope="module")
def dicom_swept(tmp_path_factory):
    """The export with its labels.csv, and one smoke sweep on it (one trial, holdout choice)
    with its ensemble registered as medsweep-folder@candidate; the console it printed."""
    root = tmp_path_factory.mktemp("dicom-sweep")
    export = write_phantom(get_task("brain"), root / "export", per_class=PER_CLASS, size=48,
                           fmt="dicom")
    files = sorted(p for p in export.rglob("*") if p.is_file() and is_dicom_file(p))
    pd.DataFrame({"path": [p.relative_to(export).as_posix() for p in files],
                  "label": [p.parent.name for p in files]}).to_csv(export / "labels.csv",
                                                                   index=False)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with _CapturedFds(root / "console.txt") as console:
        result = run_sweep("folder", data_dir=str(export), profile="smoke", num_samples=1,
                           max_epochs=1, cv_folds=0, storage_path=str(root / "runs"),
                           tracking_uri=uri, space_overrides=OVERRIDES)
    yield result, uri, root, export, console.text


def _test_split(export: Path):
    return prepare_dataset(get_task("folder").with_dicom(WINDOW, -1), export, 32,
                           log=lambda _: None)


def test_a_dicom_export_is_swept_ensembled_and_served_with_the_same_numbers(dicom_swept,
                                                                            tmp_path):
    result, uri, _, export, console = dicom_swept
    report = result.ensemble
    assert report is not None and report.members
    assert "1 of 81 images left out before splitting (1 unreadable)" in console
    assert "DICOM object without pixel data (structured report)" in console
    assert "grouped by patient" in console
    # decisions per patient: the rule chosen on held-out patients, figures per patient
    assert re.search(r"per patient: \d+ test groups of \d+ images, combined by (mean|max) "
                     r"\(chosen on validation groups\)", report.patient_line), report.patient_line
    client = mlflow.MlflowClient(uri)
    per_patient = pd.read_csv(client.download_artifacts(report.run_id,
                                                        "test_metrics_per_patient.csv",
                                                        str(tmp_path)))
    assert len(per_patient) > 0
    html = Path(client.download_artifacts(report.run_id, "report.html", str(tmp_path)))
    assert "per patient" in html.read_text().lower()
    mlflow.set_tracking_uri(uri)
    served_model = mlflow.pyfunc.load_model(MODEL).unwrap_python_model()
    assert served_model.spec["preprocessing"]["dicom_window"] == WINDOW  # recorded, then used
    data = _test_split(export)
    paths, x_test = data.paths("test"), data.arrays("test")[0]
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    # what is served covers the export's quirks: MONOCHROME1, RLE, no file extension
    assert any(h.PhotometricInterpretation == "MONOCHROME1" for h in headers)
    assert any(h.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless for h in headers)
    assert any(Path(p).suffix == "" for p in paths)
    transforms, expected = get_policy(report.policy), 0
    for i, (member, weight) in enumerate(zip(report.members, report.weights)):
        model = keras.models.load_model(_member_file(uri, result, member, tmp_path / str(i)))
        expected = expected + weight * tta_predict(model, x_test, transforms)
    calibrated = apply_temperature(expected, report.temperature)
    encoded = [base64.b64encode(Path(p).read_bytes()).decode() for p in paths]
    payload = {"dataframe_split": {"columns": ["image"], "data": [[e] for e in encoded]}}
    with _model_server(uri, MODEL, payload) as (port, status, answer):
        assert status == 200, answer
        # docs/serving.md's DICOM example, run as written (only the port differs)
        (block,) = re.findall(r"<!-- dicom-example -->\n```bash\n(.*?)```",
                              (ROOT / "docs" / "serving.md").read_text(), re.S)
        (tmp_path / "scan.dcm").write_bytes(Path(paths[0]).read_bytes())
        proc = subprocess.run(["bash", "-euc", block.replace("localhost:5001",
                                                             f"localhost:{port}")],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        (row,) = json.loads(proc.stdout)["predictions"]
        first = answer["predictions"][0]  # alone, not in a batch: the same to float32 noise
        assert row["decision"] == first["decision"] and row.keys() == first.keys()
        np.testing.assert_allclose([row[k] for k in first if k.startswith("prob_")],
                                   [first[k] for k in first if k.startswith("prob_")], atol=1e-6)
    served = pd.DataFrame(answer["predictions"])
    probs = [f"prob_{c}" for c in data.task.classes]
    np.testing.assert_allclose(served[probs].to_numpy(), calibrated, atol=1e-5)
    assert served["decision"].tolist() == [data.task.classes[k]
                                           for k in calibrated.argmax(axis=1)]


def _forms(value: str) -> list[bytes]:
    """How an identifier could sit in a file: as written, with `^` as spaces, a date as
    YYYY-MM-DD."""
    texts = {value, value.replace("^", " ")}
    if re.fullmatch(r"\d{8}", value):
        texts.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
    return [t.encode() for t in texts]


def _hits(data: bytes, needles: dict[str, list[bytes]]) -> set[str]:
    """The identifiers that occur in `data` as whole tokens (not inside a number); in text,
    also inside base64 runs (a DICOM file posted or stored as base64), decoded first."""
    found = set()
    for blob in [data, *(_decoded(data) if _is_text(data) else [])]:
        for value, forms in needles.items():
            for form in forms:
                at = blob.find(form)
                while at >= 0 and not _token(blob, at, len(form)):
                    at = blob.find(form, at + 1)
                if at >= 0:
                    found.add(value)
    return found


def _decoded(data: bytes) -> list[bytes]:
    """Every run of 16+ base64 characters, decoded at each of the four alignments."""
    out = []
    for run in re.findall(rb"[A-Za-z0-9+/]{16,}", data):
        for k in range(4):
            chunk = run[k:]
            out.append(base64.b64decode(chunk[:len(chunk) // 4 * 4]))
    return out


def _is_our_source(path: Path) -> bool:
    """A copy of one of this checkout's own files (the served model bundles the code, whose
    phantom writer names its fake institution): MedSweep's text, not the data's."""
    parts = path.parts
    if "code" not in parts:
        return False
    mine = ROOT.joinpath(*parts[len(parts) - parts[::-1].index("code"):])
    return mine.is_file() and mine.read_bytes() == path.read_bytes()


def _token(data: bytes, at: int, size: int) -> bool:
    before, after = data[at - 1:at] if at else b"", data[at + size:at + size + 1]
    return not (before.isalnum() or before == b".") and not after.isdigit()


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_no_patient_identifier_reaches_mlflow_the_artifacts_the_console_or_predict(
        dicom_swept, tmp_path, capfd):
    from orchestrator.predict import main as predict_main

    result, uri, root, export, console = dicom_swept
    cases = tmp_path / "cases"
    cases.mkdir()
    images = [p for p in sorted(export.rglob("*")) if p.is_file() and is_dicom_file(p)][:6]
    assert any(p.name.endswith("_report") for p in images)
    for i, p in enumerate(images):
        (cases / f"case{i}{p.suffix}").write_bytes(p.read_bytes())
    out = tmp_path / "predictions.csv"
    assert predict_main([MODEL, str(cases), "--out", str(out), "--tracking-uri", uri]) == 0
    printed = capfd.readouterr()
    needles = {}
    for p in export.rglob("*"):
        if p.is_file() and is_dicom_file(p):
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            needles.update({str(ds.get(k)): _forms(str(ds.get(k))) for k in IDENTIFYING
                            if ds.get(k)})
    assert len(needles) > 50  # names, ids, accessions, dates and the institution
    # the search finds them where they are: in the files written, even base64-encoded
    ds = pydicom.dcmread(images[0])
    mine = {str(ds.get(k)) for k in IDENTIFYING}
    assert _hits(images[0].read_bytes(), needles) == mine
    assert _hits(base64.b64encode(images[0].read_bytes()), needles) == mine
    # MLflow's records: params, tags, names, descriptions; models and versions
    client = mlflow.MlflowClient(uri)
    texts = []
    for experiment in client.search_experiments():
        texts += [experiment.name, *experiment.tags.values()]
        for run in client.search_runs([experiment.experiment_id], max_results=10_000):
            texts += [run.info.run_name or "", *run.data.params, *run.data.params.values(),
                      *run.data.tags, *run.data.tags.values()]
    for model in client.search_registered_models():
        texts += [model.name, model.description or "", *model.tags.values()]
        for version in client.search_model_versions(f"name='{model.name}'"):
            texts += [version.description or "", *version.tags.values(), version.source]
    assert len(texts) > 100
    assert _hits("\n".join(texts).encode(), needles) == set()
    # every file MedSweep wrote: the artifact store, the tracking database, Ray's trial folders
    # and the cache's reports (not the export itself, nor the copies predicted on)
    written = [p for p in root.rglob("*") if p.is_file() and export not in p.parents]
    cache = Path(os.environ["MEDSWEEP_CACHE"])  # its manifests and reports (its pixel arrays
    written += [p for part in ("manifests", "reports")  # hold decoded pixels only)
                for p in (cache / part).rglob("*") if p.is_file()]
    written += [out, *tmp_path.glob("predictions*.csv")]
    assert any(p.suffix == ".keras" for p in written) and any(p.suffix == ".db" for p in written)
    written = [p for p in written if not _is_our_source(p)]
    leaks = {str(p): _hits(p.read_bytes(), needles) for p in written}
    assert {p: v for p, v in leaks.items() if v} == {}
    # what the sweep, the build and predict printed
    assert _hits((console + printed.out + printed.err).encode(), needles) == set()
    # the report among the cases is listed with its reason, not predicted
    assert len(pd.read_csv(out)) == len(images) - 1
    assert "structured report" in (tmp_path / "predictions_unreadable.csv").read_text()
