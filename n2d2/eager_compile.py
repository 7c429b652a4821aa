"""Trace-and-compile for the eager training loop.

Upstream users train with the eager loop (`x = provider.read_random_batch(); x = model(x);
x = target(x); x.back_propagate(); x.update()`). Each call is recorded on the batch's
`DeepNet`, with a *step key* per call (the cell's identity, its IR op and attributes, its
config, its parameter arrays and solver settings, learn/test mode, where its inputs come from
and their shapes). When a provider's batch ends with the same sequence of keys twice in a row, that
sequence (a *plan*) is traced and compiled once by the pipeline `DeepNetCell` uses (trace ->
live passes -> autodiff -> training program; an inference program in test mode), on the C
backend when a compiler is found, else on the numpy executor. The program is bound to the
cells' own parameter arrays and solver states, so eager and compiled steps can alternate.

The first call of a batch selects the plan it follows: the provider's active plan (the last
batch's), or when that plan starts otherwise, the provider's most recent plan that starts with
that call (blocks of learn steps and test-mode passes taking turns on one provider each keep
their plan). From then on a call that
matches the plan's next key runs nothing: it returns a *pending*
tensor (shape known, no data). Reading the plan's last output (what the target does) runs the
compiled forward; `back_propagate` / `update` run the compiled backward and update phases.
Every other read is lazy and exact: reading a pending intermediate (or a cell's
`get_outputs()`, `get_diffinputs()`, `get_diffoutputs()`) replays the step eagerly on the
weights it was computed with (saved before a compiled update) and the random state it drew
from (dropout), leaving parameters, statistics and solver states untouched. A call that does
not match (new shape or batch size, another cell, a replaced array, another solver or setting,
the other mode) runs the pending calls eagerly and goes on eagerly; the new sequence compiles in
its turn once seen twice in a row. (A provider's partial last batch is padded to the batch
shape, its extra slots invalid: it follows the plan like the others.)

`stats` counts compiles and compiled replays (`n2d2.deepnet.compiled_replays()`); the switch
is `n2d2.global_variables.eager_compile` (env `N2D2_EAGER_COMPILE=0` turns it off).
"""
import weakref

import numpy as np

from n2d2.cells.deepnet_cell import DeepNetCell, training_graph
from n2d2.codegen.programs import InferenceProgram, TrainingProgram, select_backend
from n2d2.deepnet import CallRecord
from n2d2.ir.trace import trace
from n2d2.provider.base import Provider
from n2d2.settings import global_variables
from n2d2.tensor import Tensor

# Ops whose forward draws from `global_variables.rng` (replays restore the random state).
_RANDOM_OPS = frozenset({"Dropout"})
# Ops whose forward depends on learn/test mode: a step that is not back-propagated runs the
# inference program only when these are all in test mode (other cells' mode changes nothing).
_MODE_DEPENDENT_OPS = frozenset({"Dropout", "BatchNorm"})
_MAX_PLANS = 8          # compiled plans kept per provider (learn and test loops, a few shapes)
_SEEN_TO_COMPILE = 2    # a sequence compiles when it ended that many batches in a row


class EagerCompileStats:
    """Counters of the eager loop compiler (public: tests assert that a loop ran compiled).

    Attributes
    ----------
    compiles : int
        Plans traced and compiled.
    forward_replays : int
        Forward passes run by a compiled program instead of the eager cells.
    training_replays : int
        Full training steps (forward, backward, update) run compiled.
    eager_fallbacks : int
        Steps that did not follow the provider's active plan (a call did not match) and ran eagerly.
    recomputes : int
        Eager replays of a compiled step to show an intermediate value that was read.
    failures : dict
        Signature description -> error, for sequences that could not be compiled (they run eagerly).
    """

    def __init__(self):
        self.reset()

    def reset(self):
        self.compiles = 0
        self.forward_replays = 0
        self.training_replays = 0
        self.eager_fallbacks = 0
        self.recomputes = 0
        self.failures = {}

    def __repr__(self):
        return (f"EagerCompileStats(compiles={self.compiles}, forward_replays={self.forward_replays}, "
                f"training_replays={self.training_replays}, eager_fallbacks={self.eager_fallbacks}, "
                f"recomputes={self.recomputes}, failures={len(self.failures)})")


stats = EagerCompileStats()

# The backend plans compile for: None picks as DeepNetCell does (C when a compiler is found,
# else the numpy executor; CUDA cells are not compiled here); "numpy" or "c" forces one.
backend = None


def enabled() -> bool:
    return global_variables.eager_compile


# -- step keys -----------------------------------------------------------------------------------
def _freeze(value):
    """A hashable, comparable stand-in for an IR attribute or a config value."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if isinstance(value, np.ndarray):
        return ("ndarray", value.shape, str(value.dtype), value.tobytes())
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    return ("object", type(value).__name__, id(value))


def _same(a, b) -> bool:
    """Key equality; keys hold numpy arrays (connection tables) that `==` cannot judge alone."""
    try:
        return bool(a == b)
    except ValueError:
        return _freeze(a) == _freeze(b)


def _copied(key):
    """`key` with its dicts copied, so that later changes of the cell or solver do not reach it."""
    if key is None:
        return None
    ident, op, inference, attrs, config, roles, sources = key
    roles = tuple(r if r[1] is None or r[5] is None else r[:5] + (dict(r[5]),) for r in roles)
    return (ident, op, inference, dict(attrs), dict(config), roles, sources)


def step_key(cell, tensors, deepnet):
    """The key of one cell call, or None when such a call cannot be compiled: plain data that
    refers to the cell's and solvers' live config dicts (`_copied` before it is kept). Compared
    with `_same`, hashed through `_freeze`."""
    if cell._on_gpu or not cell._compilable():
        return None
    try:
        op, attrs, params = cell._ir_node()
    except Exception:  # noqa: BLE001 - no IR node, or a cell not set up before its first call: eager
        return None
    sources = []
    index = deepnet._eager_index
    for t in tensors:
        if isinstance(t.cell, Provider):
            data = t._data
            if not isinstance(data, np.ndarray):
                return None
            pos = deepnet._eager_inputs.setdefault(id(t), (len(deepnet._eager_inputs), t))[0]
            sources.append(("input", pos, data.shape, data.dtype.str))
        elif id(t) in index:
            sources.append(("call", index[id(t)]))
        else:
            return None
    roles = []
    for role, (array, solver) in params.items():
        if array is None:
            roles.append((role, None))
            continue
        if not isinstance(array, np.ndarray):
            return None
        roles.append((role, id(array), array.shape, array.dtype.str, id(solver),
                      None if solver is None else solver._config))
    quantizer = cell.activation_quantizer() if hasattr(cell, "activation_quantizer") else None
    if quantizer is not None:   # the FakeQuantize node the trace adds after the cell: its spec and learned scalar
        scalar, solver = quantizer.learnable()
        attrs = dict(attrs, activation_quantizer=quantizer.ir_spec())
        roles.append(("activation_quantizer", id(scalar), scalar.shape, scalar.dtype.str, id(solver), solver._config))
    return (id(cell), op, bool(cell._inference), attrs, cell._config, tuple(roles), tuple(sources))


# -- plans ----------------------------------------------------------------------------------------
class Plan:
    """One compiled sequence of calls: its keys, cells, program and parameter arrays."""

    def __init__(self, deepnet, signature):
        records = deepnet.records()
        self.signature = signature
        kind, self.keys = signature
        self.frozen = _freeze(signature)
        self.cells = [r.cell for r in records]            # strong refs: the ids in `keys` stay valid
        self.modes = [r.cell._inference for r in records]
        self.shapes = [tuple(r.output.shape()) for r in records]
        self.training = kind == "training"
        self.random = self.training and any(k[1] in _RANDOM_OPS and not k[2] for k in self.keys)
        names = [f"input{i}" for i in range(len(deepnet._eager_inputs))]
        result = trace(deepnet, outputs=[records[-1].output], name="eager_step", input_names=names)
        self.input_names = list(result.graph.inputs)
        trainable, state = {}, {}
        for p in result.graph.params.values():
            (trainable if p.trainable else state)[id(p.array)] = p.array
        self.trainable = list(trainable.values())
        self.state_arrays = list(state.values())
        self.backend = select_backend(backend)
        if self.training:
            self.program = TrainingProgram(training_graph(result.graph, self.backend), self.backend)
        else:
            self.program = InferenceProgram(DeepNetCell._optimize(result.graph), self.backend)
        self.owner = None        # the step whose forward the program's buffers hold

    def forward(self, step, feeds_by_position):
        feeds = {name: feeds_by_position[i] for i, name in enumerate(self.input_names)}
        if self.training:
            out = self.program.forward(feeds)[0]
        else:
            out = self.program.run(feeds)[0]
        self.owner = weakref.ref(step)
        return out


class _ProviderState:
    __slots__ = ("plans", "last_sig", "count", "active")

    def __init__(self):
        self.plans = {}
        self.last_sig = None
        self.count = 0
        self.active = None


_providers = weakref.WeakKeyDictionary()


def _provider_state(provider):
    state = _providers.get(provider)
    if state is None:
        state = _providers[provider] = _ProviderState()
    return state


def _signature(deepnet):
    """(kind, keys) of a finished batch: "training" when it was back-propagated, else
    "inference" (or "training" when a mode-dependent op ran in learn mode)."""
    keys = deepnet._eager_keys
    if not keys or len(keys) != len(deepnet._records) or any(k is None for k in keys):
        return None
    learning = any(k[1] in _MODE_DEPENDENT_OPS and not k[2] for k in keys)
    kind = "training" if deepnet._eager_trained or learning else "inference"
    return (kind, tuple(keys))


def on_step_end(provider, deepnet):
    """A provider starts a new batch: learn the sequence of calls of the batch that ends."""
    if not enabled() or deepnet is None or not deepnet._records:
        return
    state = _provider_state(provider)
    step = deepnet._eager_step
    if (step is not None and step.state not in ("pending", "eager") and step.plan.training == deepnet._eager_trained
            and len(deepnet._records) == len(step.plan.keys)):
        sig, frozen = step.plan.signature, step.plan.frozen    # it followed its plan: no need to hash
        if any(plan is step.plan for plan in state.plans.values()):   # still kept: under its own key
            state.active = step.plan                                  # (hashing the key costs ~10 us)
            state.last_sig, state.count = frozen, _SEEN_TO_COMPILE
            return
    else:
        sig = _signature(deepnet)
        frozen = None if sig is None else _freeze(sig)
    if sig is None:
        state.last_sig, state.count, state.active = None, 0, None
        return
    if frozen in state.plans:
        state.active = state.plans[frozen]
        state.last_sig, state.count = frozen, _SEEN_TO_COMPILE
        return
    state.count = state.count + 1 if frozen == state.last_sig else 1
    state.last_sig = frozen
    state.active = None
    if state.count < _SEEN_TO_COMPILE:
        return
    try:
        plan = Plan(deepnet, sig)
    except Exception as e:  # noqa: BLE001 - any failure keeps the loop eager (correct, slower)
        stats.failures[" -> ".join(c.get_name() for c in (r.cell for r in deepnet._records))] = \
            f"{type(e).__name__}: {e}"
        plan = None
    else:
        stats.compiles += 1
    if len(state.plans) >= _MAX_PLANS:
        state.plans.pop(next(iter(state.plans)))
    state.plans[frozen] = plan
    state.active = plan


# -- deferred steps --------------------------------------------------------------------------------
class DeferredStep:
    """The calls of one batch that follow a plan; runs them compiled or, when needed, eagerly."""

    def __init__(self, deepnet, plan):
        self.deepnet = deepnet
        self.plan = plan
        self.position = 0           # calls matched so far
        self.state = "pending"      # pending -> forward -> backward -> updated; or eager
        self.snapshot = None        # trainable arrays before a compiled update
        self.rng_state = None       # the random state a compiled forward drew from
        self.replayed = False       # intermediates and ctx filled by an eager replay

    # reading values ------------------------------------------------------------------------------
    def materialise(self, tensor):
        """Give `tensor` (a pending output of this step) its value."""
        records = self.deepnet._records
        if self.state == "pending":
            if self.position == len(self.plan.keys) and tensor is records[len(self.plan.keys) - 1].output:
                self._run_compiled()
                return
            self.to_eager()
        elif self.state != "eager":
            self.replay()

    def _run_compiled(self):
        feeds = [None] * len(self.deepnet._eager_inputs)
        for pos, t in self.deepnet._eager_inputs.values():
            data = t._data
            feeds[pos] = data if data.dtype == np.float32 else data.astype(np.float32)
        if self.plan.random:
            self.rng_state = global_variables.rng.bit_generator.state
        out = self.plan.forward(self, feeds)
        last = self.deepnet._records[len(self.plan.keys) - 1]
        last.output._h = out
        self.state = "forward"
        stats.forward_replays += 1

    def to_eager(self):
        """Run the pending calls eagerly (a call did not match, or a value was read early)."""
        if self.state != "pending":
            self.replay()
            return
        self.state = "eager"
        stats.eager_fallbacks += 1
        for record in self.deepnet._records[:self.position]:
            if record.output._h is None:
                y, ctx = record.cell._forward(_input_arrays(record))
                record.ctx = ctx
                record.output._h = y

    def replay(self, backward=False):
        """Recompute the step eagerly (forward, and backward with the target's seeds) on the
        weights and random state its compiled run used; parameters, statistics and the random
        generator are left as they are."""
        if self.replayed and not backward:
            return
        stats.recomputes += 1
        swapped = []
        if self.snapshot is not None:
            for array, old in self.snapshot:
                swapped.append((array, array.copy()))
                array[...] = old
        kept = [(a, a.copy()) for a in self.plan.state_arrays]
        rng_now = None
        if self.rng_state is not None:
            rng_now = global_variables.rng.bit_generator.state
            global_variables.rng.bit_generator.state = self.rng_state
        modes = [(c, c._inference) for c in self.plan.cells]
        try:
            for cell, mode in zip(self.plan.cells, self.plan.modes):
                cell._inference = mode
            n = len(self.plan.keys)
            for record in self.deepnet._records[:n]:
                y, ctx = record.cell._forward(_input_arrays(record))
                record.ctx = ctx
                if record.output._h is None:
                    record.output._h = y
            self.replayed = True
            if backward:
                self._eager_gradients()
        finally:
            for cell, mode in modes:
                cell._inference = mode
            for array, values in kept:
                array[...] = values
            for array, values in swapped:
                array[...] = values
            if rng_now is not None:
                global_variables.rng.bit_generator.state = rng_now

    def _eager_gradients(self):
        """The eager back-propagation of this step, for the gradients its cells show; parameter
        gradients, and the gradients of cells back-propagated again since, are left as they were."""
        cells = {id(c): c for c in self.plan.cells}.values()
        saved = [(c, c._param_grads, c._diff_inputs, c._diff_outputs, c._batch_size, c._lazy_gradients)
                 for c in cells]
        try:
            self.deepnet._eager_back_propagate()
        finally:
            for c, grads, d_in, d_out, batch, lazy in saved:
                c._param_grads = grads
                c._lazy_gradients = lazy
                if lazy is not self:
                    c._diff_inputs, c._diff_outputs, c._batch_size = d_in, d_out, batch

    def resolve_gradients(self):
        """A cell asked for a gradient of this compiled step: compute them all by an eager replay."""
        self.replay(backward=True)
        for cell in self.plan.cells:
            if cell._lazy_gradients is self:
                cell._lazy_gradients = None

    # training phases -----------------------------------------------------------------------------
    def back_propagate(self, seeds) -> bool:
        """Run the compiled backward when the step ran compiled and only its output is seeded;
        False when the eager back-propagation must run (values made eager first)."""
        n = len(self.plan.keys)
        records = self.deepnet._records
        final = records[n - 1].output
        owner = self.plan.owner() if self.plan.owner is not None else None
        if (self.state != "forward" or len(records) != n or not self.plan.training or owner is not self
                or any(t is not final for t, _ in seeds)):
            self.to_eager()
            return False
        grad = seeds[0][1]
        for _, g in seeds[1:]:
            grad = grad + g
        program = self.plan.program
        program.backward({program.tg.graph.outputs[0]: grad})
        for cell in self.plan.cells:
            cell._lazy_gradients = self
        self.state = "backward"
        return True

    def update(self) -> bool:
        if self.state != "backward":
            return False
        self.snapshot = [(a, a.copy()) for a in self.plan.trainable]
        self.plan.program.update()
        self.state = "updated"
        stats.training_replays += 1
        return True


def _input_arrays(record):
    xs = []
    for t in record.inputs:
        x = t._data
        xs.append(x if x.dtype == np.float32 else x.astype(np.float32))
    return xs


def _plan_starting_with(state, key):
    """The provider's most recent compiled plan whose first call has `key`, or None: a loop whose
    sequences take turns on one provider (learn steps, then a test-mode pass, ...) goes on with the
    plan its first call selects rather than running eagerly because the last batch followed another."""
    for plan in reversed(state.plans.values()):
        if plan is not None and _same(plan.keys[0], key):
            return plan
    return None


def on_call(cell, tensors, deepnet):
    """Hook of `NeuralNetworkCell.__call__`: a pending output when the call follows the batch's
    plan, else None (the call runs eagerly; pending calls before it are run first)."""
    step = deepnet._eager_step
    key = step_key(cell, tensors, deepnet)
    deepnet._eager_next_key = (cell, _copied(key)) if step is None or step.state != "pending" else None
    if step is not None and step.state != "pending":
        if step.state != "eager":
            step.replay()   # calls after a compiled forward: the graph goes on eagerly
        return None
    if key is None:
        if step is not None:
            step.to_eager()
            deepnet._eager_next_key = (cell, None)
        return None
    if step is None:
        if deepnet._records:
            return None
        provider = deepnet.get_provider()
        state = _providers.get(provider) if provider is not None else None
        plan = state.active if state is not None else None
        if plan is None:
            return None
        if not _same(plan.keys[0], key):
            plan = _plan_starting_with(state, key)
            if plan is None:
                stats.eager_fallbacks += 1
                return None
        step = deepnet._eager_step = DeferredStep(deepnet, plan)
    if step.position >= len(step.plan.keys) or not _same(step.plan.keys[step.position], key):
        step.to_eager()
        deepnet._eager_next_key = (cell, _copied(key))
        return None
    deepnet._eager_next_key = (cell, step.plan.keys[step.position])   # equal, and already a copy
    out = Tensor._pending_output(step.plan.shapes[step.position], cell, step)
    deepnet.add(CallRecord(cell, tensors, out, None, [id(t) in deepnet._eager_index for t in tensors]))
    step.position += 1
    state = cell.__dict__   # what an eager call sets (plain attributes: no Configurable routing)
    state["_deepnet"] = deepnet
    state["_inputs"] = tensors
    state["_output"] = out
    state["_input_cells"] = [t.cell.get_name() for t in tensors if t.cell is not None]
    return out
