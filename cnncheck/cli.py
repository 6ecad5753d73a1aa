"""The ``cnncheck`` command: ``cnncheck check PATH...`` and ``cnncheck rules [ID]``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _shape(text: str) -> tuple[int, ...]:
    from cnncheck.discover import parse_shape

    try:
        return parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnncheck", description="Check PyTorch CNNs for correctness.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="load a cnncheck plugin module (repeatable)")
    common.add_argument("--disable-plugin", action="append", default=[], metavar="NAME",
                        help="disable a cnncheck plugin by name (repeatable)")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", parents=[common], help="check the models defined in Python files or folders")
    check.add_argument("paths", nargs="+", help="files or folders with nn.Module definitions")
    check.add_argument("--input-shape", type=_shape, help="input shape with the batch first, e.g. 4,1,28,28")
    check.add_argument("--device", default=None, help="cpu, cuda, ... (default: where the model is)")
    check.add_argument("--select", action="append", default=None, help="rule id or prefix (repeatable)")
    check.add_argument("--ignore", action="append", default=[], help="rule id or prefix (repeatable)")
    explain = sub.add_parser("explain", parents=[common],
                             help="a model layer by layer: output shapes and parameter formulas")
    explain.add_argument("model", help="path/to/file.py or path/to/file.py::ClassName")
    explain.add_argument("--input-shape", type=_shape, help="input shape with the batch first, e.g. 4,1,28,28")
    rules = sub.add_parser("rules", parents=[common], help="list the rules, or show one rule's documentation")
    rules.add_argument("id", nargs="?")
    rules.add_argument("--write-docs", metavar="DIR", help="write one Markdown page per rule into DIR")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.plugin or args.disable_plugin:
        from cnncheck import plugins

        try:
            for module in args.plugin:
                plugins.register(module)
            for name in args.disable_plugin:
                plugins.block(name)
        except (ImportError, ValueError) as exc:
            print(f"cnncheck: {exc}", file=sys.stderr)
            return 2
    try:
        if args.command == "rules":
            return _write_docs(args.write_docs) if args.write_docs else _rules(args.id)
        if args.command == "explain":
            return _explain(args)
        return _check(args)
    except BrokenPipeError:  # `cnncheck ... | head`: the reader left, which is not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _rules(rule_id: str | None) -> int:
    from cnncheck.plugins import all_rules
    from cnncheck.rules import render_text

    rules = all_rules()
    if rule_id is None:
        width = max(len(r.id) for r in rules)
        for rule in rules:
            print(f"{rule.id.ljust(width)}  {str(rule.severity).ljust(7)}  {rule.summary.split('. ')[0].rstrip('.')}")
        return 0
    match = [r for r in rules if r.id == rule_id]
    if not match:
        print(f"cnncheck: no rule {rule_id!r}; `cnncheck rules` lists them", file=sys.stderr)
        return 2
    print(render_text(match[0]))
    return 0


def _explain(args: argparse.Namespace) -> int:
    """Runs the model in this process: explain is for reading one's own model, not for grading."""
    from pathlib import Path

    from cnncheck.discover import candidates, infer_input_shape, load_file
    from cnncheck.explain import explain_model

    target, _, wanted = args.model.partition("::")
    path = Path(target)
    if not path.exists():
        print(f"cnncheck: {path}: no such file", file=sys.stderr)
        return 2
    found = [c for c in candidates(load_file(path), path) if not wanted or c.name == wanted]
    if not found:
        print(f"cnncheck: no model {wanted or ''} found in {path}", file=sys.stderr)
        return 2
    for candidate in found:
        model = candidate.build()
        shape = args.input_shape or candidate.spec.input_shape
        if shape is None:
            inferred = infer_input_shape(model)
            if inferred is None:
                print(f"cnncheck: {candidate.id}: pass --input-shape", file=sys.stderr)
                return 2
            shape, note = inferred
            print(f"({note})")
        print(explain_model(model, shape).render() + "\n")
    return 0


def _write_docs(directory: str) -> int:
    from pathlib import Path

    from cnncheck.plugins import all_rules
    from cnncheck.rules import render_index, render_markdown

    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    rules = all_rules()
    for rule in rules:
        (target / f"{rule.id}.md").write_text(render_markdown(rule), encoding="utf-8")
    (target / "index.md").write_text(render_index(rules), encoding="utf-8")
    print(f"cnncheck: wrote {len(rules)} rule pages to {target}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from cnncheck.api import CheckError, check_model
    from cnncheck.discover import candidates, load_file, python_files

    failed = errors = checked = 0
    for path in python_files(args.paths):
        if not path.exists():
            print(f"cnncheck: {path}: no such file or folder", file=sys.stderr)
            return 2
        try:
            module = load_file(path)
        except Exception as exc:  # the student's file does not import: report it, go on
            print(f"{path}: cannot import: {type(exc).__name__}: {exc}\n")
            errors += 1
            continue
        for candidate in candidates(module, path):
            shape = args.input_shape or candidate.spec.input_shape
            if shape is None:
                print(f"{candidate.id}: no input shape; pass --input-shape or use @cnncheck.model(input_shape=...)\n")
                errors += 1
                continue
            try:
                model = candidate.build()
                report = check_model(model, shape, device=args.device, checks=args.select,
                                     ignore=[*args.ignore, *candidate.spec.ignore])
            except CheckError as exc:
                print(f"{candidate.id}: {exc}\n")
                errors += 1
                continue
            except Exception as exc:  # building the student's model failed
                print(f"{candidate.id}: cannot build the model: {type(exc).__name__}: {exc}\n")
                errors += 1
                continue
            checked += 1
            failed += not report.ok
            print(f"{candidate.id}\n{report}\n")
    print(f"cnncheck: {checked} model(s) checked, {failed} with findings, {errors} could not be checked")
    return 1 if failed or errors else 0
