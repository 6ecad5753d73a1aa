"""Models that show the course plugin at work (with the plugin installed or loaded)."""

import torch
from torch import nn

import cnncheck
from cnncheck_course.layers import CourseConv, FlippedCourseConv


@cnncheck.model(input_shape=(2, 3, 16, 16))
class Shrinking(nn.Module):
    """Flagged by conv-channels-shrink (64 -> 16) and conv-even-kernel (4x4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1)
        self.conv2 = nn.Conv2d(64, 16, 4)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean(dim=(2, 3)))


@cnncheck.model(input_shape=(2, 3, 16, 16))
class CourseNet(nn.Module):
    """Clean: CourseConv is a true (cross-correlation) convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = CourseConv(3, 8, 3, pad=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@cnncheck.model(input_shape=(2, 3, 16, 16))
class FlippedNet(CourseNet):
    """conv-param-formula: FlippedCourseConv does not match F.conv2d on its own weights."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = FlippedCourseConv(3, 8, 3, pad=1)
