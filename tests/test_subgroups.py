"""Subgroup performance (`--subgroup`): the values read from a CSV, HAM10000's metadata and DICOM
headers, recorded with the split, measured per value in the report with a flag for a value
whose interval lies below the overall figure, and never read by any choice."""
from __future__ import annotations

from html import unescape

import numpy as np
import pandas as pd
import pytest

from orchestrator.clinical.evaluate import ClinicalInputs, ClinicalOptions, Member, evaluate
from orchestrator.clinical.subgroups import MIN_CASES, TOO_FEW, measure_subgroups
from orchestrator.data import subgroups as sg
from orchestrator.data.dicom_write import Header, write_dicom
from orchestrator.data.layouts import read_layout
from orchestrator.data.phantoms import write_phantom
from orchestrator.data.splits import read_manifest, write_manifest
from orchestrator.data.table import make_table
from orchestrator.errors import ConfigError, DataError
from tasks import get_task

SIZE = 32


def test_ages_fall_in_the_documented_bands_and_dicom_ages_are_read():
    assert [sg.age_band(a) for a in (0, 29.9, 30, 44, 45, 59.5, 60, 74, 75, 101)] == [
        "<30", "<30", "30-44", "30-44", "45-59", "45-59", "60-74", "60-74", "75+", "75+"]
    assert sg.age_band("") == sg.age_band("n/a") == sg.age_band(-1) == sg.UNKNOWN
    assert sg.dicom_age_years("045Y") == 45 and sg.dicom_age_years("006M") == 0.5
    assert sg.dicom_age_years("") is None and sg.dicom_age_years("45") is None


def _csv(tmp_path, n: int = 6) -> tuple:
    rows = pd.DataFrame({"path": [f"img{i}.png" for i in range(n)],
                         "label": ["a", "b"] * (n // 2), "Sex": ["F", "M", ""] * (n // 3),
                         "age": ["31", "80", ""] * (n // 3)})
    rows.to_csv(tmp_path / "labels.csv", index=False)
    return get_task("folder"), [str(tmp_path / p) for p in rows["path"]]


def test_a_csv_column_is_read_by_path_and_an_unknown_one_is_refused(tmp_path):
    task, paths = _csv(tmp_path)
    assert sg.layout_columns(task, tmp_path) == ("Sex", "age", *sg.DICOM_FIELDS)
    names = sg.check_columns(["sex", "AGE"], sg.layout_columns(task, tmp_path), "here")
    assert names == ("Sex", "age")
    values = sg.read_values(task, tmp_path, paths[::-1], names)
    assert values == {"Sex": ["unknown", "M", "F", "unknown", "M", "F"],
                      "age": ["unknown", "75+", "30-44", "unknown", "75+", "30-44"]}
    with pytest.raises(ConfigError, match=r"--subgroup site: not a column of here; available: "
                                          r"Sex, age, PatientSex, PatientAge, Manufacturer"):
        sg.check_columns(["site"], sg.layout_columns(task, tmp_path), "here")
    with pytest.raises(DataError, match="none of the 6 images is a DICOM file"):
        sg.read_values(task, tmp_path, paths, ["PatientSex"])


def test_an_unknown_column_is_refused_by_the_sweep_before_ray_starts(tmp_path):
    import ray

    from orchestrator.sweep.runner import run_sweep

    _csv(tmp_path)
    with pytest.raises(ConfigError, match=r"--subgroup scanner: not a column of .*; "
                                          r"available: Sex, age, PatientSex"):
        run_sweep("folder", data_dir=str(tmp_path), tracking_uri=f"file://{tmp_path}/mlruns",
                  clinical=ClinicalOptions(subgroups=("scanner",)))
    assert not ray.is_initialized()


def test_subgroups_travel_with_the_manifest_and_old_manifests_still_load(tmp_path):
    task, paths = _csv(tmp_path, 6)
    table = make_table([{"path": p, "label": "ab"[i % 2], "source_label": "ab"[i % 2],
                         "group": f"g{i}", "split": "test"} for i, p in enumerate(paths)])
    csv = write_manifest(table, tmp_path / "m", tmp_path, "fp", False)
    old, _ = read_manifest(csv)
    assert sg.recorded(old) == []
    counts = sg.record(csv, task, None, ["sex"], log=lambda _: None)
    assert counts == {"Sex": {"F": 2, "M": 2, "unknown": 2}}
    again, meta = read_manifest(csv)
    assert sg.recorded(again) == ["Sex"] and meta["fingerprint"] == "fp"
    assert dict(zip(again["path"], again["subgroup_Sex"]))[paths[0]] == "F"
    assert again[list(old.columns)].equals(old)  # the split itself untouched


def test_the_ham10000_metadata_gives_sex_age_band_and_localization(tmp_path):
    task = get_task("skin")
    root = write_phantom(task, tmp_path / "skin", per_class=4)
    assert sg.layout_columns(task, root)[:3] == ("sex", "age", "localization")
    scan = read_layout(task, root)
    paths = scan.table["path"].tolist()
    values = sg.read_values(task, root, paths, ["sex", "age", "localization"])
    meta = pd.read_csv(root / "HAM10000_metadata.csv", dtype=str).set_index("image_id")
    for i, path in enumerate(paths):
        row = meta.loc[path.rsplit("/", 1)[-1].removesuffix(".jpg")]
        assert values["sex"][i] == row["sex"] and values["localization"][i] == row["localization"]
        assert values["age"][i] == sg.age_band(float(row["age"]))
    assert set(values["age"]) <= {label for _, label in sg.AGE_BANDS}


def test_dicom_sex_age_and_manufacturer_are_read_from_the_headers(tmp_path):
    pixels = np.zeros((8, 8), np.uint8)
    files = [write_dicom(tmp_path / "a.dcm", pixels, header=Header(
                 patient_id="ID-1", patient_name="Doe^Jane", birth_date="19700101",
                 extra={"PatientSex": "F", "PatientAge": "052Y", "Manufacturer": "Acme"})),
             write_dicom(tmp_path / "b.dcm", pixels, header=Header(patient_id="ID-2")),
             write_dicom(tmp_path / "c.dcm", pixels, header=Header(
                 extra={"PatientSex": "M", "PatientAge": "018M"}))]
    values = sg.read_values(get_task("folder"), tmp_path, [str(f) for f in files],
                            sg.DICOM_FIELDS)
    assert values == {"PatientSex": ["F", "unknown", "M"],
                      "PatientAge": ["45-59", "unknown", "<30"],
                      "Manufacturer": ["Acme", "unknown", "unknown"]}
    assert "Doe" not in repr(values) and "ID-1" not in repr(values)


def test_a_value_with_too_few_cases_is_listed_not_measured():
    y = np.arange(60) % 2
    values = {"site": np.array(["big"] * 52 + ["small"] * (MIN_CASES - 2))}
    found = measure_subgroups(values, y, None, lambda idx: {"accuracy": float(
        np.mean(y[idx] == 1))}, ("accuracy",), 1000)
    assert found.too_few("site")["value"].tolist() == ["small"]
    assert found.too_few("site")["status"].tolist() == [TOO_FEW]
    assert found.measured("site")["n"].tolist() == [52]


# --- the report, on synthetic probabilities --------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from orchestrator.models.classifier import build_model

    model = build_model("baseline_cnn", 2, SIZE, weights="none", head_units=8, dropout=0.0)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return str(path)


def _women() -> np.ndarray:
    """Patients 0, 1, 4, 5, ...: both labels among them (a patient's label is its parity)."""
    return (np.arange(200) // 2) % 2 == 0


def _inputs(model_path: str, sex: np.ndarray) -> ClinicalInputs:
    """400 test images of 200 patients; the women's are made hard (probabilities near chance)."""
    rng = np.random.default_rng(3)
    y_val, y_test = np.arange(200) % 2, (np.arange(400) // 2) % 2
    val = np.clip(y_val * 0.6 + 0.2 + rng.normal(0, 0.15, 200), 0.01, 0.99)
    hard = np.repeat(_women(), 2)
    test = np.where(hard, np.clip(0.5 + y_test * 0.05 + rng.normal(0, 0.2, 400), 0.01, 0.99),
                    np.clip(y_test * 0.6 + 0.2 + rng.normal(0, 0.15, 400), 0.01, 0.99))
    to2 = lambda p: np.c_[1 - p, p]  # noqa: E731
    board = pd.DataFrame({"trial": ["t1"], "best_val_roc_auc": [0.9], "label": ["t1"]})
    return ClinicalInputs(
        task=get_task("pneumonia"), y_val=y_val, y_test=y_test,
        val_probs={"ensemble": to2(val)}, test_probs={"ensemble": to2(test)},
        test_groups=np.arange(400) // 2, test_paths=[f"{i}.png" for i in range(400)],
        test_images={SIZE: np.zeros((400, SIZE, SIZE, 3), np.uint8)},
        members=[Member("t1", 1.0, model_path, SIZE)], policy="none", leaderboard=board,
        synthetic=True, title="subgroups", val_groups=np.arange(200) // 2,
        subgroups={"sex": sex})


@pytest.fixture(scope="module")
def evaluated(tiny_model, tmp_path_factory):
    """The same test split evaluated with the true sex column and with it permuted."""
    sex = np.repeat(np.where(_women(), "female", "male"), 2).astype(object)
    out = tmp_path_factory.mktemp("report")
    options = ClinicalOptions(gradcam_per_group=1)
    permuted = np.random.default_rng(0).permutation(sex)
    return [evaluate(_inputs(tiny_model, s), options, out / name, log=lambda _: None)
            for name, s in (("true", sex), ("permuted", permuted))], out


def test_a_harder_subgroup_is_flagged_in_the_report_and_the_console_line(evaluated):
    (first, _), out = evaluated
    table = pd.read_csv(out / "true" / "test_metrics_by_subgroup.csv",
                        keep_default_na=False)
    women = table[(table.value == "female") & (table.metric == "roc_auc")].iloc[0]
    men = table[(table.value == "male") & (table.metric == "roc_auc")].iloc[0]
    assert women.n == 200 and women.groups == 100
    assert bool(women.flagged) and float(women.high) < float(women.overall)
    assert not men.flagged and float(men.point) > float(men.overall)
    assert set(table.metric) == {"roc_auc", "sensitivity", "specificity"}
    html = unescape((out / "true" / "report.html").read_text())
    section = html[html.index("<h2>Subgroups</h2>"):]
    assert "fewer than 10 cases or 5 groups" in section and "FLAG: below overall" in section
    assert "<30, 30-44, 45-59, 60-74, 75+" in section
    assert first.subgroup_line.startswith("subgroups: sex 2 value(s) measured; FLAGGED: "
                                          "sex = female roc_auc ")


def test_permuting_the_subgroups_moves_no_choice(evaluated):
    (first, permuted), out = evaluated
    assert first.operating_point == permuted.operating_point
    assert first.temperature == permuted.temperature
    assert first.referral == permuted.referral
    assert first.answer.sets == permuted.answer.sets
    assert first.answer.grouping == permuted.answer.grouping
    assert first.metrics == permuted.metrics
    tables = [pd.read_csv(out / name / "test_metrics_by_subgroup.csv") for name in
              ("true", "permuted")]
    assert not tables[0]["point"].equals(tables[1]["point"])  # the subgroups did differ
    assert "FLAGGED" not in permuted.subgroup_line


def test_the_three_commands_take_repeated_subgroup_options():
    from orchestrator.clinical.options import clinical_options
    from orchestrator.ensemble.__main__ import _parser as ensemble_parser
    from orchestrator.evaluate.__main__ import _parser as evaluate_parser
    from orchestrator.sweep.__main__ import _parser as sweep_parser

    asked = ["--subgroup", "sex", "--subgroup", "age", "--subgroup", "sex"]
    sweep = sweep_parser().parse_args(["skin", *asked])
    ensemble = ensemble_parser().parse_args(["--sweep-run", "r", *asked])
    assert clinical_options(sweep).subgroups == clinical_options(ensemble).subgroups == (
        "sex", "age")
    assert evaluate_parser().parse_args(["models:/m/1", "d", *asked]).subgroup == [
        "sex", "age", "sex"]
    assert clinical_options(ensemble_parser().parse_args(["--sweep-run", "r"])).subgroups == ()
