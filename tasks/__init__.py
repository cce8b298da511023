"""Task registry: one module per task, CLI word = registry key = module name."""
from __future__ import annotations

from types import ModuleType

from orchestrator.errors import ConfigError
from tasks import brain, folder, leukemia, multihead, pneumonia, skin
from tasks.base import Preprocessing, SplitPolicy, Task

_MODULES: dict[str, ModuleType] = {
    "brain": brain,
    "skin": skin,
    "leukemia": leukemia,
    "pneumonia": pneumonia,
    "folder": folder,
    "multihead": multihead,
}
TASKS: dict[str, dict[str, Task]] = {name: m.VARIANTS for name, m in _MODULES.items()}


def task_names() -> list[str]:
    return list(TASKS)


def variant_names(name: str) -> list[str]:
    return list(_variants(name))


def default_variant(name: str) -> str:
    _variants(name)
    return _MODULES[name].DEFAULT_VARIANT


def get_task(name: str, variant: str | None = None) -> Task:
    """The task record; `name` may also be written `name/variant` (e.g. `brain/4class`)."""
    if variant is None and "/" in name:
        name, variant = name.split("/", 1)
    variants = _variants(name)
    chosen = variant or _MODULES[name].DEFAULT_VARIANT
    if chosen not in variants:
        raise ConfigError(
            f"task {name!r} has no variant {chosen!r}; valid variants: {', '.join(variants)}"
        )
    return variants[chosen]


def _variants(name: str) -> dict[str, Task]:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["Task", "Preprocessing", "SplitPolicy", "TASKS", "get_task", "task_names",
           "variant_names", "default_variant"]
