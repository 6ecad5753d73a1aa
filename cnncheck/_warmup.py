"""Imported by the isolation fork server, once: the first check in a process pays for lazy imports
and first-call set-up (about a second); every worker forked afterwards starts warm.

It runs on one thread, so no thread pool exists in the server when it forks (children set theirs).
"""

from __future__ import annotations

import torch
from torch import nn

from cnncheck.api import check_model

torch.set_num_threads(1)
check_model(nn.Sequential(nn.Conv2d(1, 2, 3, bias=True), nn.BatchNorm2d(2), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Dropout(), nn.Linear(2, 2)), (2, 1, 4, 4))
