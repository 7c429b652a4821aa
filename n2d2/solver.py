"""Solvers (`n2d2.solver`): SGD with N2D2's learning-rate policies, and Adam.

A solver updates one or more parameter arrays in place. Gradients arrive summed over the
batch (d(loss)/d(w), standard sign) with the batch size; SGD scales by lr / (batch *
iteration_size) as N2D2 does. State (momentum, Adam moments, iteration count, accumulated
gradient) is kept per parameter array, so sharing a solver object never mixes two parameters.
"""
import math
import re

from n2d2 import distributed
from n2d2.backend import array_module
from n2d2.configurable import Configurable, Spec
from n2d2.error_handler import WrongValue
from n2d2.settings import global_variables

_POLICIES = ("None", "StepDecay", "ExponentialDecay", "InvTDecay", "PolyDecay", "InvDecay", "CosineDecay")
_NUMBER = r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?"
_CLAMPING = re.compile(rf"^(({_NUMBER})?:({_NUMBER})?)?$")


def parse_clamping(text: str):
    """'min:max', ':max', 'min:' or '' -> (min or None, max or None)."""
    if not isinstance(text, str) or not _CLAMPING.match(text):
        raise WrongValue("clamping", text, [], expected='a string "MIN:MAX", ":MAX", "MIN:" or "" (no clamping), '
                                                    'where MIN and MAX are numbers, e.g. "-1.0:1.0" or ":0.5"')
    if text == "":
        return None, None
    low, high = text.split(":")
    return (float(low) if low else None), (float(high) if high else None)


_last_learning_rate_log = None


def _log_learning_rate(iteration: int, batch_size: int, lr: float):
    """Print N2D2's "Learning rate after ..." line once per change: every parameter's solver
    state reaches the same step at the same iteration, and one line says it for all of them."""
    global _last_learning_rate_log

    if not distributed.is_root():
        return
    line = f"Learning rate after {iteration}({iteration * batch_size}) iteration(s): {lr}"
    if line != _last_learning_rate_log:
        _last_learning_rate_log = line
        print(line)


class _ParameterState:
    __slots__ = ("iteration", "accumulated", "nb_accumulated", "buffers", "last_step")

    def __init__(self):
        self.iteration = 0
        self.accumulated = None
        self.nb_accumulated = 0
        self.buffers = {}
        self.last_step = None


class Solver(Configurable):
    """Abstract base of solvers."""

    def __init__(self, model=None, datatype=None, **config):
        if type(self) is Solver:
            raise TypeError("Solver is abstract: use SGD or Adam")
        self._model = model or global_variables.default_model
        self._states = {}
        super().__init__(**config)

    def copy(self):
        """An independent solver with the same configuration and no state."""
        clone = type(self)(model=self._model)
        for key in self._parameters:
            clone._config[key] = self._config[key]
        return clone

    def _state(self, param) -> _ParameterState:
        key = id(param)
        entry = self._states.get(key)
        if entry is None or entry[0] is not param:
            entry = (param, _ParameterState())
            self._states[key] = entry
        return entry[1]

    def update(self, param, grad, batch_size: int):
        """Apply one update of `param` (in place) from `grad` summed over `batch_size` samples."""
        state = self._state(param)
        iteration_size = self._config.get("iteration_size", 1)
        if iteration_size > 1:
            state.accumulated = grad.copy() if state.accumulated is None else state.accumulated + grad
            state.nb_accumulated += 1
            if state.nb_accumulated < iteration_size:
                return
            grad, state.accumulated, state.nb_accumulated = state.accumulated, None, 0
        self._apply(param, grad, batch_size, state)
        low, high = parse_clamping(self._config["clamping"])
        if low is not None or high is not None:
            xp = array_module(param)
            xp.clip(param, low, high, out=param)

    def _apply(self, param, grad, batch_size, state):
        raise NotImplementedError


class SGD(Solver):
    """Stochastic gradient descent with momentum, weight decay and learning-rate policies."""

    _parameters = {
        "clamping": Spec(str, "", parse=parse_clamping),
        "decay": Spec(float, 0.0),
        "iteration_size": Spec(int, 1),
        "learning_rate": Spec(float, 0.01),
        "learning_rate_decay": Spec(float, 0.1),
        "learning_rate_policy": Spec(str, "None", choices=_POLICIES),
        "learning_rate_step_size": Spec(int, 1),
        "max_iterations": Spec(int, 0),
        "min_decay": Spec(float, 0.0),
        "momentum": Spec(float, 0.0),
        "polyak_momentum": Spec(bool, True),
        "power": Spec(float, 0.0),
        "warm_up_duration": Spec(int, 0),
        "warm_up_lr_frac": Spec(float, 0.25),
    }

    def learning_rate_at(self, iteration: int, batch_size: int) -> float:
        """The learning rate used by the update that follows `iteration` earlier updates."""
        c = self._config
        lr, policy, decay = c["learning_rate"], c["learning_rate_policy"], c["learning_rate_decay"]
        max_it = c["max_iterations"]
        it = min(iteration, max_it) if max_it > 0 else iteration
        step = it * c["iteration_size"] * batch_size // c["learning_rate_step_size"]
        if policy == "None":
            return lr
        if policy == "StepDecay":
            return lr * decay ** step
        if policy == "ExponentialDecay":
            return lr * math.exp(-decay * step)
        if policy == "InvTDecay":
            return lr / (1.0 + decay * step)
        if policy == "PolyDecay":
            if max_it <= 0:
                raise RuntimeError("SGD: learning_rate_policy PolyDecay needs max_iterations > 0")
            return lr * (1.0 - it / max_it) ** c["power"]
        if policy == "InvDecay":
            return lr * (1.0 + decay * it) ** (-c["power"])
        # CosineDecay with linear warm-up
        warm_up, frac = c["warm_up_duration"], c["warm_up_lr_frac"]
        if step < warm_up:
            return lr * ((1.0 - frac) * step / warm_up + frac)
        span = max_it - warm_up
        if span <= 0:
            raise RuntimeError("SGD: learning_rate_policy CosineDecay needs max_iterations > warm_up_duration")
        cosine = 0.5 * (1.0 + math.cos(math.pi * (step - warm_up) / span))
        return lr * max(0.0, (1.0 - c["min_decay"]) * cosine + c["min_decay"])

    def advance(self, state, batch_size: int) -> float:
        """The learning rate of this update of one parameter; counts the iteration and logs a
        learning-rate change (every backend's SGD update goes through here)."""
        c = self._config
        lr = self.learning_rate_at(state.iteration, batch_size)
        if c["learning_rate_policy"] != "None":
            step = state.iteration * c["iteration_size"] * batch_size // c["learning_rate_step_size"]
            if state.last_step is not None and step != state.last_step:
                _log_learning_rate(state.iteration, batch_size, lr)
            state.last_step = step
        state.iteration += 1
        return lr

    def _apply(self, param, grad, batch_size, state):
        c = self._config
        lr = self.advance(state, batch_size)
        rate = param.dtype.type(lr / (batch_size * c["iteration_size"]))
        momentum, decay = c["momentum"], c["decay"]
        if momentum == 0.0 and decay == 0.0:
            param -= rate * grad
            return
        m = state.buffers.get("momentum")
        if m is None:
            xp = array_module(param)
            m = state.buffers["momentum"] = xp.zeros_like(param)
        if c["polyak_momentum"]:
            # Heavy ball: m = momentum*m - rate*g - decay*lr*w ; w += m
            m *= param.dtype.type(momentum)
            m -= rate * grad
            if decay:
                m -= param.dtype.type(decay * lr) * param
            param += m
        else:
            # Velocity accumulates raw gradients, the rate is applied on the update.
            m *= param.dtype.type(momentum)
            m += grad / param.dtype.type(batch_size * c["iteration_size"])
            if decay:
                m += param.dtype.type(decay) * param
            param -= param.dtype.type(lr) * m


class Adam(Solver):
    """Adam with bias correction (the batch-mean gradient is used)."""

    _parameters = {
        "beta1": Spec(float, 0.9),
        "beta2": Spec(float, 0.999),
        "clamping": Spec(str, "", parse=parse_clamping),
        "epsilon": Spec(float, 1e-8),
        "learning_rate": Spec(float, 0.001),
    }

    def _apply(self, param, grad, batch_size, state):
        c = self._config
        xp = array_module(param)
        state.iteration += 1
        t = state.iteration
        b1, b2 = c["beta1"], c["beta2"]
        g = grad / param.dtype.type(batch_size)
        if "m" not in state.buffers:
            state.buffers["m"] = xp.zeros_like(param)
            state.buffers["v"] = xp.zeros_like(param)
        m, v = state.buffers["m"], state.buffers["v"]
        m *= param.dtype.type(b1)
        m += param.dtype.type(1 - b1) * g
        v *= param.dtype.type(b2)
        v += param.dtype.type(1 - b2) * g * g
        alpha = c["learning_rate"] * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        eps_hat = c["epsilon"] * math.sqrt(1 - b2 ** t)
        param -= param.dtype.type(alpha) * m / (xp.sqrt(v) + param.dtype.type(eps_hat))
