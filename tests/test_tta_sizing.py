"""The TTA pass size per device (`orchestrator/tta/sizing.py`): pure arithmetic."""
from __future__ import annotations

import pytest

from orchestrator.errors import ConfigError
from orchestrator.tta.sizing import (CPU_INPUTS_PER_PASS, GPU_MAX_INPUTS_PER_PASS,
                                     device_batch_size)


@pytest.mark.parametrize("transforms", [1, 2, 5, 8, 17, 40, 200])
def test_cpu_passes_hold_whole_images_and_about_128_inputs(transforms):
    size = device_batch_size(None, 224, transforms)
    assert size % transforms == 0 and size >= transforms  # whole images, at least one
    if transforms <= CPU_INPUTS_PER_PASS:
        assert abs(size - CPU_INPUTS_PER_PASS) <= transforms / 2
    assert device_batch_size(0, 224, transforms) == size  # 0 MB: no GPU


def test_seventeen_way_tta_on_cpu_is_eight_images_a_pass():
    assert device_batch_size(None, 96, 17) == 136  # the size docs/benchmarks.md measured


def test_a_gpu_takes_more_than_a_cpu_and_never_more_than_fits_or_the_cap():
    big = device_batch_size(80_000, 224, 17)
    assert CPU_INPUTS_PER_PASS < big <= GPU_MAX_INPUTS_PER_PASS and big % 17 == 0
    small = device_batch_size(4_000, 224, 17)  # 2 GB usable, 40 MB an input: 50 inputs
    assert small == 34 < big
    assert device_batch_size(100, 224, 17) == 17  # at least one image, even when tight


def test_higher_resolution_means_fewer_inputs_per_pass_on_a_gpu():
    sizes = [device_batch_size(16_000, r, 17) for r in (128, 224, 384, 512)]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]


def test_nonsense_is_refused():
    with pytest.raises(ConfigError):
        device_batch_size(None, 224, 0)
    with pytest.raises(ConfigError):
        device_batch_size(None, 0, 17)
