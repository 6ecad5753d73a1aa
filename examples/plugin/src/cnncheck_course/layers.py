"""The course's own convolution: its attributes are not PyTorch's names. cnncheck recognises it by the
conv op its forward runs on its own ``filters``; the plugin's ``cnncheck_classify_module`` shows how a
course can also place its layers explicitly (a plugin's answer stands whatever the layer runs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CourseConv(nn.Module):
    """A 2-d convolution written for the course: ``filters`` of shape (C_out, C_in, k, k)."""

    def __init__(self, c_in: int, c_out: int, k: int, pad: int = 0) -> None:
        super().__init__()
        self.padding = pad  # read by cnncheck's F.conv2d comparison, like stride and dilation
        self.filters = nn.Parameter(torch.randn(c_out, c_in, k, k) / (c_in * k * k) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.filters, self.bias, padding=self.padding)


class FlippedCourseConv(CourseConv):
    """A classic slip: a true convolution flips the kernel, but PyTorch's conv2d is a
    cross-correlation, so this layer no longer matches F.conv2d on its own weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.filters.flip(-1, -2), self.bias, padding=self.padding)
