"""``pytest --cnncheck``'s collection: every model becomes one test item per rule and device.

Imported by :mod:`cnncheck.pytest_plugin` only when cnncheck is enabled for the run.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cnncheck.pytest_options import OPTIONS, Options

if TYPE_CHECKING:
    from _pytest._code.code import TerminalRepr

BASELINE = pytest.StashKey[Any]()


def _load_baseline(path: str) -> Any:
    from cnncheck.baseline import Baseline

    try:
        return Baseline.load(path)
    except ValueError as exc:
        raise pytest.UsageError(f"cnncheck: {exc}") from None



class Collection:
    """Registered only with --cnncheck: claims Python files and config-declared models."""

    def __init__(self, config: pytest.Config, options: Options) -> None:
        self.config = config
        self.options = options
        self.seen: set[Path] = set()
        config.stash[BASELINE] = _load_baseline(options.baseline) if options.baseline else None

    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        if file_path.suffix != ".py" or file_path.name in ("conftest.py", "setup.py", "__init__.py"):
            return None
        self.seen.add(file_path.resolve())
        if self._imported_by_pytest(file_path, parent.session):
            return None  # its models join the module pytest imports (pytest_make_collect_report): one import
        return ModelFile.from_parent(parent, path=file_path, entries=self._entries_for(file_path))

    def _imported_by_pytest(self, file_path: Path, session: pytest.Session) -> bool:
        """pytest's own python plugin collects a file given on the command line, or one that matches
        ``python_files``."""
        return session.isinitpath(file_path) or self._test_file(file_path)

    def _test_file(self, file_path: Path) -> bool:
        return any(file_path.match(pattern) for pattern in self.config.getini("python_files"))

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector) -> Any:
        """A module pytest imports: student code that ends the process fails this module alone, and the
        module's models join its tests."""
        if not isinstance(collector, pytest.Module) or collector.path.name in ("conftest.py", "__init__.py"):
            return (yield)
        from cnncheck.discover import import_failure
        from cnncheck.exits import CodeExited, contained_exits

        try:
            with contained_exits(f"{collector.path.name}, while it is imported,"):
                report = yield
        except CodeExited as exc:
            return self._unimportable(collector, import_failure(collector.path, exc), always_an_item=True)
        test_file = self._test_file(collector.path)
        if report.failed and not test_file:  # a model file named on the command line: its error item
            call = getattr(report, "call", None)
            error = call.excinfo.value if call is not None and call.excinfo is not None else None
            cause = error.__cause__ if error is not None and error.__cause__ is not None else error
            what = import_failure(collector.path, cause) if cause is not None else str(report.longrepr)
            return self._unimportable(collector, what)
        if report.passed:
            report.result.extend(model_nodes(collector, collector.obj, self._entries_for(collector.path),
                                             discover=True, test_file=test_file))
        return report

    def _unimportable(self, module: pytest.Module, error: str, always_an_item: bool = False) -> pytest.CollectReport:
        """One error item for a file that does not import, so that the other files are still checked. A
        test module that raises keeps pytest's collection error, unless it tried to end the process."""
        if self._test_file(module.path) and not always_an_item:
            return pytest.CollectReport(module.nodeid, "failed", error, [])
        return pytest.CollectReport(module.nodeid, "passed", None,
                                    [BrokenModel.from_parent(module, name="import", error=error)])

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config,
                                      items: list[pytest.Item]) -> None:
        """Models named in cnncheck_models whose files were not among the collected paths (an installed
        package's, say), when the run selects no paths of its own: a run of named files or node ids runs
        only those. They are collected as pytest collects (counted in "collected N items"), ahead of the
        selection by -k and -m."""
        if config.args_source is pytest.Config.ArgsSource.ARGS:
            return
        by_file: dict[Path, list[Any]] = {}
        for entry in self._parsed_entries():
            if entry.file not in self.seen:
                by_file.setdefault(entry.file, []).append(entry)
        for file, entries in by_file.items():
            collector = ModelFile.from_parent(session, path=file, entries=entries, only_entries=True)
            items.extend(session.genitems(collector))

    def _parsed_entries(self) -> list[Any]:
        from cnncheck.discover import parse_entry

        try:
            return [parse_entry(line, self.config.rootpath) for line in self.options.models]
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None

    def _entries_for(self, file_path: Path) -> list[Any]:
        if not self.options.models:
            return []
        return [e for e in self._parsed_entries() if e.file == file_path.resolve()]

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        from cnncheck.plugins import all_rules
        from cnncheck.rules import select_rules

        problems: list[Any] = []
        rules = select_rules(all_rules(problems=problems), self.options.select, self.options.ignore)
        header = f"cnncheck: {len(rules)} rules, device {', '.join(self.options.devices())}, fail on {self.options.fail_on}"
        return [header, *(f"cnncheck: {problem}" for problem in dict.fromkeys(problems))]


class ModelFile(pytest.File):
    """A Python file: its declared models (``@cnncheck.model``, cnncheck_models), else every
    ``nn.Module`` subclass it defines that builds with no arguments.

    A file that a ``pkg.mod:Attr`` line of cnncheck_models names is imported as that module, as the
    command imports the target (relative imports work); outside the rootdir (an installed package's),
    its node ids are the target as written, ``torchvision.models:resnet18::RULE[DEVICE]``."""

    def __init__(self, *, entries: list[Any] | None = None, only_entries: bool = False, **kwargs: Any) -> None:
        self.entries = entries or []
        self.only_entries = only_entries
        self.module_name: str | None = next((e.module for e in self.entries if e.module), None)
        rootpath = kwargs["parent"].config.rootpath
        outside = self.module_name is not None and not Path(kwargs["path"]).is_relative_to(rootpath)
        self.by_module = self.module_name if outside else None
        if self.by_module is not None:  # pytest would name it "::__init__.py", from no path at all
            kwargs.update(name=self.by_module, nodeid=self.by_module)
        super().__init__(**kwargs)

    def collect(self) -> Iterator[pytest.Collector | pytest.Item]:
        from cnncheck.discover import import_failure, load_file, load_module
        from cnncheck.exits import CodeExited

        try:
            module = load_module(self.module_name) if self.module_name else load_file(self.path)
        except Exception as exc:  # the student's file does not import (or exits): one error item, others go on
            if isinstance(exc, CodeExited) and isinstance(exc.raised, pytest.skip.Exception):
                raise exc.raised from None  # pytest.importorskip: the file is skipped, as pytest skips it
            yield BrokenModel.from_parent(self, name="import", nodeid=self._child_id("import"),
                                          error=import_failure(self.module_name or self.path, exc))
            return
        yield from model_nodes(self, module, self.entries, discover=not self.only_entries)

    def _child_id(self, name: str) -> str | None:
        """The node id of a model of the file: pytest's, or ``pkg.mod:Attr`` for an installed package's."""
        return f"{self.by_module}:{name}" if self.by_module is not None else None


def model_nodes(parent: pytest.Collector, module: Any, entries: list[Any], *, discover: bool,
                test_file: bool | None = None) -> Iterator[pytest.Collector | pytest.Item]:
    """The collectors of the models of ``module`` (imported from ``parent.path``), discovered and named in
    ``entries``, under ``parent``: a file of ours, or a module that pytest imported itself."""
    from cnncheck.discover import NoSuchModel, candidates, model_named

    options = parent.config.stash[OPTIONS]
    path = parent.path
    child_id = parent._child_id if isinstance(parent, ModelFile) else lambda name: None
    found: dict[str, list[Any]] = {}
    for candidate in candidates(module, path, test_file=test_file) if discover else []:
        found.setdefault(candidate.name, []).append(candidate)
    shapes: dict[str, tuple[int, ...] | None] = {}
    invariants: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry.left_out:  # ignore=*: this model of the ini key is not checked, even if discovered
            found.pop(entry.attr, None)
            continue
        try:  # as the command finds pkg.mod:Name and file.py::Name
            named = model_named(module, path, entry.attr, entry.module or path.name, by_module=bool(entry.module))
        except NoSuchModel as exc:
            yield BrokenModel.from_parent(parent, name=entry.attr, nodeid=child_id(entry.attr),
                                          error=f"{exc} (from cnncheck_models)")
            continue
        found[entry.attr] = [replace(c, spec=c.spec._replace(ignore=(*c.spec.ignore, *entry.ignore))) for c in named]
        shapes[entry.attr] = entry.shape
        invariants[entry.attr] = dict(entry.invariants)
    for name, variants in found.items():
        shape = shapes.get(name) or variants[0].spec.input_shape or options.default_shape
        yield ModelCollector.from_parent(parent, name=name, nodeid=child_id(name), variants=variants, shape=shape,
                                         invariants=invariants.get(name))


class ModelCollector(pytest.Collector):
    """One model (or factory with variants): built and checked once per variant and device, and
    shared by its rule items ``RULE[device]`` / ``RULE[variant-device]``."""

    def __init__(self, *, variants: list[Any], shape: tuple[int, ...] | None,
                 invariants: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.variants = {c.variant: c for c in variants}
        self.spec = variants[0].spec
        self.invariants = {**dict(self.spec.invariants), **(invariants or {})}
        self.line = variants[0].line
        self.shape = shape
        self.results: dict[tuple[str | None, str], Any] = {}
        self.error_reported_by: dict[tuple[str | None, str], str] = {}
        self.reported_to_html: dict[tuple[str | None, str], str] = {}

    def collect(self) -> Iterator[pytest.Item]:
        from cnncheck.plugins import all_rules
        from cnncheck.rules import select_rules

        options = self.config.stash[OPTIONS]
        rule_ignores = [p for p in self.spec.ignore if ":" not in p]
        rules = select_rules(all_rules(problems=[]), options.select, [*options.ignore, *rule_ignores])
        for variant in self.variants:
            for device in options.devices():
                param = f"{variant}-{device}" if variant else device
                for rule in rules:
                    # an explicit nodeid: pytest 9 parses "name[param]" into a structured id, and
                    # --lf matches items by that structure
                    name = f"{rule.id}[{param}]"
                    item = RuleItem.from_parent(self, name=name, nodeid=f"{self.nodeid}::{name}",
                                                rule_id=rule.id, variant=variant, device=device)
                    item.add_marker("cnncheck")
                    if device == "cuda":
                        item.add_marker(pytest.mark.skipif(not cuda_available(),
                                                           reason="CUDA is not available on this machine"))
                    yield item
                if self.invariants:
                    name = f"invariants[{param}]"
                    invariants = InvariantsItem.from_parent(self, name=name, nodeid=f"{self.nodeid}::{name}",
                                                            variant=variant, device=device)
                    invariants.add_marker("cnncheck")
                    if device == "cuda":
                        invariants.add_marker(pytest.mark.skipif(not cuda_available(),
                                                                 reason="CUDA is not available on this machine"))
                    yield invariants

    def result(self, variant: str | None, device: str) -> Any:
        """The report (or the reason there is none) for one variant on one device, on first use."""
        key = (variant, device)
        if key not in self.results:  # paths as pytest shows them: relative to the rootdir
            self.results[key] = self._check(self.variants[variant], device).relative_to(self.config.rootpath)
        return self.results[key]

    def _check(self, candidate: Any, device: str) -> Any:
        from cnncheck.candidate import check_candidate
        from cnncheck.fixes import plan_fixes, with_fixes

        options = self.config.stash[OPTIONS]
        with _cores_shared_among_xdist_workers():
            result = check_candidate(candidate, shape=self.shape, device=device, select=options.select,
                                     ignore=options.ignore, drawn=bool(options.html), sites=True)
        # the suggested edit, shown in the failure; pytest never edits a file (cnncheck check --fix does)
        return with_fixes([result], plan_fixes([result], allowed=lambda _: [self.config.rootpath]))[0]


@contextlib.contextmanager
def _cores_shared_among_xdist_workers() -> Iterator[None]:
    """Under pytest-xdist, each worker's check uses its share of the cores: torch's default of one thread
    per core in every worker oversubscribes them (on 2 cores, -n 2 ran 4x slower than serial)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers < 2:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _skip(reason: str) -> None:
    """Skip at the model's line, as a skip by marker is reported, not at this line of cnncheck's."""
    raise pytest.skip.Exception(reason, _use_item_location=True)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


class RuleFindings(Exception):
    """Raised by a failing rule item; rendered by ``repr_failure`` as the findings, no traceback."""


class ModelUnusable(Exception):
    pass


class RuleCrashed(Exception):
    """cnncheck's own error (or a plugin rule's) in one rule: a failure, worded as ours, not the student's."""


class RuleItem(pytest.Item):
    def __init__(self, *, rule_id: str, variant: str | None, device: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rule_id = rule_id
        self.variant = variant
        self.device = device
        self.user_properties.append(("cnncheck_rule", rule_id))
        self.user_properties.append(("cnncheck_model", self.parent.nodeid))  # type: ignore[union-attr]

    def runtest(self) -> None:
        collector: ModelCollector = self.parent  # type: ignore[assignment]
        result = collector.result(self.variant, self.device)
        options = self.config.stash[OPTIONS]
        if options.html and collector.reported_to_html.setdefault((self.variant, self.device), self.nodeid) == self.nodeid:
            self.user_properties.append(("cnncheck_result", json.dumps(result.to_dict())))  # for --cnncheck-html
        if result.error is not None:
            self.user_properties.append(("cnncheck_unusable", self.parent.nodeid))  # type: ignore[union-attr]
            first = collector.error_reported_by.setdefault((self.variant, self.device), self.nodeid)
            if first != self.nodeid:
                _skip(f"{collector.name} could not be checked; the reason is reported by {first}")
            raise ModelUnusable(result.error + (f"\n  at: {result.location}" if result.location else ""))
        findings = [f for f in result.findings if f.rule == self.rule_id]
        model = collector.nodeid + (f"[{self.variant}]" if self.variant else "")
        keys = [(model, f.rule, f.module) for f in findings]
        self.user_properties.append(("cnncheck_modules", ",".join(f.module or "<model>" for f in findings)))
        self.user_properties.append(("cnncheck_findings", str(len(findings))))
        self.user_properties.append(("cnncheck_keys", json.dumps(keys)))
        self.user_properties.append(("cnncheck_checked", json.dumps([model, self.rule_id])))
        notes = [f"{model}: {note}" for note in result.notes]
        if result.shape_note:
            self.user_properties.append(("cnncheck_inferred_shape", model))
        if notes:
            self.user_properties.append(("cnncheck_notes", json.dumps(notes)))
        options = self.config.stash[OPTIONS]
        baseline = self.config.stash.get(BASELINE, None)
        known = [f for f, key in zip(findings, keys) if baseline is not None and baseline.is_known(key)]
        findings = [f for f in findings if f not in known]
        if known:
            self.user_properties.append(("cnncheck_baselined", str(len(known))))
        from cnncheck.findings import RuleStatus
        from cnncheck.verdict import CRASH_ADVICE, failing, rule_state

        outcome = result.outcome(self.rule_id)
        state = rule_state(outcome, findings, options.fail_on)
        self.user_properties.append(("cnncheck_status", str(state)))
        note = f"({result.shape_note})\n" if result.shape_note else ""
        if state is RuleStatus.CRASHED:
            raise RuleCrashed(f"cnncheck internal error in rule {self.rule_id} on {model}: {outcome.reason}\n"
                              f"{CRASH_ADVICE}")
        if result.plugin_problems:  # every item of the model: any one of them may be the one selected or sent
            raise RuleCrashed(f"a plugin failed while {model} was checked, so the verdict of {self.rule_id} "
                              f"cannot be trusted:\n" + "\n".join(f"  {problem}" for problem in result.plugin_problems))
        failing_findings = failing(findings, options.fail_on)
        if failing_findings and options.baseline_write:
            return  # recorded in the baseline being written (the summary says so), as the command does
        if failing_findings:
            # each finding once, in full; the first line is the short summary's
            partial = f"\nnot all of the model was checked: {outcome.reason}" if outcome.reason else ""
            blocks = "\n\n".join(f.render() for f in findings)
            raise RuleFindings(f"{blocks}\n{note.rstrip()}{partial}".rstrip())
        if findings:
            self.user_properties.append(("cnncheck_passing_warnings", _render(findings)))
        if state is RuleStatus.NOT_CHECKED:
            _skip(f"not checked: {outcome.reason}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str | TerminalRepr:
        if isinstance(excinfo.value, (RuleFindings, ModelUnusable, RuleCrashed)):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        # pytest needs a line: a skip by marker (no CUDA) is reported at it
        return self.path, self.parent.line, _domain(self)  # type: ignore[union-attr]


class InvariantsFailed(Exception):
    pass


class InvariantsItem(pytest.Item):
    """``MODEL::invariants[device]``: the architecture invariants declared with the model
    (``@cnncheck.model(max_params=..., output_shape=...)`` or its ``cnncheck_models`` line), asserted
    with ``cnncheck.assert_architecture``."""

    def __init__(self, *, variant: str | None, device: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.variant = variant
        self.device = device
        self.user_properties.append(("cnncheck_invariants", self.parent.nodeid))  # type: ignore[union-attr]

    def runtest(self) -> None:
        from cnncheck.api import CheckError, CheckFailed
        from cnncheck.invariants import assert_architecture

        collector: ModelCollector = self.parent  # type: ignore[assignment]
        candidate = collector.variants[self.variant]
        shape = collector.shape or candidate.spec.input_shape
        counts_only = set(collector.invariants) <= {"params", "max_params", "min_params", "trainable_params"}
        if shape is None and not counts_only:  # the shape the rule items inferred from the first conv
            shape = collector.result(self.variant, self.device).input_shape
        if shape is None and not counts_only:
            raise ModelUnusable(f"{collector.name}: its invariants need an input shape: declare "
                                f"@cnncheck.model(input_shape=...) or set cnncheck_input_shape")
        try:
            model = candidate.build()
        except Exception as exc:
            raise ModelUnusable(f"{collector.name} could not be built: {type(exc).__name__}: {exc}") from None
        try:
            with _cores_shared_among_xdist_workers():
                if shape is None:  # parameter counts need no input
                    from cnncheck.invariants import assert_param_count

                    counts = collector.invariants
                    assert_param_count(model, counts.get("params"), max=counts.get("max_params"),
                                       min=counts.get("min_params"), trainable=counts.get("trainable_params"))
                else:
                    assert_architecture(model, shape, device=self.device, **collector.invariants)
        except CheckFailed as exc:
            raise InvariantsFailed(str(exc)) from None
        except (CheckError, TypeError, ValueError) as exc:
            raise ModelUnusable(f"{collector.name}'s invariants could not be checked: {exc}") from None

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str | TerminalRepr:
        if isinstance(excinfo.value, (InvariantsFailed, ModelUnusable)):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.parent.line, _domain(self)  # type: ignore[union-attr]


class BrokenModel(pytest.Item):
    """A file or declared model that cannot even be collected: one error item that says why."""

    def __init__(self, *, error: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error
        self.add_marker("cnncheck")
        self.user_properties.append(("cnncheck_unusable", self.nodeid))

    def runtest(self) -> None:
        raise ModelUnusable(self.error)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        return str(excinfo.value)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, _domain(self)


def _domain(item: pytest.Item) -> str:
    """The node path after the file (``ConvNet::feature-size-mismatch[cpu]``): failure headlines and
    verbose lines then name the model and the rule."""
    chain = item.listchain()
    after_file = next((i + 1 for i, node in enumerate(chain) if isinstance(node, pytest.File)), 0)
    return "::".join(node.name for node in chain[after_file:])


def _render(findings: list[Any]) -> str:
    from cnncheck.findings import render_findings

    return render_findings(findings)


# -- summary ------------------------------------------------------------------------------------------
class Reporter:
    """Counts findings from the item reports (so it also works on the pytest-xdist controller, which
    sees only reports) and prints the closing summary."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.models: set[str] = set()  # checked
        self.unusable: set[str] = set()  # could not be checked: import, build, forward
        self.inferred_shapes: set[str] = set()  # models checked on an input shape cnncheck inferred
        self.findings: Counter[str] = Counter()
        self.passing_warnings: list[str] = []
        self.keys: set[tuple[str, str, str]] = set()
        self.notes: dict[str, None] = {}
        self.checked: set[tuple[str, str]] = set()
        self.baselined = 0
        self.unfinished: Counter[str] = Counter()  # rule items not checked or crashed, by state
        self.invariants: Counter[str] = Counter()  # invariants items, by outcome
        self.html_results: dict[str, dict[str, Any]] = {}  # --cnncheck-html: each model's result, by id

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props: dict[str, Any] = dict(report.user_properties)
        if report.when != "call":
            return
        if "cnncheck_unusable" in props:
            self.unusable.add(str(props["cnncheck_unusable"]))
        if "cnncheck_result" in props:
            data = json.loads(str(props["cnncheck_result"]))
            self.html_results.setdefault(f"{data['id']}@{data.get('device', '')}", data)
        if "cnncheck_invariants" in props:
            self.invariants["held" if report.passed else "broken" if report.failed else "skipped"] += 1
        if "cnncheck_checked" not in props:
            return
        self.models.add(str(props["cnncheck_model"]))
        count = int(props.get("cnncheck_findings", 0) or 0)
        if count:
            self.findings[str(props["cnncheck_rule"])] += count
        if "cnncheck_passing_warnings" in props:
            self.passing_warnings.append(f"{report.nodeid}\n{props['cnncheck_passing_warnings']}")
        self.keys.update(tuple(k) for k in json.loads(str(props.get("cnncheck_keys", "[]"))))
        if "cnncheck_checked" in props:
            self.checked.add(tuple(json.loads(str(props["cnncheck_checked"]))))
        self.baselined += int(props.get("cnncheck_baselined", 0) or 0)
        if props.get("cnncheck_status") in ("not-checked", "crashed"):
            self.unfinished[str(props["cnncheck_status"])] += 1
        self.notes.update(dict.fromkeys(json.loads(str(props.get("cnncheck_notes", "[]")))))
        if "cnncheck_inferred_shape" in props:
            self.inferred_shapes.add(str(props["cnncheck_inferred_shape"]))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        writer = terminalreporter
        if self.passing_warnings:
            writer.write_sep("=", "cnncheck warnings (passing: --cnncheck-fail-on=error)")
            for text in self.passing_warnings:
                writer.write_line(text)
        if not self.models and not self.unusable and not self.invariants and not self.options.baseline_write:
            return  # nothing ran (--collect-only, or every cnncheck item deselected)
        per_rule = ", ".join(f"{rule}: {n}" for rule, n in sorted(self.findings.items())) or "none"
        unusable = f", {len(self.unusable)} could not be checked" if self.unusable else ""
        writer.write_sep("-", "cnncheck")
        writer.write_line(f"cnncheck: {len(self.models)} model(s) checked{unusable}; findings per rule: {per_rule}")
        if self.unfinished:
            states = ", ".join(f"{n} {state}" for state, n in sorted(self.unfinished.items()))
            writer.write_line(f"cnncheck: rule items that did not pass for lack of a verdict: {states} "
                              f"(the reasons: pytest -rs, and the failures above)")
        if self.invariants:
            counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(self.invariants.items()))
            writer.write_line(f"cnncheck: architecture invariants: {counts}")
        for note in self.notes:
            writer.write_line(f"cnncheck: {note}")
        if self.inferred_shapes:
            from cnncheck.discover import inferred_shapes_note

            writer.write_line(f"cnncheck: {inferred_shapes_note(len(self.inferred_shapes))}")
        self._baseline_summary(writer)
        if self.options.html:
            writer.write_line(f"cnncheck: {self._write_html()}")
        if self.findings:
            writer.write_line("cnncheck: `cnncheck rules RULE-ID` explains a rule and how to fix it")

    def _write_html(self) -> str:
        from cnncheck.html_report import render_html
        from cnncheck.plugins import all_rules
        from cnncheck.results import ModelResult
        from cnncheck.rules import select_rules

        results = [ModelResult.from_dict(data) for data in self.html_results.values()]
        rules = select_rules(all_rules(problems=[]), self.options.select, self.options.ignore)
        Path(self.options.html).write_text(render_html(results, rules=rules), encoding="utf-8",
                                           errors="backslashreplace")
        return f"wrote the HTML report of {len(results)} model(s) to {self.options.html}"

    def _baseline_summary(self, writer: Any) -> None:
        if self.options.baseline:
            from cnncheck.baseline import summary

            fixed = _load_baseline(self.options.baseline).fixed(self.checked, matched=self.keys)
            for line in summary(self.baselined, fixed):
                writer.write_line(line)
        if self.options.baseline_write:
            from cnncheck.baseline import write

            count = write(self.options.baseline_write, self.keys)
            writer.write_line(f"cnncheck baseline: wrote {count} finding(s) to {self.options.baseline_write}")


# -- fixtures -----------------------------------------------------------------------------------------
class Checker:
    """The ``cnncheck`` fixture: ``check_model`` and an assertion bound to the session's options."""

    def __init__(self, options: Options) -> None:
        self.options = options

    def check(self, model: Any, example_input: Any, **kwargs: Any) -> Any:
        from cnncheck.api import check_model

        kwargs.setdefault("checks", self.options.select)
        kwargs["ignore"] = [*self.options.ignore, *kwargs.get("ignore", [])]
        return check_model(model, example_input, **kwargs)

    def assert_ok(self, model: Any, example_input: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        from cnncheck.api import CheckFailed
        from cnncheck.verdict import Verdict, verdict

        report = self.check(model, example_input, **kwargs)
        if verdict(report.outcomes, report.findings, fail_on=self.options.fail_on,
                   plugin_failed=bool(report.plugin_problems)) is not Verdict.CLEAN:
            raise CheckFailed(report)
        return report


