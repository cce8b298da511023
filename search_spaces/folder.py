"""Search for the user's own folder or CSV of images.

Nothing is known of the data's balance, so class weighting (the task's default) leads and focal
loss and cross entropy are searched beside it; one resolution (224, every backbone's native one).
"""
from __future__ import annotations

from search_spaces._common import TaskSpace

SPACE = TaskSpace(losses=("class_weighted", "focal", "cross_entropy"))
