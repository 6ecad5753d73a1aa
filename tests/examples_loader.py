"""Import a file of examples/ by name (examples/ is not a package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"cnncheck_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def declared_models() -> int:
    """How many models examples/ declares (each ``@cnncheck.model``): one report row and picture each."""
    return sum(path.read_text(encoding="utf-8").count("\n@cnncheck.model(") for path in EXAMPLES.glob("*.py"))
