"""Brain tumour MRI search (seed 000).

Seed 000 trained at 128 px with `three_phase`, then continued it with everything at 1e-5
(`three_phase_continued`); the gpu grid keeps 224 px beside 128 and every schedule stays in the
choice, so the search can confirm or overturn that recipe. The classes are near balanced (test split
300/306/300), so class weighting would change nothing: cross entropy, or focal for hard cases.
"""
from __future__ import annotations

from search_spaces._common import TaskSpace

SPACE = TaskSpace(
    losses=("cross_entropy", "focal"),
    note="seed 000: three_phase at 128 px",
)
