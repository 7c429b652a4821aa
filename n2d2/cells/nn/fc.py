"""`Fc`: fully connected cell; any 4-D input whose C*H*W equals nb_inputs."""
from n2d2.cells.nn.weighted import WeightedCell, solver_and_filler_specs
from n2d2.configurable import Spec
from n2d2.error_handler import WrongInputType
from n2d2.ops import fc as ops


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

    def _forward(self, xs):
        xp = self._xp()
        n = xs[0].shape[0]
        x2d = xs[0].reshape(n, -1) if len(xs) == 1 else xp.concatenate([x.reshape(n, -1) for x in xs], axis=1)
        w = self._weights
        keep = self._config["drop_connect"]
        mask = None
        if keep < 1.0 and not self._inference:
            mask = xp.asarray(self._rng_uniform(w.shape) < keep, dtype=w.dtype)
            w = w * mask
        z = ops.fc_forward(x2d, w, self._biases if self.has_bias() else None)
        y, act = self._activate(z)
        return y.reshape(n, -1, 1, 1), (x2d, w, mask, act, [x.shape for x in xs])

    def _rng_uniform(self, shape):
        from n2d2.settings import global_variables

        return self._to_model_device(global_variables.rng.random(shape))

    def _backward(self, ctx, dy, needs):
        x2d, w, mask, act, shapes = ctx
        n = dy.shape[0]
        dz = self._deactivate(dy.reshape(n, -1), act)
        need_dx = self._config["back_propagate"] and any(needs)
        dx, dw, db = ops.fc_backward(dz, x2d, w, need_dx)
        if mask is not None:
            dw *= mask
        self._accumulate_grad("weights", dw)
        if self.has_bias():
            self._accumulate_grad("biases", db)
        if dx is None:
            return [None] * len(shapes)
        out, offset = [], 0
        for shape, need in zip(shapes, needs):
            size = int(shape[1] * shape[2] * shape[3]) if len(shape) == 4 else int(dx.shape[1])
            out.append(dx[:, offset:offset + size].reshape(shape) if need else None)
            offset += size
        return out
