"""What the sweep checks on the driver before Ray starts, beyond the search space: the
weights folder every trial reads and the subgroup columns the data must offer. A bad value
fails here in a second, naming what is wrong, not in a worker once trials run."""
from __future__ import annotations

import os
from pathlib import Path

from orchestrator.clinical.options import ClinicalOptions
from orchestrator.errors import ConfigError
from tasks.base import Task


def subgroup_columns(task: Task, data_dir: str | None,
                     clinical: ClinicalOptions | None) -> tuple[str, ...]:
    """The asked `--subgroup` columns as the data spell them; an unknown one is refused here,
    before Ray starts, with the columns this data offers."""
    from orchestrator.data.subgroups import check_columns, layout_columns

    if clinical is None or not clinical.subgroups:
        return ()
    where = data_dir or f"the {task.key} phantom"
    return check_columns(clinical.subgroups, layout_columns(task, data_dir), where)


def weights_dir_for(weights_dir: str | os.PathLike | None) -> str | None:
    """The absolute weights folder every trial reads, or None (each node's own lookup)."""
    env = "MEDSWEEP_WEIGHTS_DIR"  # models.WEIGHTS_DIR_ENV; importing models loads TensorFlow
    source = "--weights-dir"
    if weights_dir is None or str(weights_dir) == "":
        weights_dir, source = os.environ.get(env) or None, f"${env}"
    if weights_dir is None:
        return None
    path = Path(weights_dir).expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"weights directory {path} (from {source}) does not exist; fetch the "
                          f"files with: python -m orchestrator.weights fetch {path}")
    return str(path)
