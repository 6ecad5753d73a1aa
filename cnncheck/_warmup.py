"""Imported by the isolation fork server, once: the first check in a process pays for lazy imports
and first-call set-up (about a second); every worker forked afterwards starts warm.

It runs on one thread, so no thread pool exists in the server when it forks (children set theirs).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from cnncheck.api import check_model

# the server's own stdio is closed to its workers' code: a submission writing to /proc/<ppid>/fd/1 must
# not reach cnncheck's stdout through the server
_devnull = os.open(os.devnull, os.O_RDWR)
for _fd in (0, 1, 2):
    os.dup2(_devnull, _fd)
torch.set_num_threads(1)
check_model(nn.Sequential(nn.Conv2d(1, 2, 3, bias=True), nn.BatchNorm2d(2), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Dropout(), nn.Linear(2, 2)), (2, 1, 4, 4))

from cnncheck.tamper import take_server_snapshot  # noqa: E402  (after the check: nothing of ours imports later)

take_server_snapshot()
