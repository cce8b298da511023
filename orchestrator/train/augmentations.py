"""Training-time augmentation presets as data, importable without TensorFlow.

A trial config names a preset; `pipeline.augmentation_layers` turns it into Keras layers.
"""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import ConfigError


@dataclass(frozen=True)
class Augmentation:
    """Random training-time transforms; factors follow the Keras preprocessing layers."""

    rotation: float = 0.0  # fraction of a full turn (0.05 = +-18 degrees)
    shift: float = 0.0  # fraction of height/width
    zoom: float = 0.0
    brightness: float = 0.0  # fraction of the 0..255 range
    hflip: bool = False
    vflip: bool = False


AUGMENTATIONS: dict[str, Augmentation] = {
    "none": Augmentation(),
    "light": Augmentation(rotation=0.03, shift=0.05, zoom=0.05, brightness=0.1, hflip=True),
    "medium": Augmentation(rotation=0.05, shift=0.1, zoom=0.1, brightness=0.15, hflip=True),
    "heavy": Augmentation(rotation=0.1, shift=0.15, zoom=0.15, brightness=0.2, hflip=True,
                          vflip=True),
}


def get_augmentation(name: str) -> Augmentation:
    try:
        return AUGMENTATIONS[name]
    except KeyError:
        raise ConfigError(f"unknown augmentation {name!r}; valid augmentations: "
                          f"{', '.join(AUGMENTATIONS)}") from None


def augmentation_for(name: str, allowed_kinds: tuple[str, ...], *,
                     measures: bool = False) -> Augmentation:
    """The named preset, minus flips the task forbids (a mirrored chest X-ray is not anatomy),
    and without zoom when the task `measures` something in the image (a regression head): a
    zoomed image would keep its unzoomed target."""
    preset = get_augmentation(name)
    return Augmentation(
        rotation=preset.rotation if "rotate" in allowed_kinds else 0.0,
        shift=preset.shift,
        zoom=0.0 if measures else preset.zoom,
        brightness=preset.brightness if "brightness" in allowed_kinds else 0.0,
        hflip=preset.hflip and "hflip" in allowed_kinds,
        vflip=preset.vflip and "vflip" in allowed_kinds,
    )
