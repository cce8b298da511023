"""Subgroup performance (`--subgroup`): the values read from a CSV, HAM10000's metadata and DICOM
headers, recorded with the split, measured per value in the report with a flag for a value
whose interval lies below the overall figure, and never read by any choice."""
from __future__ import annotations

import re
from html import unescape
from pathlib import Path

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
    assert sorted(["unknown", "75+", "male", "<30", "45-59", "female"], key=sg.value_order) == [
        "<30", "45-59", "75+", "female", "male", "unknown"]  # as the tables list them


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


def test_the_csv_fixed_columns_are_never_offered_whatever_their_case(tmp_path):
    pd.DataFrame({"Path": ["a.png"], "LABEL": ["x"], "Group": ["g"], "Split": [""],
                  "site": ["s"]}).to_csv(tmp_path / "labels.csv", index=False)
    assert sg.layout_columns(get_task("folder"), tmp_path) == ("site", *sg.DICOM_FIELDS)


def test_an_unknown_column_is_refused_by_the_sweep_before_ray_starts(tmp_path, own_ray):
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


# --- end to end: a skin sweep with --subgroup sex, age and localization ----------------------
SKIN_ASKED = ("sex", "age", "localization")
FIGURE = re.compile(r"^\d\.\d{3} (\[\d\.\d{3}, \d\.\d{3}\]|\[no interval\])$")


@pytest.fixture(scope="module")
def skin_sweep(tmp_path_factory):
    """The skin phantom (HAM10000's layout and metadata) swept with the three subgroups: 2 smoke
    trials at 32 px, the ensemble chosen on the holdout validation split. 100 images per dx
    code give a test split of 100 images, 52 lesions: both sexes hold >= 20 lesions (intervals),
    the age bands 5-19 (points), and several of the 11 sites too few to measure."""
    from orchestrator.sweep.runner import run_sweep

    root = tmp_path_factory.mktemp("skin-sweep")
    data = write_phantom(get_task("skin"), root / "skin", per_class=100, size=32)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    result = run_sweep("skin", profile="smoke", data_dir=str(data), num_samples=2, max_epochs=2,
                       cv_folds=0, storage_path=str(root / "runs"), tracking_uri=uri,
                       clinical=ClinicalOptions(subgroups=SKIN_ASKED), log=lambda _: None)
    yield result, uri, root


def _artifact(uri: str, run_id: str, name: str, dst) -> str:
    import mlflow

    return mlflow.MlflowClient(uri).download_artifacts(run_id, name, str(dst))


def _html_tables(html: str) -> list[list[list[str]]]:
    """Each <table>'s rows of cell texts (header row first)."""
    return [[[unescape(c).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
             for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)]
            for table in re.findall(r"<table.*?</table>", html, re.S)]


@pytest.mark.slow
def test_a_skin_sweep_reports_sex_age_band_and_localization(skin_sweep, tmp_path):
    from orchestrator.clinical.bootstrap import MIN_GROUPS
    from orchestrator.clinical.subgroup_sections import UNDEFINED

    result, uri, _ = skin_sweep
    report = result.ensemble
    html = Path(_artifact(uri, report.run_id, "report.html", tmp_path)).read_text()
    section = html[html.index("<h2>Subgroups</h2>"):]
    section = section[:section.index("<h2", 5)]
    manifest = pd.read_csv(_artifact(uri, result.parent_run_id, "manifest.csv", tmp_path),
                           dtype=str, keep_default_na=False)
    test = manifest[manifest["split"] == "test"]
    answers = pd.read_csv(_artifact(uri, report.run_id, "test_predictions.csv", tmp_path),
                          dtype=str, keep_default_na=False).merge(test, on="path",
                                                                  suffixes=("", "_manifest"))
    assert len(answers) == len(test) == 100
    tables = _html_tables(section)
    assert [t[1][0] for t in tables] == list(SKIN_ASKED)
    bands = [label for _, label in sg.AGE_BANDS]
    for name, (header, *rows) in zip(SKIN_ASKED, tables):
        assert header == ["subgroup", "value", "n", "groups", "pr_auc", "sensitivity",
                          "specificity", "flag"]
        # every test image in exactly one row, each row's counts those of the recorded values
        counts = test.groupby(sg.column(name)).agg(n=("path", "size"), groups=("group", "nunique"))
        assert sorted(r[1] for r in rows) == sorted(counts.index)
        measured = [r for r in rows if r[-1] != TOO_FEW]
        for _, value, n, groups, *figures, flag in rows:
            assert (int(n), int(groups)) == tuple(counts.loc[value]), (name, value)
            if flag == TOO_FEW:
                assert int(n) < MIN_CASES or int(groups) < 5, (name, value)
                assert figures == ["", "", ""]
                continue
            assert int(n) >= MIN_CASES and int(groups) >= 5, (name, value)
            assert all(FIGURE.match(f) or f == UNDEFINED for f in figures), figures
            if int(groups) < MIN_GROUPS:
                assert all(f.endswith("[no interval]") or f == UNDEFINED for f in figures)
            assert flag == "" or flag.startswith("FLAG: below overall (")
        assert rows[:len(measured)] == measured  # the too few listed last
        if name == "age":  # youngest first
            values = [r[1] for r in measured]
            assert values == [b for b in bands if b in values] and values
        if name == "sex":  # 2 values of >= 20 lesions: intervals, and the figures are the
            assert [r[1] for r in rows] == ["female", "male"]  # served answers' own
            for _, value, _, _, _, sensitivity, specificity, _ in rows:
                assert re.search(r"\[\d\.\d{3}, \d\.\d{3}\]$", specificity), specificity
                mine = answers[answers[sg.column(name)] == value]
                right = mine["decision"] == mine["label"]
                for shown, cls in ((sensitivity, "malignant"), (specificity, "benign")):
                    assert shown.startswith(f"{right[mine['label'] == cls].mean():.3f} ")
        if name == "localization":
            assert measured and len(measured) < len(rows)  # both kinds listed
    assert "nan" not in section
    assert "fewer than 10 cases or 5 groups" in section
    # the split's characteristics list the recorded values, age bands youngest first
    flow = html[html.index("age &lt;30"):]
    assert flow.index("age 30-44") < flow.index("age 75+")
    assert report.subgroup_line.startswith("subgroups: sex 2 value(s) measured, age ")
    assert "localization " in report.subgroup_line


@pytest.mark.slow
def test_permuting_the_recorded_subgroups_moves_no_choice_of_the_ensemble(
        skin_sweep, rebuild_with_changed_manifest, tmp_path):
    """Members, weights, TTA policy, temperature, threshold, refer cut and sets are chosen
    before and without the subgroups: shuffle the recorded values across the images and
    rebuild; only the per-subgroup figures move."""
    result, uri, _ = skin_sweep
    columns = [sg.column(n) for n in SKIN_ASKED]

    def shuffle(frame: pd.DataFrame) -> pd.DataFrame:
        order = np.random.default_rng(1).permutation(len(frame))
        frame[columns] = frame[columns].to_numpy()[order]
        return frame

    again = rebuild_with_changed_manifest(result.parent_run_id, uri, shuffle)
    first = result.ensemble
    for field in ("policy", "members", "weights", "temperature", "threshold", "refer_cut",
                  "ood", "sets"):
        assert getattr(again, field) == getattr(first, field), field
    before, after = (pd.read_csv(_artifact(uri, r.run_id, "test_metrics_by_subgroup.csv",
                                           tmp_path / r.run_id)) for r in (first, again))
    assert not before[["value", "n"]].equals(after[["value", "n"]])
