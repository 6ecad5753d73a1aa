"""The ConvNet of the seed post, with its syntax repaired and its ``stride=5`` kept.

``MaxPool2d(kernel_size=2, stride=5)`` turns the 28x28 map into 6x6 (then layer2's pool makes it 3x3),
so ``fc1`` receives 64*3*3 = 576 features where it expects 7*7*64 = 3136. cnncheck explains this as
``feature-size-mismatch``; ``seed_convnet_fixed.py`` is the same network with ``stride=2``.
"""

import torch
from torch import nn

import cnncheck


@cnncheck.model(input_shape=(4, 1, 28, 28))
class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(
            nn.Conv2d(in_channels=1, out_channels=32, kernel_size=5, stride=1, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=5),
        )
        self.layer2 = nn.Sequential(
            nn.Conv2d(32, 64, kernel_size=5, stride=1, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.dropout = nn.Dropout()
        self.fc1 = nn.Linear(7 * 7 * 64, 1000)
        self.fc2 = nn.Linear(1000, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(x))
        x = x.reshape(x.size(0), -1)
        x = self.dropout(x)
        return self.fc2(self.fc1(x))
