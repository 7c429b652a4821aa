"""`Softmax`: softmax over the channels of each pixel (optionally per group of channels)."""
from n2d2.cells.nn.base import ACTIVATION_SPEC
from n2d2.cells.nn.lazy import LazyCell
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.ir.ops import activation_spec


class Softmax(LazyCell):
    """Softmax over channels at each pixel.

    Parameters
    ----------
    with_loss : bool
        True when a target fuses the cross-entropy gradient (it seeds softmax - onehot): the
        backward then passes the incoming gradient straight through. Settable later.
    group_size : int
        Softmax over consecutive groups of that many channels (must divide the channel
        count); 0 = all channels.
    """

    _arguments = ("with_loss", "group_size")
    _parameters = {"activation": ACTIVATION_SPEC}

    def __init__(self, with_loss=False, group_size=0, **config):
        if not isinstance(with_loss, bool):
            raise WrongInputType("with_loss", type(with_loss), ["bool"])
        if not isinstance(group_size, int) or isinstance(group_size, bool):
            raise WrongInputType("group_size", type(group_size), ["int"])
        if group_size < 0:
            raise WrongValue("group_size", group_size, ["a non-negative int"])
        super().__init__({"with_loss": with_loss, "group_size": group_size}, **config)

    def set_parameter(self, key, value):
        if key == "with_loss":  # the one constructor argument upstream lets scripts change
            if not isinstance(value, bool):
                raise WrongInputType("with_loss", type(value), ["bool"])
            self._args["with_loss"] = value
            return
        super().set_parameter(key, value)

    def _build(self, tensors, channels):
        g = self._args["group_size"]
        if channels == 0:
            raise ValueError(f"Cell '{self._name}' (Softmax): softmax over 0 channels (input shapes "
                             f"{[t.shape() for t in tensors]}); expected at least 1")
        if g and channels % g:
            raise ValueError(f"Cell '{self._name}' (Softmax): group_size {g} does not divide the {channels} "
                             f"input channels (input shapes {[t.shape() for t in tensors]})")

    def _ir_node(self):
        a = self._args
        return "Softmax", {"group_size": a["group_size"], "with_loss": a["with_loss"],
                           "activation": activation_spec(self._config["activation"])}, {}

    def _backward(self, ctx, dy, needs):
        # `with_loss` may change between the forward and the backward pass: read it now.
        opdef, attrs, arrays, saved = ctx
        attrs = dict(attrs, with_loss=self._args["with_loss"])
        return super()._backward((opdef, attrs, arrays, saved), dy, needs)
