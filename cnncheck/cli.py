"""The ``cnncheck`` command: ``cnncheck check PATH...`` and ``cnncheck rules [ID]``."""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from pathlib import Path

    from cnncheck.baseline import Baseline
    from cnncheck.discover import Candidate
    from cnncheck.isolate import Job
    from cnncheck.results import ModelResult


def _usage_error(message: str) -> int:
    """The one way a usage error is said: one line on stderr that names the fix; the exit status 2."""
    _say(message)
    return 2


def _say(message: str) -> None:
    """One line on stderr, however many lines ``message`` (a student's exception, say) has."""
    print("cnncheck: " + " ".join(line.strip() for line in message.splitlines() if line.strip()), file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors said as every other usage error is (:func:`_usage_error`): one line, not
    the usage block. A value an option refuses says what to give; any other mistake points to --help."""

    def error(self, message: str) -> NoReturn:
        option = re.match(r"argument ([^:]+): (.*)", message, re.S)
        if option and option.group(2).startswith(tuple(option.group(1).split("/"))):
            message = option.group(2)  # our own message, which names the option and the fix
        else:
            message = f"{message}; see `{self.prog} --help`"
        self.exit(_usage_error(message))


def _shape(text: str) -> tuple[int, ...]:
    from cnncheck.discover import parse_shape

    try:
        return parse_shape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--input-shape {exc}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--jobs must be a whole number of workers, at least 1 (e.g. -j 2), "
                                         f"got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    """Seconds per model, finite: with no limit, one model that loops forever would hold up the whole run."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isinf(value) and value > 0:
        raise argparse.ArgumentTypeError(f"--timeout must be a finite number of seconds, got {text!r}; for a "
                                         f"slow model give a long one, e.g. --timeout 3600")
    if not value > 0:  # nan too
        raise argparse.ArgumentTypeError(f"--timeout must be a positive number of seconds (e.g. --timeout 60), "
                                         f"got {text!r}")
    return value


def _size(text: str) -> int:
    from cnncheck.isolate import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--max-memory {exc}") from None


def _parser() -> argparse.ArgumentParser:
    from cnncheck import __version__
    from cnncheck.sandbox import MODES as sandbox_modes

    parser = _Parser(prog="cnncheck", description="Check PyTorch CNNs for correctness.")
    parser.add_argument("--version", action="version", version=f"cnncheck {__version__}")
    common = _Parser(add_help=False)
    common.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="load a cnncheck plugin module (repeatable)")
    common.add_argument("--disable-plugin", action="append", default=[], metavar="NAME",
                        help="disable a cnncheck plugin by name (repeatable)")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", parents=[common], help="check the models defined in Python files or folders")
    check.add_argument("paths", nargs="+",
                       help="files or folders with nn.Module definitions, file.py::Name, or package.module:Name")
    check.add_argument("--input-shape", type=_shape, help="input shape with the batch first, e.g. 4,1,28,28")
    check.add_argument("--device", default=None, help="cpu, cuda, ... (default: where the model is)")
    check.add_argument("--select", action="append", default=None, help="rule id or prefix (repeatable)")
    check.add_argument("--ignore", action="append", default=[], help="rule id or prefix (repeatable)")
    check.add_argument("--format", default="text", choices=["text", "json", "markdown", "junit", "sarif", "html"],
                       help="report format (default: text); html draws each model")
    check.add_argument("--output", "-o", metavar="FILE", help="write the report to FILE instead of stdout")
    check.add_argument("--per-model-dir", metavar="DIR",
                       help="also write one report per model into DIR (HTML with --format html, else Markdown)")
    check.add_argument("--baseline", metavar="FILE",
                       help="report only findings not recorded in this baseline file (pytest's format)")
    check.add_argument("--baseline-write", metavar="FILE",
                       help="record every finding of this run in a baseline file, and exit 0 when every "
                       "model could be checked")
    edits = check.add_mutually_exclusive_group()
    edits.add_argument("--fix", action="store_true",
                       help="apply the safe fixes to the checked files, check them again and report what remains")
    edits.add_argument("--diff", action="store_true",
                       help="print the safe fixes as a unified diff and change no file (exit 1 when there are any)")
    check.add_argument("--unsafe-fixes", action="store_true",
                       help="with --fix or --diff, also the fixes that change what the model computes (the stride, "
                       "padding or in_features after a feature-size mismatch, a written training=False)")
    check.add_argument("-j", "--jobs", type=_positive_int, default=1, help="parallel worker processes (default 1)")
    check.add_argument("--timeout", type=_positive_seconds, default=60.0,
                       help="seconds per model, a finite number above 0 (default 60)")
    check.add_argument("--max-memory", type=_size, default=None, metavar="SIZE",
                       help="memory limit per worker, e.g. 4G (default: none)")
    check.add_argument("--sandbox", choices=sandbox_modes, default="auto",
                       help="confine each submission with bubblewrap: the system read-only, only its own "
                       "folder, a private /tmp, no network (auto: when bwrap works here; default auto)")
    explain = sub.add_parser("explain", parents=[common],
                             help="a model layer by layer: output shapes and parameter formulas")
    explain.add_argument("model", help="path/to/file.py or path/to/file.py::ClassName")
    explain.add_argument("--input-shape", type=_shape, help="input shape with the batch first, e.g. 4,1,28,28")
    explain.add_argument("--format", default="text", choices=["text", "svg", "html"],
                         help="text: the layer table (default); svg: the picture of one model; html: a page "
                         "with the picture, the findings and the table")
    explain.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    rules = sub.add_parser("rules", parents=[common], help="list the rules, or show one rule's documentation")
    rules.add_argument("id", nargs="?", help="a rule id, or a prefix such as bn (as --select takes)")
    rules.add_argument("--write-docs", metavar="DIR", help="write one Markdown page per rule into DIR")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    undo: list[Any] = []
    try:
        if args.plugin or args.disable_plugin:
            from cnncheck import plugins

            try:
                plugins.load_and_block(args.plugin, args.disable_plugin, undo)
            except (ImportError, ValueError) as exc:
                return _usage_error(str(exc))
        return _command(args)
    finally:  # main() called in a process that goes on (a test, a notebook) leaves its plugins as they were
        for step in reversed(undo):
            step()


def _command(args: argparse.Namespace) -> int:
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
    from cnncheck.rules import select_rules

    try:
        match = select_rules(rules, [rule_id])
    except ValueError:
        return _usage_error(f"no rule {rule_id!r}; `cnncheck rules` lists them")
    if sys.stdout.isatty():  # a terminal: the page as rendered Markdown
        from rich.console import Console
        from rich.markdown import Markdown

        from cnncheck.rules import render_markdown

        console = Console()
        for rule in match:
            console.print(Markdown(render_markdown(rule)))
        return 0
    print("\n\n".join(render_text(rule) for rule in match))
    return 0


def _explain(args: argparse.Namespace) -> int:
    """Runs the model in this process: explain is for reading one's own model, not for grading. A target
    that holds nothing to explain (a folder, no model) or an option that fits no model is a usage error
    (exit 2); a file that does not import, or a model that does not build or run, says so in one line, as
    ``cnncheck check`` says it (exit 1)."""
    from pathlib import Path

    from cnncheck.api import CheckError
    from cnncheck.candidate import _failure, _wrong_rank, check_candidate
    from cnncheck.discover import infer_input_shape
    from cnncheck.exits import CodeExited, contained_exits
    from cnncheck.explain import explain_model
    from cnncheck.frames import traceback_location

    found = _explained_candidates(args)
    if isinstance(found, int):
        return found
    pieces: list[str] = []
    results = []
    for candidate in found:
        try:
            with contained_exits(candidate.label):
                model = candidate.build()
        except CodeExited as exc:
            return _failed(str(exc))
        except Exception as exc:  # the student's constructor raised
            return _failed(_failure(exc, f"cannot build {candidate.label}: ")[1], traceback_location(exc))
        shape = args.input_shape or candidate.spec.input_shape
        if shape is None:
            inferred = infer_input_shape(model)
            if inferred is None:
                return _usage_error(f"{candidate.id}: no conv to infer an input shape from; pass --input-shape, "
                                    f"batch first, e.g. --input-shape 4,1,28,28")
            shape, note = inferred
            if args.format == "text":
                pieces.append(f"({note})")
        if args.format != "text":
            result = check_candidate(candidate, shape=tuple(shape), device=None, select=None, ignore=(), drawn=True)
            if result.error_kind == "usage":
                return _usage_error(result.error or "")
            results.append(result)
            continue
        try:
            with contained_exits(candidate.label):
                explanation = explain_model(model, shape)
        except CodeExited as exc:
            return _failed(str(exc))
        except CheckError as exc:  # cnncheck cannot run it: scripted, on a device this machine lacks, ...
            return _failed(f"cannot explain {candidate.label}: {exc}", traceback_location(exc.__cause__))
        if args.input_shape is not None and explanation.architecture.stopped is not None:
            wrong = _wrong_rank(model, tuple(args.input_shape))
            if wrong is not None:  # the option fits no conv: the usage error `cnncheck check` gives
                return _usage_error(wrong)
        pieces.append(explanation.render() + "\n")
    text = "\n".join(pieces) if args.format == "text" else _drawn(args.format, results)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8", errors="backslashreplace")
    else:
        _write_stdout(text if text.endswith("\n") else text + "\n")
    return 0


def _explained_candidates(args: argparse.Namespace) -> list[Candidate] | int:
    """The models ``cnncheck explain`` reads, or the exit status of why there are none to read."""
    from pathlib import Path

    from cnncheck.discover import MODEL_DEFINITION, candidates, import_failure, load_file, python_files
    from cnncheck.frames import traceback_location

    target, _, wanted = args.model.partition("::")
    path = Path(target)
    if not path.exists():
        return _usage_error(f"{path}: no such file")
    if path.is_dir():
        example = next(python_files([str(path)]), path / "model.py")
        return _usage_error(f"{path} is a folder: explain reads one file, as `cnncheck explain {example}`; "
                            f"`cnncheck check {path}` checks every file in it")
    try:
        module = load_file(path)
    except Exception as exc:  # a SyntaxError, an import that raises or calls sys.exit (CodeExited)
        return _failed(import_failure(path, exc), traceback_location(exc))
    found = [c for c in candidates(module, path, include_all=bool(wanted)) if not wanted or c.name == wanted]
    if not found:
        return _usage_error(f"no model {wanted!r} in {path}" if wanted
                            else f"no model found in {path}: {MODEL_DEFINITION}")
    if args.format == "svg" and len(found) > 1:
        names = ", ".join(c.name for c in found)
        return _usage_error(f"{path} has {len(found)} models ({names}): name one, as {path}::{found[0].name}")
    return found


def _failed(message: str, location: str | None = None) -> int:
    """A student's file or model that fails: one line, with their line when it is known; exit status 1."""
    _say(message + (f" (at {_shown(location)})" if location else ""))
    return 1


def _drawn(fmt: str, results: list[ModelResult]) -> str:
    """``cnncheck explain --format svg|html``: the picture of one model, or the HTML page of them all."""
    if fmt == "html":
        from cnncheck.html_report import render_html

        return render_html(results)
    from cnncheck.flow import Flow
    from cnncheck.picture import finding_marks, render_svg

    result = results[0]
    if result.flow is None:
        from xml.sax.saxutils import escape

        reason = result.error or "; ".join(result.notes) or "forward did not run"
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="600" height="40"><text x="8" y="24">'
                f"no picture of {escape(result.id)}: {escape(reason)}</text></svg>")
    return render_svg(Flow.from_dict(result.flow), finding_marks(result.findings))


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
    from pathlib import Path

    from cnncheck.baseline import Baseline, write
    from cnncheck.discover import MODEL_DEFINITION, python_files
    from cnncheck.formats import FORMATS, render_markdown
    from cnncheck.isolate import Job
    from cnncheck.plugins import all_rules
    from cnncheck.rules import select_rules
    from cnncheck.verdict import Verdict, exit_code

    if args.unsafe_fixes and not (args.fix or args.diff):
        return _usage_error("--unsafe-fixes goes with --fix or --diff")
    try:
        rules = select_rules(all_rules(problems=[]), args.select, args.ignore)
        baseline = Baseline.load(args.baseline) if args.baseline else None
    except ValueError as exc:
        return _usage_error(str(exc))
    if args.device is not None:
        from cnncheck.devices import device_problem

        problem = device_problem(args.device)
        if problem is not None:
            return _usage_error(problem)
    from cnncheck.sandbox import SandboxUnavailable, resolve

    try:
        sandbox = resolve(args.sandbox)
    except SandboxUnavailable as exc:
        return _usage_error(str(exc))
    jobs = []
    for target in args.paths:
        file, only = _split_target(target)
        if only is None and not Path(file).exists():
            return _usage_error(f"{target}: no such file or folder")
        options = dict(only=only, input_shape=args.input_shape, device=args.device,
                       select=tuple(args.select) if args.select else None, ignore=tuple(args.ignore),
                       plugins=tuple(args.plugin), disabled_plugins=tuple(args.disable_plugin),
                       timeout=args.timeout, max_memory=args.max_memory, drawn=args.format == "html",
                       sites=True)
        if only is not None:
            jobs.append(Job(file, **options))
        else:
            for path in python_files([file]):
                unit, cover = _submission_of(file, path)
                jobs.append(Job(str(path), unit=unit, cover=cover, **options))
    results = _run_with_progress(jobs, args.jobs, quiet=args.format != "text" and not args.output,
                                 sandbox=sandbox)
    usage = next((r for r in results if r.error_kind == "usage"), None)
    if usage is not None:  # an option that fits no model: say it once, as argparse would
        return _usage_error(usage.error or "")
    alone = len(args.paths) == 1 and Path(args.paths[0]).is_file()
    if alone and all(r.error_kind == "no-model" for r in results):
        reason = results[0].error if results else MODEL_DEFINITION
        return _usage_error(f"no model found in {args.paths[0]}: {reason}")
    fixed = _fixes(args, jobs, results, sandbox)
    if isinstance(fixed, int):
        return fixed
    results = fixed
    results = _one_row_per_submission(args.paths, results)
    root = _checked_root(args.paths)
    installed = _installed_roots(args.paths)
    results = [_from_installed_root(r, installed).relative_to(root) for r in results]
    if args.baseline_write:
        count = write(args.baseline_write, [(r.id, f.rule, f.module) for r in results for f in r.findings])
        print(f"cnncheck baseline: wrote {count} finding(s) to {args.baseline_write}", file=sys.stderr)
    if baseline is not None:
        _apply_baseline(baseline, results)
    text = FORMATS[args.format](results, rules=rules, root=root, sandbox=sandbox or "none")
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8", errors="backslashreplace")
    else:
        _write_stdout(text if text.endswith("\n") else text + "\n")
    if args.per_model_dir:
        folder = Path(args.per_model_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for result in results:
            if args.format == "html":
                page = FORMATS["html"]([result], rules=rules, root=root, sandbox=sandbox or "none")
                (folder / (_slug(result.id) + ".html")).write_text(page, encoding="utf-8", errors="backslashreplace")
            else:
                (folder / (_slug(result.id) + ".md")).write_text(render_markdown(result), encoding="utf-8",
                                                                 errors="backslashreplace")
    if args.baseline_write:  # the findings are recorded, not failures; what could not be checked still is
        return exit_code(Verdict.CLEAN if r.verdict is Verdict.FINDINGS else r.verdict for r in results)
    return exit_code(r.verdict for r in results)


def _fixes(args: argparse.Namespace, jobs: list[Job], results: list[ModelResult],
           sandbox: str | None) -> list[ModelResult] | int:
    """The results with each finding's fix (computed here, from the files on disk: never taken from a
    worker); with ``--diff`` the exit status after printing the diff, with ``--fix`` the results of
    checking the fixed files again. A model's changes may edit only its own submission's files."""
    from pathlib import Path

    from cnncheck.fixes import apply_fixes, plan_fixes, unified_diff, with_fixes

    checked = [file for file, _ in map(_split_target, args.paths) if Path(file).exists()]
    units = {job.file: job.unit for job in jobs}

    def allowed(result: ModelResult) -> list[str]:
        unit = units.get(result.file)
        return [unit] if unit else checked

    plan = plan_fixes(results, allowed=allowed)
    if not (args.fix or args.diff):
        return with_fixes(results, plan)
    chosen = plan.applied(unsafe=args.unsafe_fixes)
    for site, reason in plan.unfixable.items():
        _say(f"not fixed: {_shown(site)}: {reason}")
    hidden = "" if args.unsafe_fixes or not plan.hidden else (
        f" ({plan.hidden} unsafe fix(es) more with --unsafe-fixes)")
    if args.diff:
        labels = {fix.file: _shown(fix.file) for fix in chosen}
        _write_stdout(unified_diff(chosen, label=labels))
        count = len(chosen)
        print((f"cnncheck: {count} fix(es) would be applied" if count else "cnncheck: nothing to fix") + hidden,
              file=sys.stderr)
        return 1 if count else 0
    changed = set(apply_fixes(chosen))
    print((f"cnncheck: fixed {len(chosen)} place(s) in {len(changed)} file(s)" if changed
           else "cnncheck: nothing to fix") + hidden, file=sys.stderr)
    touched = {r.id for r in results if any(fix.file in changed for fix in map(plan.fix_for, r.findings) if fix)}
    again = [j for j in jobs if any(_of_job(j, model_id) for model_id in touched)]
    if not again:
        return with_fixes(results, plan)
    fresh = _run_with_progress(again, args.jobs, quiet=args.format != "text" and not args.output, sandbox=sandbox)
    kept = [r for r in results if not any(_of_job(j, r.id) for j in again)]
    order = {r.id: i for i, r in enumerate(results)}  # the rows where they were before the fix
    rechecked = sorted([*kept, *fresh], key=lambda r: order.get(r.id, len(order)))
    return with_fixes(rechecked, plan_fixes(rechecked, allowed=allowed))


def _of_job(job: Job, model_id: str) -> bool:
    return model_id.startswith((f"{job.file}::", f"{job.file}:"))


def _shown(path: str) -> str:
    """A path (or ``file:line``) as the user opens it: relative to the current folder when it is under it
    ("/" is no folder to be under)."""
    here = os.getcwd()
    if not os.path.isabs(path) or os.path.dirname(here) == here:
        return path
    relative = os.path.relpath(path, here)
    return path if relative.startswith(os.pardir) else relative


def _apply_baseline(baseline: Baseline, results: list[ModelResult]) -> None:
    """Drop the known findings from the results (the report shows new ones only), and say on stderr
    how many were known and which entries no longer match."""
    from cnncheck.baseline import summary

    known = 0
    for result in results:
        kept = [f for f in result.findings if not baseline.is_known((result.id, f.rule, f.module))]
        if len(kept) < len(result.findings):
            result.notes.append(f"{len(result.findings) - len(kept)} known finding(s) from the baseline not shown")
        known += len(result.findings) - len(kept)
        result.findings = kept
    checked = [(r.id, rule) for r in results if r.error is None for rule in r.rules_run]
    for line in summary(known, baseline.fixed(checked)):
        print(line, file=sys.stderr)


def _split_target(target: str) -> tuple[str, str | None]:
    """``file.py::Name`` or ``package.module:Name`` (one model), else a file or folder."""
    if "::" in target:
        file, _, name = target.partition("::")
        return file, name
    if ":" in target and not target.endswith(".py") and "/" not in target:
        module, _, name = target.partition(":")
        return module, name
    return target, None


def _submission_of(target: str, file: Path) -> tuple[str | None, str | None]:
    """The submission ``file`` belongs to, as the sandbox shows it: in a folder of submissions, the
    sub-folder it is in; a file directly in the folder given shares that folder with its neighbours."""
    from pathlib import Path

    inside = Path(file).relative_to(target).parts if Path(target).is_dir() else ()
    if len(inside) > 1:
        return str(Path(target) / inside[0]), target
    return None, None


def _one_row_per_submission(paths: list[str], results: list[ModelResult]) -> list[ModelResult]:
    """Every submission has a row, and a helper file of one that has models adds none. In a folder given
    on the command line, each sub-folder (or file) is one submission: files without a model give rows
    only when the whole submission has none (one row, with each file's reason), and a sub-folder with no
    Python file at all gets a row too."""
    from pathlib import Path

    from cnncheck.discover import python_files
    from cnncheck.results import ModelResult

    def unit(result: ModelResult) -> tuple[str, str] | None:
        for target in paths:
            try:
                inside = Path(result.file).relative_to(target)
            except ValueError:
                continue
            if Path(target).is_dir() and inside.parts:
                return target, inside.parts[0]
        return None

    units: dict[tuple[str, str] | None, list[ModelResult]] = {}
    for result in results:
        units.setdefault(unit(result), []).append(result)
    for target in (p for p in paths if Path(p).is_dir()):
        for child in sorted(Path(target).iterdir()):
            if child.is_dir() and (target, child.name) not in units and not any(python_files([str(child)])) \
                    and not any(child.rglob("*.py")):  # a folder of test files only (tests/) is no submission
                units[(target, child.name)] = []
    kept: list[ModelResult] = []
    for key, rows in units.items():
        models = [r for r in rows if r.error_kind != "no-model"]
        if models or key is None:
            kept.extend(models if key is not None else rows)
            continue
        folder = str(Path(key[0]) / key[1])
        reasons = "; ".join(r.error or "" for r in rows) or f"no Python file in {folder}"
        kept.append(ModelResult(f"{folder}::<no model>", folder, "<no model>", error_kind="no-model",
                                error=f"no model found in {folder}: {reasons}"))
    return kept


def _write_stdout(text: str) -> None:
    """A report always written: a name or message that the terminal's encoding cannot hold (a folder
    named in Latin-1, a lone surrogate in a student's exception) is escaped, not a UnicodeEncodeError."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    data = text.encode(encoding, "backslashreplace")
    if hasattr(sys.stdout, "buffer"):
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:  # a stream without bytes (a test's capture): give it text it can encode
        sys.stdout.write(data.decode(encoding))


def _checked_root(paths: list[str]) -> Path:
    """The folder that the report's paths are relative to: the current one, when every target is in
    it; else the folder the targets have in common. Targets that share no folder but ``/`` keep the
    current one: a path under it is written from there, any other stays absolute (``tmp/x/model.py``,
    relative to ``/``, would read as a path from the current folder). Run from ``/`` itself, every path
    stays as given (:meth:`ModelResult.relative_to` strips no bare ``/``)."""
    from pathlib import Path

    here = Path.cwd().resolve()
    files = [Path(_split_target(p)[0]).resolve() for p in paths if Path(_split_target(p)[0]).exists()]
    if all(here == f or here in f.parents for f in files):
        return here
    common = Path(os.path.commonpath([f if f.is_dir() else f.parent for f in files]))
    return here if common.parent == common else common


def _installed_roots(paths: list[str]) -> dict[str, Path]:
    """For each ``package.module:Name`` target, the folder its top-level package is installed in
    (site-packages), found as the worker finds it, the current folder first; None of the package is
    imported here."""
    import importlib.util
    from pathlib import Path

    from cnncheck.discover import is_module_target

    roots: dict[str, Path] = {}
    for target in paths:
        module, name = _split_target(target)
        if name is None or not is_module_target(module):
            continue
        here = str(Path.cwd())
        sys.path.insert(0, here)
        try:
            spec = importlib.util.find_spec(module.split(".")[0])
        except (ImportError, ValueError):  # the worker says why it cannot be imported
            spec = None
        finally:
            sys.path.remove(here)
        if spec is not None and spec.submodule_search_locations:
            roots[target] = Path(next(iter(spec.submodule_search_locations))).parent
        elif spec is not None and spec.has_location and spec.origin:
            roots[target] = Path(spec.origin).parent
    return roots


def _from_installed_root(result: ModelResult, installed: dict[str, Path]) -> ModelResult:
    """A model of an installed package with its files written from the package's own folder
    (``torchvision/models/vgg.py:41``), as its id names it: the machine's site-packages is no part of it."""
    for target, root in installed.items():
        if result.id == target or result.id.startswith(target + "["):
            return result.relative_to(root)
    return result


def _slug(model_id: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id).strip("_")


def _run_with_progress(jobs: list[Job], workers: int, quiet: bool, sandbox: str | None) -> list[ModelResult]:
    """A progress bar on a terminal (on stderr, so the report on stdout stays clean); none otherwise."""
    from cnncheck.isolate import check_files

    if quiet or not sys.stderr.isatty():
        return check_files(jobs, workers, sandbox=sandbox)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("cnncheck"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as progress:
        task = progress.add_task("files", total=len(jobs))
        done: set[str] = set()

        def advance(result: object) -> None:
            file = getattr(result, "file", "")
            if file not in done:
                done.add(file)
                progress.advance(task)

        return check_files(jobs, workers, on_result=advance, sandbox=sandbox)
