"""Where a sweep lives and how one is found again: the storage path (a folder or a URI every
node reaches), the sweep state (`SweepState`, versioned) beside Tune's own, and finding the
sweep to resume (connecting
to Ray is `orchestrator.cluster`'s). Imports pyarrow only inside the functions that need it, so a
CLI's `--help` and its argument checks stay fast.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from orchestrator.errors import ConfigError
from orchestrator.sweep.budget import OVERRIDABLE, Budget

SWEEP_STATE = "medsweep_sweep.json"  # beside Tune's own state: what a resumed sweep continues
RECORDED_DATA = "recorded_data"  # the sweep's manifest, in its folder: what a resume reloads


def storage_path(storage_path: str | None) -> str:
    """Tune wants an absolute path or a URI (s3://, gs://) shared by every node."""
    if storage_path and "://" in storage_path:
        return storage_path
    path = Path(storage_path or "runs/sweeps").expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def find_resumable(storage: str, experiment: str) -> str:
    """The newest sweep of this experiment under the storage path (a folder or a URI): the path
    or URI of its folder, the one `Tuner.restore` takes."""
    if is_uri(storage):
        found = _newest_remote_sweep(storage, experiment)
    else:
        candidates = sorted(Path(storage).glob(f"{experiment}-*/{SWEEP_STATE}"),
                            key=lambda p: p.stat().st_mtime)
        found = str(candidates[-1].parent) if candidates else None
    if found is None:
        raise ConfigError(f"--resume: nothing to resume for experiment {experiment!r} under "
                          f"{storage} (looked for {experiment}-*/{SWEEP_STATE})")
    return found


def _newest_remote_sweep(storage: str, experiment: str) -> str | None:
    """`{storage}/{experiment}-*/medsweep_sweep.json` listed through pyarrow.fs (what Tune itself
    uses for URIs); newest by the state file's mtime where the filesystem gives one, else by the
    `%Y%m%d-%H%M%S` stamp in the folder name."""
    import pyarrow.fs

    fs, root = storage_filesystem(storage)
    try:
        folders = [info for info in fs.get_file_info(
                       pyarrow.fs.FileSelector(root.rstrip("/") or "/", allow_not_found=True))
                   if info.type == pyarrow.fs.FileType.Directory
                   and info.base_name.startswith(f"{experiment}-")]
        states = fs.get_file_info([f"{info.path}/{SWEEP_STATE}" for info in folders])
    except OSError as err:
        raise ConfigError(f"--resume: cannot list --storage-path {storage} ({err})") from None
    found = [(_sweep_age(folder.base_name, experiment, state), folder.base_name)
             for folder, state in zip(folders, states) if state.type == pyarrow.fs.FileType.File]
    return f"{storage.rstrip('/')}/{max(found)[1]}" if found else None


def _sweep_age(name: str, experiment: str, state) -> float:
    if state.mtime is not None:
        return state.mtime.timestamp()
    try:
        return datetime.strptime(name[len(experiment) + 1:], "%Y%m%d-%H%M%S").timestamp()
    except ValueError:
        return float("-inf")


def is_uri(path: str) -> bool:
    """A storage path like s3://bucket/prefix or file:///abs/path, as opposed to a folder."""
    return "://" in path


def storage_filesystem(uri: str):
    """(pyarrow filesystem, path inside it) for a storage URI, as Tune resolves it."""
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as err:  # pyarrow.ArrowInvalid is a ValueError
        raise ConfigError(f"--storage-path {uri}: pyarrow.fs cannot open it ({err})") from None


def save_recorded_data(sweep: str, files: dict[str, Path]) -> None:
    """Copy the data records (manifest and its companions) into the sweep folder (a local
    path or a URI), so that a resumed sweep reloads the very split, wherever it runs."""
    for name, source in files.items():
        _write_bytes(f"{sweep.rstrip('/')}/{RECORDED_DATA}/{name}", Path(source).read_bytes())


def fetch_recorded_data(sweep: str, names: tuple[str, ...], dst: Path) -> Path | None:
    """The recorded files of a sweep copied into `dst` (None when the sweep recorded none)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        try:
            (dst / name).write_bytes(_read_bytes(f"{sweep.rstrip('/')}/{RECORDED_DATA}/{name}"))
        except OSError:  # FileNotFoundError included, local or through pyarrow.fs
            return None
    return dst


def _read_bytes(location: str) -> bytes:
    """A file's bytes from a local path or a storage URI (the filesystem Tune uses)."""
    if not is_uri(location):
        return Path(location).read_bytes()
    fs, path = storage_filesystem(location)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def _write_bytes(location: str, data: bytes) -> None:
    if not is_uri(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        Path(location).write_bytes(data)
        return
    fs, path = storage_filesystem(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(data)


# 1: the flat dict written before SweepState (no "version" key); 2: the fold trials in a Tune
# experiment of their own (`-cv`), after the search's; 3: both stages in one experiment
STATE_VERSION = 3


@dataclass(frozen=True)
class SweepState:
    """What a resumed sweep continues: its MLflow runs, its Tune folder, its task, data and
    budget, and how far it got. Written and read only here (`write_sweep_state`,
    `read_sweep_state`), versioned: an older file still resumes, a newer one is refused."""

    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    task: str
    profile: str
    data_dir: str | None
    name: str
    path: str
    budget: Budget
    space_overrides: dict = field(default_factory=dict)
    search: str = "random"  # how configurations are drawn (older states: random)

    def to_json(self) -> str:
        record = dataclasses.asdict(self)
        record["budget"] = self.budget.to_dict()
        return json.dumps({"version": STATE_VERSION, **record}, indent=1)

    @classmethod
    def from_json(cls, text: str, where: str) -> "SweepState":
        record = json.loads(text)
        version = record.pop("version", 1)
        if version == 1:  # the budget's overrides flat; the profile gives the rest
            from search_spaces import get_profile

            flat = {"cv_folds": 0, "cv_top": 0, "replicates": 1}  # older than those stages
            flat.update({k: record.pop(k) for k in OVERRIDABLE if k in record})
            record["budget"] = Budget.of(get_profile(record["task"], record["profile"]),
                                         flat).to_dict()
        elif version == 2 and (record.get("budget") or {}).get("cv_folds"):
            raise ConfigError(f"{where} is a sweep with cross-validation started by an earlier "
                              "MedSweep, which ran the fold trials as a second Tune experiment; "
                              "resume it with that version, or start a new sweep")
        elif version not in (2, STATE_VERSION):
            raise ConfigError(f"{where} was written by a newer MedSweep (sweep state version "
                              f"{version}; this one reads up to {STATE_VERSION}): resume it "
                              "with that version, or start a new sweep")
        known = {f.name for f in dataclasses.fields(cls)}
        optional = {f.name for f in dataclasses.fields(cls)
                    if f.default is not dataclasses.MISSING
                    or f.default_factory is not dataclasses.MISSING}  # added since: defaults
        missing = sorted(known - set(record) - optional)
        if missing:
            raise ConfigError(f"{where} lacks {', '.join(missing)}: not a MedSweep sweep "
                              "state; start a new sweep")
        return cls(**{k: v for k, v in record.items() if k in known} | {
            "budget": Budget.from_dict(record["budget"])})



def read_sweep_state(sweep: str) -> SweepState:
    """The SWEEP_STATE of the sweep folder `sweep` (a local path or a URI)."""
    where = f"{sweep.rstrip('/')}/{SWEEP_STATE}"
    return SweepState.from_json(_read_bytes(where).decode(), where)


def write_sweep_state(sweep: str, state: SweepState) -> None:
    """Write SWEEP_STATE into the sweep folder `sweep` (a local path or a URI)."""
    _write_bytes(f"{sweep.rstrip('/')}/{SWEEP_STATE}", state.to_json().encode())
