"""Activation functions (`n2d2.activation`), attached to cells through `activation=`.

Each object is a configuration (printed as upstream) plus `forward(z)` / `backward(dy, z)`
calls into `n2d2.ops.activation`, where the math lives once.
"""
from n2d2.configurable import Configurable, Spec
from n2d2.ops import activation as ops
from n2d2.quantizer import ActivationQuantizer
from n2d2.settings import global_variables

_QUANTIZER = Spec(ActivationQuantizer, None, allow_none=True)


class ActivationFunction(Configurable):
    """Abstract base of activation functions."""

    def __init__(self, model=None, datatype=None, quantizer=None, **config):
        if type(self) is ActivationFunction:
            raise TypeError("ActivationFunction is abstract")
        self._model = model or global_variables.default_model
        super().__init__(**config)
        if quantizer is not None:
            self.set_parameter("quantizer", quantizer)

    def has_quantizer(self) -> bool:
        return self._config["quantizer"] is not None

    def get_quantizer(self):
        """The activation quantizer; RuntimeError when there is none, as upstream."""
        if self._config["quantizer"] is None:
            raise RuntimeError("No Quantizer in activation")
        return self._config["quantizer"]

    def set_quantizer(self, quantizer):
        """Attach a quantizer; RuntimeError when one is attached already, as upstream."""
        if self._config["quantizer"] is not None:
            raise RuntimeError("Quantizer already exists in activation")
        self.set_parameter("quantizer", quantizer)

    def forward(self, z):
        raise NotImplementedError

    def backward(self, dy, z):
        raise NotImplementedError


class Linear(ActivationFunction):
    """Identity, optionally clipped to [-clipping, clipping] (0 = no clipping)."""

    _parameters = {"clipping": Spec(float, 0.0), "quantizer": _QUANTIZER}

    def forward(self, z):
        return ops.linear_forward(z, self.clipping)

    def backward(self, dy, z):
        return ops.linear_backward(dy, z, self.clipping)


class Rectifier(ActivationFunction):
    """ReLU with optional leak slope and upper clipping."""

    _parameters = {"clipping": Spec(float, 0.0), "leak_slope": Spec(float, 0.0), "quantizer": _QUANTIZER}

    def forward(self, z):
        return ops.rectifier_forward(z, self.leak_slope, self.clipping)

    def backward(self, dy, z):
        return ops.rectifier_backward(dy, z, self.leak_slope, self.clipping)


class Tanh(ActivationFunction):
    """tanh(alpha * x)."""

    _parameters = {"alpha": Spec(float, 1.0), "quantizer": _QUANTIZER}

    def forward(self, z):
        return ops.tanh_forward(z, self.alpha)

    def backward(self, dy, z):
        return ops.tanh_backward(dy, z, self.alpha)


class Logistic(ActivationFunction):
    """Sigmoid 1 / (1 + exp(-x)) (N2D2 INI type Logistic)."""

    _parameters = {"quantizer": _QUANTIZER}

    def forward(self, z):
        return ops.logistic_forward(z)

    def backward(self, dy, z):
        return ops.logistic_backward(dy, z)


class Saturation(ActivationFunction):
    """Clamp to [-threshold, threshold] (N2D2 INI type Saturation, Threshold=1.0)."""

    _parameters = {"threshold": Spec(float, 1.0), "quantizer": _QUANTIZER}

    def forward(self, z):
        return ops.saturation_forward(z, self.threshold)

    def backward(self, dy, z):
        return ops.saturation_backward(dy, z, self.threshold)


class Softplus(ActivationFunction):
    """log(1 + exp(x))."""

    _parameters = {"quantizer": _QUANTIZER}

    def forward(self, z):
        return ops.softplus_forward(z)

    def backward(self, dy, z):
        return ops.softplus_backward(dy, z)
