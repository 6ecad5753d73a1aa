"""Baselines: record today's findings once, then fail only on new ones.

The file is JSON, one finding per line, sorted, so that it reads well in a code review::

    {"version": 1, "findings": [
    {"model": "models.py::VGG", "rule": "redundant-bias-before-bn", "module": "features.0"},
    ...
    ]}

A finding is known when an entry has the same model, rule and module. An entry that no longer
matches any finding of a (model, rule) that was checked is reported as fixed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

Key = tuple[str, str, str]  # (model, rule, module)


def summary(known: int, fixed: list[Key]) -> list[str]:
    """What a run against a baseline says at its end (pytest's summary and the ``cnncheck`` command)."""
    lines = [f"cnncheck baseline: {known} known finding(s) passed; "
             f"{len(fixed)} entr{'y' if len(fixed) == 1 else 'ies'} fixed since it was written"]
    lines += [f"  fixed: {model} {rule} {module or '<model>'} (remove it from the baseline)"
              for model, rule, module in fixed]
    return lines


def write(path: str | Path, keys: Iterable[Key]) -> int:
    entries = sorted(set(keys))
    lines = [json.dumps({"model": m, "rule": r, "module": mod}, sort_keys=False) for m, r, mod in entries]
    text = '{"version": 1, "findings": [\n' + ",\n".join(lines) + "\n]}\n"
    Path(path).write_text(text, encoding="utf-8")
    return len(entries)


@dataclass
class Baseline:
    keys: set[Key]
    matched: set[Key] = field(default_factory=set)

    @classmethod
    def load(cls, path: str | Path) -> Baseline:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            keys = {(e["model"], e["rule"], e["module"]) for e in data["findings"]}
        except FileNotFoundError:
            raise ValueError(f"baseline {path} does not exist; create it with --cnncheck-baseline-write "
                             f"(pytest) or --baseline-write (cnncheck check)") from None
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"baseline {path} is not a cnncheck baseline: {exc}") from None
        return cls(keys)

    def is_known(self, key: Key) -> bool:
        if key in self.keys:
            self.matched.add(key)
            return True
        return False

    def fixed(self, checked: Iterable[tuple[str, str]], matched: Iterable[Key] | None = None) -> list[Key]:
        """Entries of the checked (model, rule) pairs that no finding matched any more."""
        pairs = set(checked)
        seen = self.matched if matched is None else set(matched)
        return sorted(k for k in self.keys if (k[0], k[1]) in pairs and k not in seen)
