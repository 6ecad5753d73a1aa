"""Student files as a class writes them, drawn from a seed: the seed's ConvNet shape (conv, BN, ReLU, pool
blocks, then dropout and two Linears), each block with its own comments and layout, and some of the
mistakes that ``cnncheck check --fix`` repairs:

- a conv with a bias before its BatchNorm (safe: ``bias=False``);
- the BatchNorms kept in a plain list (safe: ``nn.ModuleList``);
- ``F.dropout`` without ``training``, or with a positional ``True`` (safe: ``training=self.training``);
- a pool with the wrong stride, so that the flattened map no longer fits fc1 (unsafe: the stride).

:func:`student_file` returns the source and what it holds, so that a test knows which fixes to expect.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

INPUT_SHAPE = (2, 1, 28, 28)


@dataclass
class StudentFile:
    source: str
    safe: set[str] = field(default_factory=set)  # the kinds of safe fix it needs
    unsafe: bool = False  # a pool's stride makes fc1 not fit


def student_file(seed: int) -> StudentFile:
    rng = random.Random(seed)
    blocks = rng.choice([1, 2])
    channels = [1] + [rng.choice([4, 8]) * (i + 1) for i in range(blocks)]
    listed = rng.random() < 0.5
    biased = [rng.random() < 0.5 for _ in range(blocks)]
    wrong_pool = rng.randrange(blocks) if rng.random() < 0.4 else None
    dropout = rng.choice(["keyword", "missing", "positional"])
    student = StudentFile("")
    lines = ["import torch", "import torch.nn.functional as F", "from torch import nn", "", "",
             f"class Net{seed}(nn.Module):", f'    """Homework {seed}: a small CNN for 28x28 digits."""', "",
             "    def __init__(self) -> None:", "        super().__init__()"]
    norms = []
    for i in range(blocks):
        c_in, c_out = channels[i], channels[i + 1]
        bias = "" if biased[i] else ", bias=False"
        if biased[i]:
            student.safe.add("bias")
        if rng.random() < 0.5:
            lines.append(f"        self.conv{i} = nn.Conv2d({c_in}, {c_out}, kernel_size=3, padding=1{bias})  # block {i}")
        else:  # one argument per line, with a trailing comma
            lines += [f"        self.conv{i} = nn.Conv2d(", f"            {c_in},", f"            {c_out},",
                      "            kernel_size=3,", "            padding=1,"]
            lines += [f"            {bias[2:]},"] if bias else []
            lines.append("        )")
        stride = 3 if i == wrong_pool else 2
        lines.append(f"        self.pool{i} = nn.MaxPool2d(kernel_size=2, stride={stride})")
        norms.append(f"nn.BatchNorm2d({c_out})")
        if not listed:
            lines.append(f"        self.bn{i} = {norms[-1]}")
    if listed:
        lines.append(f"        self.bns = [{', '.join(norms)}]  # one norm per block")
        student.safe.add("register")
    side = 28 // 2 ** blocks
    lines += [f"        self.fc1 = nn.Linear({channels[-1]} * {side} * {side}, 32)", "        self.fc2 = nn.Linear(32, 10)",
              "", "    def forward(self, x: torch.Tensor) -> torch.Tensor:"]
    for i in range(blocks):
        norm = f"self.bns[{i}]" if listed else f"self.bn{i}"
        lines.append(f"        x = self.pool{i}(F.relu({norm}(self.conv{i}(x))))")
    lines.append("        x = x.flatten(1)")
    lines.append({"keyword": "        x = F.dropout(x, 0.25, training=self.training)",
                  "missing": "        x = F.dropout(x, 0.25)  # regularise",
                  "positional": "        x = F.dropout(x, 0.25, True)"}[dropout])
    if dropout != "keyword":
        student.safe.add("training")
    lines += ["        return self.fc2(F.relu(self.fc1(x)))", ""]
    student.source = "\n".join(lines)
    student.unsafe = wrong_pool is not None
    return student
