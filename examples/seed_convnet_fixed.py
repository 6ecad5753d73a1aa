"""The ConvNet of the seed post, with its syntax repaired and ``stride=2``: clean.

28x28 -> 14x14 -> 7x7, so ``fc1`` gets the 7*7*64 = 3136 features it expects.
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
            nn.MaxPool2d(kernel_size=2, stride=2),
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
