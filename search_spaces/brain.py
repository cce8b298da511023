"""Brain tumour MRI search.

The reference recipe trains at 128 px with `three_phase`, then continues with everything at 1e-5
(`three_phase_continued`); the gpu grid keeps 224 px beside 128 and every schedule stays in the
choice, so the search can confirm or overturn that recipe. The classes are near balanced (test
split 300/306/300), so class weighting would change nothing: cross entropy, or focal for hard
cases.
"""
from __future__ import annotations

from search_spaces._common import TaskSpace

SPACE = TaskSpace(
    losses=("cross_entropy", "focal"),
    note="reference recipe: three_phase at 128 px, continued at 1e-5",
)
