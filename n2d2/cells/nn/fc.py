"""`Fc`: fully connected cell; any 4-D input whose C*H*W equals nb_inputs."""
from n2d2.cells.nn.weighted import WeightedCell, solver_and_filler_specs
from n2d2.configurable import Spec
from n2d2.error_handler import WrongInputType
from n2d2.ir import ops as ir_ops
from n2d2.ir.ops import activation_spec
from n2d2.settings import global_variables


class Fc(WeightedCell):
    """Fully connected layer; output shape [N, nb_outputs, 1, 1].

    Parameters
    ----------
    nb_inputs : int
        C*H*W of the input.
    nb_outputs : int
        Number of outputs.
    """

    _arguments = ("nb_inputs", "nb_outputs")
    _parameters = {
        "back_propagate": Spec(bool, True),
        "drop_connect": Spec(float, 1.0),
        "no_bias": Spec(bool, False),
        "normalize": Spec(bool, False),
        "outputs_remap": Spec(str, ""),
        "weights_export_format": Spec(str, "OC", choices=("OC", "CO")),
        **solver_and_filler_specs(),
    }

    def __init__(self, nb_inputs, nb_outputs, nb_input_cells=1, **config):
        for key, value in (("nb_inputs", nb_inputs), ("nb_outputs", nb_outputs), ("nb_input_cells", nb_input_cells)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise WrongInputType(key, type(value), ["int"])
        super().__init__({"nb_inputs": nb_inputs, "nb_outputs": nb_outputs}, **config)

    def _weights_shape(self):
        return (self._args["nb_outputs"], self._args["nb_inputs"])

    def _fans(self):
        return self._args["nb_inputs"], self._args["nb_outputs"]

    def _weight_view(self, o, c):
        return self._weights[o, c:c + 1]

    def _weights_rows(self):
        rows = super()._weights_rows()
        return rows.T if self._config["weights_export_format"] == "CO" else rows

    def _set_weights_rows(self, rows):
        super()._set_weights_rows(rows.T if self._config["weights_export_format"] == "CO" else rows)

    def _check_input(self, tensors):
        total = sum(t.dimX() * t.dimY() * t.dimZ() for t in tensors)
        if total != self._args["nb_inputs"]:
            shapes = [t.shape() for t in tensors]
            raise RuntimeError(f"Cell '{self._name}' (Fc): input shape {shapes} has C*H*W = {total}, "
                               f"expected nb_inputs = {self._args['nb_inputs']}")
        if self._config["normalize"]:
            raise NotImplementedError(f"Cell '{self._name}': Fc normalize=True is not supported")

    def _ir_node(self):
        return self._with_quantizer("Fc", {"activation": activation_spec(self._config["activation"])}, self._params())

    def _compilable(self) -> bool:
        # DropConnect is eager only
        return (self._inference or self._config["drop_connect"] >= 1.0) and super()._compilable()

    def _forward(self, xs):
        keep = self._config["drop_connect"]
        if keep >= 1.0 or self._inference:
            return super()._forward(xs)
        # DropConnect: each weight kept with probability `drop_connect` for this batch.

        w = self._weights
        mask = self._to_model_device((global_variables.rng.random(w.shape) < keep).astype(w.dtype))
        op, attrs, params = self._ir_node()
        arrays = {role: array for role, (array, _) in params.items()}
        arrays["weights"] = w * mask
        opdef = ir_ops.get(op)
        ys, saved = opdef.forward(attrs, xs, arrays, training=True)
        return ys[0], (opdef, attrs, arrays, saved, mask)

    def _backward(self, ctx, dy, needs):
        if len(ctx) == 4:
            return super()._backward(ctx, dy, needs)
        opdef, attrs, arrays, saved, mask = ctx
        if not self._config["back_propagate"]:
            needs = [False] * len(needs)
        dxs, grads = opdef.backward(attrs, saved, [dy], needs, arrays)
        grads["weights"] = grads["weights"] * mask  # the gradient reaches kept weights only
        for role, grad in grads.items():
            self._accumulate_grad(role, grad)
        return dxs
