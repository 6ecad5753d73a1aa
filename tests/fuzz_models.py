"""Random but valid CNNs whose cnncheck verdict is known by construction (see tests/test_fuzz.py).

``generate(chooser)`` draws an architecture (a list of steps) from any object with an
``integer(lo, hi)`` method: hypothesis' ``data.draw`` in the property test, ``random.Random(seed)``
(:class:`RandomChooser`) to rebuild a model from a seed in a file. Every choice's first option is the
simplest and defect-free, so hypothesis shrinks towards small, clean models.

``Arch.build()`` renders the steps either as an ``nn.Sequential`` of layers (runs of functional steps
become a :class:`FuncNet` child) or as one :class:`FuncNet` whose ``forward`` makes functional calls
(``F.conv2d`` with its own parameters, ``F.batch_norm(..., training=self.training)``, ...); a
functional net can hold layers as children too. It returns the model and the exact set of
``(rule, module)`` pairs that ``cnncheck.check_model`` must report.

Ground truth
------------
Each defect is one kind per rule, placed at a random step:

=========================  ============================================================================
rule                       injected defect (reported at)
=========================  ============================================================================
redundant-bias-before-bn   a conv/linear bias that reaches a training-mode BatchNorm only through ops
                           that carry a per-channel constant: directly, through max/avg/adaptive
                           pooling, through a residual add or channel concat (the conv, or the module
                           whose forward makes the functional conv call)
conv-param-formula         a hand-written conv whose weight is stored with the wrong shape (swapped
                           channels, flattened, padded kernel) but that still computes a valid conv
pool-has-parameters        a hand-written pool with a learnable scale, or an nn.MaxPool with a parameter
pool-mixes-channels        a hand-written pool that takes the max over channels, or rolls them
bn-not-per-channel         a hand-written BN with per-pixel (dim=0) or whole-tensor statistics
bn-eval-behaviour          a hand-written BN that always normalises with batch statistics
bn-train-behaviour         a hand-written BN with Keras' momentum convention and momentum=0.1
mode-not-propagated        an nn.BatchNorm in a plain list attribute (``bns[0]``), ``F.dropout(x, p)``
                           without ``training``, or ``F.batch_norm(..., training=True)`` (the module
                           whose forward makes the call; bn-eval-behaviour when that module is nothing
                           but the call, with its own gamma, beta and running statistics: then it is
                           a BatchNorm layer that ignores ``self.training``)
feature-size-mismatch      a Linear (module or ``F.linear``) whose in_features is off
=========================  ============================================================================

Layers are also written the ways real code writes them: convolutions as ``nn.Conv``, by hand with
``F.conv*d``, weight-standardised (filters normalised on every call), TensorFlow-style (``F.pad`` then a
conv without padding) or inside a block that stores ``kernel_size`` and ``stride`` (not a pool);
BatchNorms as ``nn.BatchNorm``, by hand with buffers, through ``F.batch_norm``, or the d2l.ai way with
the moving statistics as plain tensor attributes. Two more defects come with the latter: the mode chosen
by ``torch.is_grad_enabled()`` (mode-not-propagated) and moving statistics that keep their autograd
history (bn-train-behaviour).

Look-alikes that are not defects are generated as well: a bias then ReLU/GELU/SiLU/dropout (module or
``F.dropout(..., training=self.training)``) then BN; hand-written BNs (correct or not) that apply
ReLU/SiLU/GELU/LeakyReLU(0.2) in their own forward, before normalising (then a bias before them is not
cancelled) or after; a bias then a hidden/eval-ignoring/Keras-momentum
BN, or a per-pixel BN (its mean over the batch at each position removes a per-channel constant too):
both findings are expected.

How the per-channel constant of a bias is tracked (``State.live``): ops that carry it exactly (max and
adaptive pooling, avg pooling without counted padding, flatten, add, cat) keep it; ops that end
cnncheck's dataflow search (activations, dropout in train mode, Linear) drop it; a BN that subtracts a
per-channel (or per-pixel) mean cancels it, which is the finding.

Combinations that are excluded, because their ground truth is ambiguous
-----------------------------------------------------------------------
* A live bias never meets a channel-max pool (it keeps no per-channel constant; cnncheck's dataflow ends
  there, as it should, but whether the max picks the biased channel depends on the data) nor enters a
  residual block (its input feeds two paths; the generator does not track the constant through both).
  An activation is inserted first. A scaled or rolled hand-written pool carries it (a learnable scale
  or a channel roll keeps one constant per channel). A conv without zero padding carries it
  (a conv of a constant is a constant; cnncheck follows it), one with zero padding gets an activation first.
* No bias reaches a BN when the head is broken (feature-size-mismatch): the forward then raises at the
  Linear, no backward pass can confirm that the bias gradient is zero, so whether the redundant bias is
  reported is not a property of the architecture.
* Every output position of a conv reads the input somewhere, not only padding (the residual bodies'
  "same" convs always do; other convs fall back to 1x1).
* A per-pixel BN only sees maps with more than one position (on a 1x1 map per-pixel statistics are
  per-channel ones), and BatchNorms always see at least 2 channels.
* Wrong hand-written convs have groups=1, and "swapped" channels only when C_in != C_out (otherwise the
  swapped shape is the right shape).
* A live bias never reaches a whole-tensor BN, nor an AvgPool that counts its zero padding: in
  cnncheck's dataflow these are a BatchNorm and a pass-through op, and the verdict is left to the
  numeric confirmation (is the bias gradient 0?), which depends on the input: ReLU then a MaxPool whose
  windows all have a positive max carries a small per-channel shift unchanged, so a later per-channel
  BN cancels a bias that a whole-tensor BN did not; counted padding keeps the constant exactly when
  every window covers as many real positions.
* After a broken Linear nothing is injected (a bad dropout there never runs: forward raises first).
* An in-place ReLU never directly follows another activation, nor a BN that applies one after
  normalising (that is a different student bug: autograd raises in backward), and a channel-max pool returns a copy, not an expanded view that an in-place op would write to.

Known cnncheck bugs found by the fuzz have regression tests in tests/test_fuzz_regressions.py; the
generator does not steer around any of them (fix the engine, not the generator).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

RB = "redundant-bias-before-bn"
CONV_RULE = "conv-param-formula"
POOL_PARAMS = "pool-has-parameters"
POOL_MIX = "pool-mixes-channels"
PER_CHANNEL = "bn-not-per-channel"
BN_EVAL = "bn-eval-behaviour"
BN_TRAIN = "bn-train-behaviour"
MODE = "mode-not-propagated"
FEATURES = "feature-size-mismatch"
NOT_USED = "layer-not-used"
REUSED = "bn-reused"
NO_GRADIENT = "parameter-without-gradient"
BATCH = 4


# -- choosers ----------------------------------------------------------------------------------------
class RandomChooser:
    """Draws from ``random.Random(seed)``: the same seed always gives the same architecture."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


def pick(ch: Any, options: list[Any]) -> Any:
    return options[ch.integer(0, len(options) - 1)]


def weighted(ch: Any, pairs: list[tuple[int, Any]]) -> Any:
    """One option, with probability proportional to its weight; shrinks to the first one."""
    pairs = [(w, o) for w, o in pairs if w > 0]
    n = ch.integer(0, sum(w for w, _ in pairs) - 1)
    for w, option in pairs:
        if n < w:
            return option
        n -= w
    raise AssertionError("unreachable")


def chance(ch: Any, percent: int) -> bool:
    """True with probability ``percent``; shrinks to False."""
    return ch.integer(0, 99) >= 100 - percent


# -- the architecture --------------------------------------------------------------------------------
@dataclass(eq=False)
class Step:
    kind: str  # conv, pool, norm, act, drop, res, flatten, linear
    impl: str  # 'func': a functional call in a FuncNet's forward; anything else: a module
    cfg: dict[str, Any]
    expect: set[str] = field(default_factory=set)
    body: list[Step] = field(default_factory=list)  # res
    proj: Step | None = None  # res
    owner: nn.Module | None = None  # set when built: the module, or the FuncNet making the call
    suffix: str = ""  # set when built: "bns[0]" for a BN kept in a plain list of ``owner``
    shares: Step | None = None  # norm: the earlier nn.BatchNorm step whose module this one runs again

    def __repr__(self) -> str:
        extra = f" expect={sorted(self.expect)}" if self.expect else ""
        inner = f" body={self.body!r} proj={self.proj!r}" if self.kind == "res" else ""
        return f"{self.kind}/{self.impl}{self.cfg}{extra}{inner}"


@dataclass
class State:
    c: int
    size: int  # spatial side (square maps) or length
    live: list[Step]  # conv/linear steps whose bias is still a per-channel constant here
    last: str = ""


@dataclass
class Arch:
    rank: int
    style: str  # 'seq' or 'func'
    in_channels: int
    size: int
    steps: list[Step]
    eval_first: bool

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (BATCH, self.in_channels) + (self.size,) * self.rank

    def all_steps(self) -> list[Step]:
        out: list[Step] = []

        def walk(steps: list[Step]) -> None:
            for s in steps:
                out.append(s)
                walk(s.body)
                if s.proj is not None:
                    out.append(s.proj)

        walk(self.steps)
        return out

    def build(self) -> Built:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(12345)
            if self.style == "seq":
                model: nn.Module = build_sequential(self.steps, self.rank)
            else:
                model = FuncNet(self.steps, self.rank)
        names = {id(m): n for n, m in model.named_modules()}
        hidden = []
        expected = set()
        for step in self.all_steps():
            assert step.owner is not None, step
            name = names[id(step.owner)]
            if step.suffix:
                name = f"{name}.{step.suffix}" if name else step.suffix
                hidden.append(step.owner.bns[int(step.suffix[4:-1])])  # type: ignore[index]
            expected |= {(rule, name) for rule in step.expect}
        if self.eval_first:
            model.eval()
        return Built(model, expected, hidden)

    def describe(self) -> str:
        lines = [f"rank={self.rank} style={self.style} input={self.input_shape} eval_first={self.eval_first}"]
        lines += [f"  {s!r}" for s in self.steps]
        return "\n".join(lines)


@dataclass
class Built:
    model: nn.Module
    expected: set[tuple[str, str]]
    hidden: list[nn.Module]  # modules kept in plain lists: not in model.modules()

    def all_modules(self) -> list[nn.Module]:
        return list(self.model.modules()) + self.hidden


# -- generation --------------------------------------------------------------------------------------
class Generator:
    def __init__(self, ch: Any, rank: int, broken_head: bool) -> None:
        self.ch = ch
        self.rank = rank
        self.broken_head = broken_head
        self.plain_norms: dict[int, Step] = {}  # an nn.BatchNorm step per channel count, that a later one may share

    def impl(self, ctx: str, module_options: list[str], func: bool = True) -> str:
        """'func' often inside a functional net, sometimes inside a Sequential (a FuncNet segment)."""
        pairs = [(3 if i == 0 else 1, o) for i, o in enumerate(module_options)]
        if func:
            pairs.append((4 if ctx == "func" else 1, "func"))
        return weighted(self.ch, pairs)

    def kill(self, st: State, ctx: str, out: list[Step]) -> None:
        """An activation, so that no bias constant reaches an op whose verdict would be ambiguous."""
        if st.live:
            self.act(st, ctx, out, inplace_ok=st.last != "act")

    # one step ---------------------------------------------------------------------------------------
    def step(self, st: State, ctx: str, out: list[Step], in_body: bool) -> None:
        kinds = [(4, "conv"), (3, "act"), (3, "norm"), (1, "drop"), (1, "spare")]
        if not in_body:
            kinds += [(2, "pool"), (2, "res")]
        kind = weighted(self.ch, kinds)
        if kind == "conv":
            self.conv(st, ctx, out, same=in_body, stride=1)
        elif kind == "act":
            if st.last != "act":
                self.act(st, ctx, out)
        elif kind == "norm":
            self.norm(st, ctx, out)
        elif kind == "drop":
            self.drop(st, ctx, out)
        elif kind == "pool":
            self.pool(st, ctx, out)
        elif kind == "spare":
            self.spare(st, out)
        else:
            self.residual(st, ctx, out)

    def spare(self, st: State, out: list[Step]) -> None:
        """A layer registered in a functional net that its forward never runs (layer-not-used), or a
        dropout that it runs only in train mode (a look-alike: a pass of forward runs it)."""
        what = pick(self.ch, ["conv", "drop", "norm"])
        mode = pick(self.ch, ["unused", "trainonly"]) if what == "drop" else "unused"
        step = Step("spare", "func", dict(what=what, mode=mode, c=st.c))
        if mode == "unused":
            step.expect.add(NOT_USED)
        else:
            st.live, st.last = [], "drop"  # in train mode it is a dropout: the bias search ends there
        out.append(step)

    def conv(self, st: State, ctx: str, out: list[Step], *, same: bool = False, stride: int | None = None,
             c_out: int | None = None) -> Step:
        ch = self.ch
        carried = st.live  # a conv without zero padding keeps a per-channel constant (decided below)
        st.live = []
        c_in = st.c
        c_out = c_out if c_out is not None else ch.integer(2, 8)
        groups = [1] + [g for g in (2, 4) if c_in % g == 0 and c_out % g == 0]
        if c_in > 1 and c_out % c_in == 0 and c_in not in groups:
            groups.append(c_in)  # depthwise
        g = pick(ch, groups)
        if same:
            k = pick(ch, [3, 1, 5])
            d = pick(ch, [1, 2]) if k > 1 else 1
            p = d * (k - 1) // 2
            s = stride if stride is not None else 1
        else:
            k = pick(ch, [3, 1, 2, 5])
            d = pick(ch, [1, 2]) if k > 1 else 1
            eff = d * (k - 1) + 1
            p = ch.integer(0, eff // 2)
            s = pick(ch, [1, 2, 3]) if stride is None else stride
            if not _reads_input(st.size, k, s, p, d):
                k, d, p = 1, 1, 0
        size = (st.size + 2 * p - d * (k - 1) - 1) // s + 1
        bias = chance(ch, 50)
        # standardising a single weight per filter leaves 0 (a dead conv): weight standardisation needs fan-in > 1
        impl = self.impl(ctx, ["nn", "hand", "ws" if (c_in // g) * k > 1 else "hand", "tfsame", "block"])
        if carried and p > 0:  # zero padding changes the constant at the borders: an activation first
            st.live = carried
            self.kill(st, ctx, out)
            carried = []
        defect = None
        if impl == "hand" and g == 1 and chance(ch, 30):
            defect = pick(ch, ["padkernel", "flat"] + (["swapped"] if c_in != c_out else []))
        cfg = dict(c_in=c_in, c_out=c_out, k=k, s=s, p=p, d=d, g=g, bias=bias, defect=defect,
                   tuple_k=chance(ch, 30), bias_kw=chance(ch, 50))
        if impl == "func" and chance(ch, 20):
            # F.conv on weight.detach(): the weight never trains; a frozen weight is its look-alike
            cfg["weight"] = pick(ch, ["detached", "frozen"])
        step = Step("conv", impl, cfg)
        if defect:
            step.expect.add(CONV_RULE)
        if cfg.get("weight") == "detached":
            step.expect.add(NO_GRADIENT)
        out.append(step)
        st.c, st.size, st.live, st.last = c_out, size, carried + ([step] if bias else []), "conv"
        return step

    def act(self, st: State, ctx: str, out: list[Step], inplace_ok: bool = True) -> None:
        kinds = ["relu", "gelu", "silu"] + (["relu_"] if inplace_ok and st.last != "act" else [])
        out.append(Step("act", self.impl(ctx, ["nn"]), dict(fn=pick(self.ch, kinds))))
        st.live, st.last = [], "act"

    def norm(self, st: State, ctx: str, out: list[Step], head: bool = False) -> None:
        ch = self.ch
        options: list[tuple[int, tuple[str, str | None]]] = [
            (4, ("nn", None)), (2, ("hand", None)), (1, ("fmod", None)), (4 if ctx == "func" else 1, ("func", None)),
            (1, ("plain", None)),
        ]
        if not head:
            options += [
                (1, ("hand", "perpixel") if st.size > 1 else ("hand", "whole")),
                (1, ("hand", "whole")),
                (1, ("hand", "evalbatch")),
                (1, ("hand", "momentum")),
                (1, ("wrap", "hidden")),
                (1, ("func", "hidden")),
                (1, ("func", "forced")),
                (1, ("plain", "gradmode")),
                (1, ("plain", "history")),
                (1, ("nn", "shared")),
            ]
        impl, defect = weighted(ch, options)
        shared = self.plain_norms.get(st.c) if defect == "shared" else None
        if defect == "shared" and shared is None:
            defect = None  # no earlier nn.BatchNorm of this width to share
        if self.broken_head or defect == "whole":
            self.kill(st, ctx, out)  # see "excluded" in the module docstring
        step = Step("norm", impl, dict(c=st.c, defect=defect, head=head, training_kw=chance(ch, 50)))
        if shared is not None:
            step.shares = shared
        elif impl == "nn" and defect is None and not head:
            self.plain_norms[st.c] = step
        if impl in ("hand", "fmod") and chance(ch, 30):  # an activation in the BN's own forward
            step.cfg.update(fused=pick(ch, ["pre", "post"]), fused_fn=pick(ch, sorted(_FUSED)))
        step.expect |= {
            "perpixel": {PER_CHANNEL}, "whole": {PER_CHANNEL}, "evalbatch": {BN_EVAL}, "momentum": {BN_TRAIN},
            "hidden": {MODE}, "forced": {MODE}, "gradmode": {MODE}, "history": {BN_TRAIN}, "shared": {REUSED},
            None: set(),
        }[defect]
        for biased in st.live if step.cfg.get("fused") != "pre" else []:
            biased.expect.add(RB)  # every norm here subtracts a per-channel (or per-pixel) mean in training
        out.append(step)
        # a BN with its activation inside ends like an activation (an in-place ReLU must not follow it)
        st.live, st.last = [], "act" if step.cfg.get("fused") == "post" else "norm"

    def drop(self, st: State, ctx: str, out: list[Step], head: bool = False) -> None:
        ch = self.ch
        p = pick(ch, [0.25, 0.1, 0.5])
        bad = chance(ch, 20) and not (head and self.broken_head)  # after a broken Linear it never runs
        if bad:
            impl = pick(ch, ["func", "wrap_rate", "wrap_p"])
            step = Step("drop", impl, dict(p=p, channel=False, bad=True))
            step.expect.add(MODE)
        else:
            step = Step("drop", self.impl(ctx, ["nn"]), dict(p=p, channel=not head and chance(ch, 30), bad=False,
                                                                 positional=chance(ch, 30)))
        out.append(step)
        st.live, st.last = [], "drop"

    def pool(self, st: State, ctx: str, out: list[Step]) -> None:
        ch = self.ch
        kind = pick(ch, ["max", "avg", "aavg", "amax"])
        defect = None
        if chance(ch, 20):
            defect = pick(ch, ["param_hand", "chmax", "roll", "param_builtin"])
            kind = "max" if defect in ("param_builtin", "chmax") else ("avg" if defect == "roll" else kind)
            if defect == "param_hand" and kind not in ("max", "avg"):
                kind = "max"
        cfg: dict[str, Any] = dict(kind=kind, defect=defect)
        if kind in ("aavg", "amax"):
            cfg["out"] = ch.integer(1, min(st.size, 4))
            size = cfg["out"]
        else:
            k = min(ch.integer(2, 3), st.size)
            p = ch.integer(0, k // 2)
            s = pick(ch, [k, 1, 2])
            ceil = defect is None and chance(ch, 20)
            cip = kind == "avg" and p > 0 and defect is None and chance(ch, 50)
            if defect in ("roll",):
                p, ceil = 0, False
            num = st.size + 2 * p - k
            if ceil:
                size = -(-num // s) + 1
                if (size - 1) * s >= st.size + p:
                    size -= 1
            else:
                size = num // s + 1
            cfg.update(k=k, s=s, p=p, ceil=ceil, cip=cip)
        counts_padding = cfg.get("cip") or (defect == "param_hand" and kind == "avg" and cfg.get("p"))
        if defect == "chmax" or counts_padding:
            self.kill(st, ctx, out)  # see "excluded" in the module docstring
        impl = "hand" if defect in ("param_hand", "chmax", "roll") else ("nn" if defect else self.impl(ctx, ["nn"]))
        step = Step("pool", impl, cfg)
        if defect in ("param_hand", "param_builtin"):
            step.expect.add(POOL_PARAMS)
        elif defect:
            step.expect.add(POOL_MIX)
        if defect == "param_builtin":
            step.expect.add(NO_GRADIENT)  # torch's max pool never reads the parameter given to it
        out.append(step)
        st.size, st.last = size, "pool"

    def residual(self, st: State, ctx: str, out: list[Step]) -> None:
        ch = self.ch
        self.kill(st, ctx, out)
        impl = self.impl(ctx, ["nn"])
        inner = "func" if impl == "func" else "seq"
        merge = pick(ch, ["add", "cat"])
        s = pick(ch, [1, 2])
        c0 = st.c
        body_state = State(st.c, st.size, [])
        body: list[Step] = []
        self.conv(body_state, inner, body, same=True, stride=s)
        for _ in range(ch.integer(0, 2)):
            self.step(body_state, inner, body, in_body=True)
        proj = None
        need = s > 1 or (merge == "add" and body_state.c != c0)
        if need or chance(ch, 25):
            proj_state = State(c0, st.size, [])
            c_proj = body_state.c if merge == "add" else ch.integer(2, 8)
            proj = self._proj(proj_state, c_proj, s, impl == "func")
            proj_live = proj_state.live
        else:
            c_proj, proj_live = c0, []
        step = Step("res", impl, dict(merge=merge, order=chance(ch, 50), op=pick(ch, ["+", "torch.add"]),
                                      identity_module=chance(ch, 50)), body=body, proj=proj)
        out.append(step)
        st.c = body_state.c if merge == "add" else body_state.c + c_proj
        st.size = (st.size - 1) // s + 1
        st.live = body_state.live + proj_live
        st.last = "res"

    def _proj(self, pst: State, c_out: int, s: int, func_ok: bool) -> Step:
        ch = self.ch
        bias = chance(ch, 40)
        impl = pick(ch, ["nn", "hand", "func"] if func_ok else ["nn", "hand"])
        step = Step("conv", impl, dict(c_in=pst.c, c_out=c_out, k=1, s=s, p=0, d=1, g=1, bias=bias, defect=None,
                                       tuple_k=False, bias_kw=False))
        pst.live = [step] if bias else []
        return step

    def head(self, st: State, ctx: str, out: list[Step]) -> None:
        ch = self.ch
        # flatten carries the constant; the first Linear ends it
        out.append(Step("flatten", self.impl(ctx, ["nn"]), dict(how=pick(ch, ["flatten", "torch", "view", "reshape"]))))
        features = st.c * st.size ** self.rank
        st.last = "flatten"
        layers = 2 if chance(ch, 50) else 1
        wrong = ch.integer(0, layers - 1) if self.broken_head else -1
        f_in = features
        for i in range(layers):
            f_out = ch.integer(2, 5) if i == layers - 1 else ch.integer(4, 12)
            declared = f_in
            if i == wrong:
                delta = pick(ch, [1, -1, f_in, 3, -2])
                declared = f_in + delta if f_in + delta >= 1 and delta != 0 else f_in + 1
            with_bn = i < layers - 1 and chance(ch, 40)
            bias = chance(ch, 50) and not (with_bn and self.broken_head)
            step = Step("linear", self.impl(ctx, ["nn"]), dict(f_in=declared, f_out=f_out, bias=bias))
            if i == wrong:
                step.expect.add(FEATURES)
            out.append(step)
            st.c, st.size, st.live, st.last = f_out, 1, ([step] if bias else []), "linear"
            if i < layers - 1:
                if with_bn:
                    self.norm(st, ctx, out, head=True)
                self.act(st, ctx, out)
                if chance(ch, 30):
                    self.drop(st, ctx, out, head=True)
            f_in = f_out


def _reads_input(size: int, k: int, s: int, p: int, d: int) -> bool:
    """Whether the conv is valid and every output position has a tap on the input, not only on padding
    (a conv that reads only padding makes everything after it independent of the input, and every
    gradient before it 0: nothing can be confirmed numerically then)."""
    if d * (k - 1) + 1 > size + 2 * p:
        return False
    out = (size + 2 * p - d * (k - 1) - 1) // s + 1
    return all(any(0 <= i * s - p + j * d < size for j in range(k)) for i in range(out))


def generate(ch: Any) -> Arch:
    rank = pick(ch, [2, 1])
    style = pick(ch, ["seq", "func"])
    c0 = ch.integer(1, 4)
    size = pick(ch, [16, 12, 9]) if rank == 2 else pick(ch, [32, 20, 9])
    broken = chance(ch, 20)
    gen = Generator(ch, rank, broken)
    st = State(c0, size, [])
    steps: list[Step] = []
    gen.conv(st, style, steps)
    for _ in range(ch.integer(0, 6)):
        gen.step(st, style, steps, in_body=False)
    if broken or chance(ch, 85):
        gen.head(st, style, steps)
    return Arch(rank, style, c0, size, steps, eval_first=chance(ch, 25))


def from_seed(seed: int) -> Arch:
    return generate(RandomChooser(seed))


# -- layers written the way a student writes them ------------------------------------------------------
def _pc(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel vector shaped to broadcast over x: (1, C, 1, ...)."""
    return t.reshape([1, -1] + [1] * (x.dim() - 2))


def _dims(x: torch.Tensor) -> tuple[int, ...]:
    return (0,) + tuple(range(2, x.dim()))


def _normalise(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float, w: torch.Tensor,
               b: torch.Tensor) -> torch.Tensor:
    return (x - _pc(mean, x)) / torch.sqrt(_pc(var, x) + eps) * _pc(w, x) + _pc(b, x)


class HandConv(nn.Module):
    """Correct: a convolution with its own weight and bias, computed with F.conv{1,2}d."""

    def __init__(self, rank: int, c_in: int, c_out: int, k: int, s: int, p: int, d: int, g: int, bias: bool,
                 tuple_k: bool) -> None:
        super().__init__()
        self.rank = rank
        self.in_channels, self.out_channels = c_in, c_out
        self.kernel_size = (k,) * rank if tuple_k else k
        self.stride, self.padding, self.dilation, self.groups = s, p, d, g
        ref = (nn.Conv1d if rank == 1 else nn.Conv2d)(c_in, c_out, k, s, p, d, g, bias)
        self.weight = nn.Parameter(self.store(ref.weight.detach().clone()))
        self.bias = nn.Parameter(ref.bias.detach().clone()) if bias else None

    def store(self, w: torch.Tensor) -> torch.Tensor:
        return w

    def filters(self) -> torch.Tensor:
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = F.conv1d if self.rank == 1 else F.conv2d
        return conv(x, self.filters(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class SwappedConv(HandConv):
    """Wrong (conv-param-formula): the weight is stored as (C_in, C_out, *k)."""

    def store(self, w: torch.Tensor) -> torch.Tensor:
        return w.transpose(0, 1).contiguous()

    def filters(self) -> torch.Tensor:
        return self.weight.transpose(0, 1)


class FlatConv(HandConv):
    """Wrong (conv-param-formula): the weight is stored flat, (C_out, C_in * prod(k))."""

    def store(self, w: torch.Tensor) -> torch.Tensor:
        self.filter_shape = tuple(w.shape)
        return w.reshape(w.shape[0], -1)

    def filters(self) -> torch.Tensor:
        return self.weight.reshape(self.filter_shape)


class PaddedKernelConv(HandConv):
    """Wrong (conv-param-formula): one row/column too many in the kernel, sliced off in forward."""

    def store(self, w: torch.Tensor) -> torch.Tensor:
        return F.pad(w, (0, 1) * (w.dim() - 2))

    def filters(self) -> torch.Tensor:
        index = (slice(None), slice(None)) + (slice(0, -1),) * (self.weight.dim() - 2)
        return self.weight[index]


class StandardisedConv(HandConv):
    """Correct: weight standardisation (BiT, NFNet): the filters are normalised on every call, a
    reparametrisation, not a wrong shape."""

    def filters(self) -> torch.Tensor:
        dims = tuple(range(1, self.weight.dim()))
        mean = self.weight.mean(dim=dims, keepdim=True)
        return (self.weight - mean) / torch.sqrt(self.weight.var(dim=dims, unbiased=False, keepdim=True) + 1e-5)


class SamePadConv(HandConv):
    """Correct: TensorFlow-style explicit padding, F.pad then a conv without padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = F.conv1d if self.rank == 1 else F.conv2d
        if self.padding:
            x = F.pad(x, [self.padding] * (2 * self.rank))
        return conv(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class KernelSizeBlock(nn.Module):
    """Correct: a block that stores kernel_size and stride (as xception's SeparableConv2d and fastvit's
    MobileOneBlock do) and runs a torch conv inside: a conv block, not a pooling layer."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


_FUSED = {"relu": F.relu, "silu": F.silu, "gelu": F.gelu, "leaky": partial(F.leaky_relu, negative_slope=0.2)}


class Fusable(nn.Module):
    """A hand-written BN that may apply an activation in its own forward, before (``fused='pre'``) or
    after (``'post'``) normalising: ``__call__`` of a subclass runs ``normalise`` through ``forward``."""

    fused: str | None = None
    act: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused == "pre":
            return self.normalise(self.act(x))
        if self.fused == "post":
            return self.act(self.normalise(x))
        return self.normalise(x)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class HandBN(Fusable):
    """Correct: BatchNorm with batch statistics in training (running estimates updated PyTorch's way)
    and the running estimates in eval."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = c, 1e-5, 0.1
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, c))
        self.bias = nn.Parameter(torch.linspace(-0.3, 0.3, c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def update(self, mean: torch.Tensor, unbiased: torch.Tensor) -> None:
        m = self.momentum
        self.running_mean.mul_(1 - m).add_(m * mean)
        self.running_var.mul_(1 - m).add_(m * unbiased)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return _normalise(x, self.running_mean, self.running_var, self.eps, self.weight, self.bias)
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.update(x.mean(_dims(x)), x.var(_dims(x), unbiased=True))
        return _normalise(x, x.mean(_dims(x)), x.var(_dims(x), unbiased=False), self.eps, self.weight, self.bias)


class KerasMomentumBN(HandBN):
    """Wrong (bn-train-behaviour): running = momentum * old + (1 - momentum) * batch, momentum=0.1."""

    def update(self, mean: torch.Tensor, unbiased: torch.Tensor) -> None:
        m = self.momentum
        self.running_mean.copy_(m * self.running_mean + (1 - m) * mean)
        self.running_var.copy_(m * self.running_var + (1 - m) * unbiased)


class AlwaysBatchBN(HandBN):
    """Wrong (bn-eval-behaviour): ignores self.training when normalising, always batch statistics."""

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.num_batches_tracked += 1
                self.update(x.mean(_dims(x)), x.var(_dims(x), unbiased=True))
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


class PerPixelBN(Fusable):
    """Wrong (bn-not-per-channel): statistics over the batch only, one per (C, *spatial) position."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = c, 1e-5, 0.1
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean(dim=0, keepdim=True), x.var(dim=0, unbiased=False, keepdim=True)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.statistics(x)
        return (x - mean) / torch.sqrt(var + self.eps) * _pc(self.weight, x) + _pc(self.bias, x)


class WholeTensorBN(PerPixelBN):
    """Wrong (bn-not-per-channel): one mean and variance for the whole tensor."""

    def statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean(), x.var(unbiased=False)


class FunctionalBN(HandBN):
    """Correct: F.batch_norm with training=self.training."""

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked += 1
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training, self.momentum, self.eps)


class PlainStatsBN(nn.Module):
    """Correct, written the d2l.ai way: gamma and beta parameters, the moving statistics as plain tensor
    attributes (not buffers) rebound on every training step, no num_features/eps/momentum attributes."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, c))
        self.beta = nn.Parameter(torch.linspace(-0.3, 0.3, c))
        self.moving_mean = torch.zeros(c)
        self.moving_var = torch.ones(c)

    def training_mode(self) -> bool:
        return self.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training_mode():
            return _normalise(x, self.moving_mean, self.moving_var, 1e-5, self.gamma, self.beta)
        mean, var = x.mean(_dims(x)), x.var(_dims(x), unbiased=False)
        unbiased = x.var(_dims(x), unbiased=True)
        self.moving_mean, self.moving_var = self.update(mean, unbiased)
        return _normalise(x, mean, var, 1e-5, self.gamma, self.beta)

    def update(self, mean: torch.Tensor, unbiased: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (0.9 * self.moving_mean + 0.1 * mean).detach(), (0.9 * self.moving_var + 0.1 * unbiased).detach()


class GradModeBN(PlainStatsBN):
    """Wrong (mode-not-propagated): the d2l.ai chapter's switch, torch.is_grad_enabled() for the mode."""

    def training_mode(self) -> bool:
        return torch.is_grad_enabled()


class HistoryBN(PlainStatsBN):
    """Wrong (bn-train-behaviour): the moving statistics keep their autograd history (no detach)."""

    def update(self, mean: torch.Tensor, unbiased: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return 0.9 * self.moving_mean + 0.1 * mean, 0.9 * self.moving_var + 0.1 * unbiased


class ListBN(nn.Module):
    """Wrong (mode-not-propagated): its BatchNorm is kept in a plain list, model.eval() never reaches it."""

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        self.bns = [bn]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bns[0](x)


class RateDropout(nn.Module):
    """Wrong (mode-not-propagated): F.dropout without training= drops in eval mode too."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.rate)


class PDropout(nn.Module):
    """Wrong (mode-not-propagated): as RateDropout, with a ``p`` attribute like torch's dropout."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p)


def _spatial_pool(x: torch.Tensor, kind: str, k: int, s: int, p: int) -> torch.Tensor:
    if kind == "max":
        return (F.max_pool1d if x.dim() == 3 else F.max_pool2d)(x, k, s, p)
    return (F.avg_pool1d if x.dim() == 3 else F.avg_pool2d)(x, k, s, p)


class ScaledPool(nn.Module):
    """Wrong (pool-has-parameters): a pooling layer with a learnable scale."""

    def __init__(self, kind: str, k: int, s: int, p: int) -> None:
        super().__init__()
        self.kind, self.kernel_size, self.stride, self.padding = kind, k, s, p
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _spatial_pool(x, self.kind, self.kernel_size, self.stride, self.padding) * self.scale


class ChannelMaxPool(nn.Module):
    """Wrong (pool-mixes-channels): the max over the channels too, copied to every channel."""

    def __init__(self, k: int, s: int, p: int) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = k, s, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = _spatial_pool(x, "max", self.kernel_size, self.stride, self.padding)
        return pooled.amax(dim=1, keepdim=True).expand_as(pooled).clone()


class RolledPool(nn.Module):
    """Wrong (pool-mixes-channels): channel c of the output is channel c-1 of the input, pooled."""

    def __init__(self, k: int, s: int) -> None:
        super().__init__()
        self.kernel_size, self.stride = k, s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _spatial_pool(x, "avg", self.kernel_size, self.stride, 0).roll(1, dims=1)


class Residual(nn.Module):
    """A residual block: body(x) merged with x (or a projection of x) by add or channel concat."""

    def __init__(self, body: nn.Module, proj: nn.Module | None, merge: str, order: bool, op: str) -> None:
        super().__init__()
        self.body, self.proj = body, proj
        self.merge, self.order, self.op = merge, order, op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        s = x if self.proj is None else self.proj(x)
        a, b = (y, s) if self.order else (s, y)
        if self.merge == "cat":
            return torch.cat([a, b], dim=1)
        return a + b if self.op == "+" else torch.add(a, b)


# -- rendering ---------------------------------------------------------------------------------------
_BN = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
_DROP_CHANNEL = {1: nn.Dropout1d, 2: nn.Dropout2d}


def build_module(step: Step, rank: int) -> nn.Module:
    """A step rendered as a module (its impl is not 'func')."""
    cfg = step.cfg
    module: nn.Module
    if step.kind == "conv":
        args = (cfg["c_in"], cfg["c_out"], cfg["k"], cfg["s"], cfg["p"], cfg["d"], cfg["g"], cfg["bias"])
        if step.impl == "nn":
            module = (nn.Conv1d if rank == 1 else nn.Conv2d)(*args)
        elif step.impl == "block":
            module = KernelSizeBlock((nn.Conv1d if rank == 1 else nn.Conv2d)(*args))
            step.owner = module.conv  # the conv inside is the layer whose bias is judged
            return module
        elif step.impl in ("ws", "tfsame"):
            module = {"ws": StandardisedConv, "tfsame": SamePadConv}[step.impl](rank, *args, tuple_k=cfg["tuple_k"])
        else:
            classes = {None: HandConv, "swapped": SwappedConv, "flat": FlatConv, "padkernel": PaddedKernelConv}
            module = classes[cfg["defect"]](rank, *args, tuple_k=cfg["tuple_k"])
    elif step.kind == "pool":
        module = _pool_module(cfg, rank)
    elif step.kind == "norm":
        c, defect = cfg["c"], cfg["defect"]
        if defect == "hidden":
            module = ListBN(_BN[rank](c))
            step.suffix = "bns[0]"
        elif step.shares is not None:
            assert step.shares.owner is not None, "the shared BatchNorm is built first"
            module = step.shares.owner
        elif step.impl == "nn":
            module = _BN[0 if cfg["head"] else rank](c)
        elif step.impl == "plain":
            module = {None: PlainStatsBN, "gradmode": GradModeBN, "history": HistoryBN}[defect](c)
        else:
            module = {None: FunctionalBN if step.impl == "fmod" else HandBN, "perpixel": PerPixelBN,
                      "whole": WholeTensorBN, "evalbatch": AlwaysBatchBN, "momentum": KerasMomentumBN}[defect](c)
            if cfg.get("fused"):
                module.fused, module.act = cfg["fused"], _FUSED[cfg["fused_fn"]]
    elif step.kind == "act":
        fn = cfg["fn"]
        module = nn.ReLU(inplace=True) if fn == "relu_" else {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[fn]()
    elif step.kind == "drop":
        if cfg["bad"]:
            module = RateDropout(cfg["p"]) if step.impl == "wrap_rate" else PDropout(cfg["p"])
        else:
            module = _DROP_CHANNEL[rank](cfg["p"]) if cfg["channel"] else nn.Dropout(cfg["p"])
    elif step.kind == "res":
        body = build_sequential(step.body, rank)
        proj = build_module(step.proj, rank) if step.proj is not None else None
        if proj is None and cfg["identity_module"]:
            proj = nn.Identity()
        module = Residual(body, proj, cfg["merge"], cfg["order"], cfg["op"])
    elif step.kind == "flatten":
        module = nn.Flatten()
    elif step.kind == "linear":
        module = nn.Linear(cfg["f_in"], cfg["f_out"], bias=cfg["bias"])
    else:
        raise AssertionError(step.kind)
    step.owner = module
    return module


def _pool_module(cfg: dict[str, Any], rank: int) -> nn.Module:
    kind, defect = cfg["kind"], cfg["defect"]
    if defect == "param_hand":
        return ScaledPool(kind, cfg["k"], cfg["s"], cfg["p"])
    if defect == "chmax":
        return ChannelMaxPool(cfg["k"], cfg["s"], cfg["p"])
    if defect == "roll":
        return RolledPool(cfg["k"], cfg["s"])
    d = "1d" if rank == 1 else "2d"
    if kind == "aavg":
        return getattr(nn, f"AdaptiveAvgPool{d}")(cfg["out"])
    if kind == "amax":
        return getattr(nn, f"AdaptiveMaxPool{d}")(cfg["out"])
    if kind == "max":
        pool = getattr(nn, f"MaxPool{d}")(cfg["k"], cfg["s"], cfg["p"], ceil_mode=cfg["ceil"])
        if defect == "param_builtin":
            pool.register_parameter("weight", nn.Parameter(torch.ones(1)))
        return pool
    return getattr(nn, f"AvgPool{d}")(cfg["k"], cfg["s"], cfg["p"], ceil_mode=cfg["ceil"],
                                       count_include_pad=cfg["cip"])


def build_sequential(steps: list[Step], rank: int) -> nn.Sequential:
    """Layers in order; each run of functional steps becomes one FuncNet child."""
    layers: list[nn.Module] = []
    run: list[Step] = []
    for step in steps + [None]:  # type: ignore[list-item]
        if step is not None and step.impl == "func":
            run.append(step)
            continue
        if run:
            layers.append(FuncNet(run, rank))
            run = []
        if step is not None:
            layers.append(build_module(step, rank))
    return nn.Sequential(*layers)


def _has_children(module: nn.Module) -> bool:
    return any(True for _ in module.children())


class FuncNet(nn.Module):
    """A block whose forward makes functional calls with its own parameters and buffers; the steps
    that are layers are its children (``m3``), a BN in a plain list is ``bns[0]``."""

    def __init__(self, steps: list[Step], rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.bns: list[nn.Module] = []
        self.count = 0
        self.program = [self.compile(step) for step in steps]
        if (steps and steps[0].kind == "norm" and self.program[0].get("forced") and not _has_children(self)
                and all(step.kind == "act" for step in steps[1:])):
            # F.batch_norm(training=True) on its input, with gamma, beta and running statistics of its
            # own, then at most activations (timm's BatchNormAct2d): this block is a BatchNorm layer
            # that ignores self.training (cnncheck.recognize keeps such a block one layer)
            steps[0].expect = {BN_EVAL}

    def extra_repr(self) -> str:
        return f"program={self.program}"

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def compile(self, step: Step) -> dict[str, Any]:
        rank, cfg = self.rank, step.cfg
        if step.impl != "func":
            name = self.fresh("m")
            self.add_module(name, build_module(step, rank))
            return {"op": "module", "name": name}
        step.owner = self
        if step.kind == "conv":
            ref = (nn.Conv1d if rank == 1 else nn.Conv2d)(cfg["c_in"], cfg["c_out"], cfg["k"], cfg["s"], cfg["p"],
                                                          cfg["d"], cfg["g"], cfg["bias"])
            w = self.fresh("conv_weight")
            weight = cfg.get("weight")
            self.register_parameter(w, nn.Parameter(ref.weight.detach().clone(), requires_grad=weight != "frozen"))
            b = None
            if cfg["bias"]:
                b = self.fresh("conv_bias")
                self.register_parameter(b, nn.Parameter(ref.bias.detach().clone()))
            return {"op": "conv", "w": w, "b": b, "s": cfg["s"], "p": cfg["p"], "d": cfg["d"], "g": cfg["g"],
                    "bias_kw": cfg["bias_kw"], "detached": weight == "detached"}
        if step.kind == "pool":
            return {"op": "pool", **cfg}
        if step.kind == "spare":
            name = self.fresh("spare")
            c = cfg["c"]
            spare = {"conv": lambda: (nn.Conv1d if rank == 1 else nn.Conv2d)(c, c, 1), "drop": lambda: nn.Dropout(0.25),
                     "norm": lambda: _BN[rank](c)}[cfg["what"]]()
            self.add_module(name, spare)
            step.owner = spare
            return {"op": "spare", "name": name, "trainonly": cfg["mode"] == "trainonly"}
        if step.kind == "norm":
            c = cfg["c"]
            if cfg["defect"] == "hidden":
                self.bns.append(_BN[rank](c))
                step.suffix = f"bns[{len(self.bns) - 1}]"
                return {"op": "hidden", "i": len(self.bns) - 1}
            stem = self.fresh("bn")
            self.register_parameter(f"{stem}_weight", nn.Parameter(torch.linspace(0.8, 1.2, c)))
            self.register_parameter(f"{stem}_bias", nn.Parameter(torch.linspace(-0.1, 0.1, c)))
            rm, rv = f"{stem}_running_mean", f"{stem}_running_var"
            self.register_buffer(rm, torch.zeros(c))
            self.register_buffer(rv, torch.ones(c))
            return {"op": "bn", "stem": stem, "rm": rm, "rv": rv, "training_kw": cfg["training_kw"],
                    "forced": cfg["defect"] == "forced"}
        if step.kind == "act":
            return {"op": "act", "fn": cfg["fn"]}
        if step.kind == "drop":
            return {"op": "drop", **cfg}
        if step.kind == "res":
            return {"op": "res", "body": [self.compile(s) for s in step.body],
                    "proj": self.compile(step.proj) if step.proj is not None else None,
                    "merge": cfg["merge"], "order": cfg["order"], "plus": cfg["op"] == "+"}
        if step.kind == "flatten":
            return {"op": "flatten", "how": cfg["how"]}
        if step.kind == "linear":
            ref = nn.Linear(cfg["f_in"], cfg["f_out"], bias=cfg["bias"])
            w = self.fresh("fc_weight")
            self.register_parameter(w, nn.Parameter(ref.weight.detach().clone()))
            b = None
            if cfg["bias"]:
                b = self.fresh("fc_bias")
                self.register_parameter(b, nn.Parameter(ref.bias.detach().clone()))
            return {"op": "linear", "w": w, "b": b}
        raise AssertionError(step.kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.program:
            x = self.run(op, x)
        return x

    def run(self, op: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        kind = op["op"]
        one = self.rank == 1
        if kind == "module":
            return getattr(self, op["name"])(x)
        if kind == "hidden":
            return self.bns[op["i"]](x)
        if kind == "spare":
            return getattr(self, op["name"])(x) if op["trainonly"] and self.training else x
        if kind == "conv":
            conv = F.conv1d if one else F.conv2d
            w = getattr(self, op["w"])
            if op["detached"]:
                w = w.detach()
            b = getattr(self, op["b"]) if op["b"] else None
            if op["bias_kw"]:
                return conv(x, w, bias=b, stride=op["s"], padding=op["p"], dilation=op["d"], groups=op["g"])
            return conv(x, w, b, op["s"], op["p"], op["d"], op["g"])
        if kind == "bn":
            stem = op["stem"]
            rm, rv = getattr(self, op["rm"]), getattr(self, op["rv"])
            w, b = getattr(self, f"{stem}_weight"), getattr(self, f"{stem}_bias")
            if op["forced"]:
                return F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)
            if op["training_kw"]:
                return F.batch_norm(x, rm, rv, w, b, training=self.training, momentum=0.1, eps=1e-5)
            return F.batch_norm(x, rm, rv, w, b, self.training, 0.1, 1e-5)
        if kind == "act":
            fn = op["fn"]
            if fn == "relu_":
                return F.relu(x, inplace=True)
            return {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}[fn](x)
        if kind == "drop":
            if op["bad"]:
                return F.dropout(x, op["p"])
            if op["channel"]:
                channel_dropout = F.dropout1d if one else F.dropout2d
                return channel_dropout(x, op["p"], training=self.training)
            if op["positional"]:
                return F.dropout(x, op["p"], self.training)
            return F.dropout(x, op["p"], training=self.training)
        if kind == "pool":
            return self.pool(op, x)
        if kind == "res":
            y = x
            for inner in op["body"]:
                y = self.run(inner, y)
            s = x if op["proj"] is None else self.run(op["proj"], x)
            a, b = (y, s) if op["order"] else (s, y)
            if op["merge"] == "cat":
                return torch.cat([a, b], dim=1)
            return a + b if op["plus"] else torch.add(a, b)
        if kind == "flatten":
            how = op["how"]
            if how == "flatten":
                return x.flatten(1)
            if how == "torch":
                return torch.flatten(x, 1)
            if how == "view":
                return x.view(x.size(0), -1)
            return x.reshape(x.shape[0], -1)
        if kind == "linear":
            return F.linear(x, getattr(self, op["w"]), getattr(self, op["b"]) if op["b"] else None)
        raise AssertionError(kind)

    def pool(self, op: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
        d = "1d" if self.rank == 1 else "2d"
        kind = op["kind"]
        if kind == "aavg":
            return getattr(F, f"adaptive_avg_pool{d}")(x, op["out"])
        if kind == "amax":
            return getattr(F, f"adaptive_max_pool{d}")(x, op["out"])
        if kind == "max":
            return getattr(F, f"max_pool{d}")(x, op["k"], op["s"], op["p"], ceil_mode=op["ceil"])
        return getattr(F, f"avg_pool{d}")(x, op["k"], op["s"], op["p"], ceil_mode=op["ceil"],
                                          count_include_pad=op["cip"])
