"""Convolution cells: `Conv`, `ConvDepthWise`, `ConvPointWise` (and the base shared with `Deconv`).

Sizes are `[X, Y]` = `[width, height]` as in N2D2; the ops in `n2d2.ops.conv` take (height,
width) pairs. A connection table `mapping` (bool Tensor of numpy shape [nb_inputs,
nb_outputs], element [c][o] true when output o reads channel c) decides how weights are
stored: a table of equal diagonal blocks (grouped, depthwise) keeps only the connected
kernels, [O, C/G, kH, kW] as PyTorch does, and runs a batched GEMM per group; any other table
keeps dense [O, C, kH, kW] weights whose unconnected kernels stay zero (and get no gradient).
"""

import numpy as np

from n2d2.backend import to_host
from n2d2.cells.nn.base import format_rows
from n2d2.cells.nn.weighted import WeightedCell, solver_and_filler_specs
from n2d2.configurable import Spec, format_value
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.ir.ops import activation_spec
from n2d2.mapping import Mapping
from n2d2.ops import conv as ops
from n2d2.tensor import Tensor


def check_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool):
        raise WrongInputType(name, type(value), ["int"])
    return value


def check_dims(name, value, fill, minimum):
    """A `[X, Y]` size list; N2D2 pads a 1-element list with `fill` ([k] -> [k, 1])."""
    if not isinstance(value, list):
        raise WrongInputType(name, type(value), ["list"])
    for v in value:
        check_int(f"{name} element", v)
    if len(value) == 1:
        value = [value[0], fill]
    if len(value) != 2:
        raise WrongValue(name, value, ["[X, Y] (only 2-D kernels are supported)"])
    if minimum is not None and min(value) < minimum:
        raise WrongValue(name, value, [f"sizes >= {minimum}"])
    return list(value)


def check_conv_arguments(nb_inputs, nb_outputs, nb_input_cells, kernel_dims, **dims):
    """Conv/Deconv constructor arguments, checked, in print order.

    `dims` are the optional `[X, Y]` sizes in print order; None is the default ([0, 0] for
    `padding_dims`, which may be negative, [1, 1] for the others).
    """
    check_int("nb_inputs", nb_inputs)
    check_int("nb_outputs", nb_outputs)
    check_int("nb_input_cells", nb_input_cells)
    arguments = {"nb_inputs": nb_inputs, "nb_outputs": nb_outputs,
                 "kernel_dims": check_dims("kernel_dims", kernel_dims, 1, 1)}
    for name, value in dims.items():
        if name == "padding_dims":
            arguments[name] = check_dims(name, [0, 0] if value is None else value, 0, None)
        else:
            arguments[name] = check_dims(name, [1, 1] if value is None else value, 1, 1)
    return arguments


class ConvolutionCell(WeightedCell):
    """What Conv and Deconv share: kernel geometry, connection table, weight API, parameter files.

    Subclasses say how a connected (output, channel) pair indexes the weight array
    (`_pair_index`) and in which order the weight array stores outputs and channels.
    """

    _outputs_first = True  # weights [O, C/G, kH, kW] (Conv); False: [C, O/G, kH, kW] (Deconv)

    def __init__(self, arguments, mapping=None, **config):
        nb_inputs, nb_outputs = arguments["nb_inputs"], arguments["nb_outputs"]
        if nb_inputs < 1 or nb_outputs < 1:
            raise WrongValue("nb_inputs/nb_outputs", [nb_inputs, nb_outputs], ["positive sizes"])
        self._groups = 1
        self._mask = None          # device bool [C, O] for an irregular table, else None
        self._table = None         # host bool [C, O], None when fully connected
        self._input_hw = None      # (H, W) frozen at the first call
        if mapping is not None:
            config["mapping"] = mapping   # set before the weights are filled, in their final layout
        super().__init__(arguments, **config)

    # -- sizes ----------------------------------------------------------------------------------
    def _kernel_hw(self):
        kx, ky = self._args["kernel_dims"]
        return ky, kx

    def _hw(self, key):
        """An [X, Y] argument as the ops' (height, width)."""
        x, y = self._args[key]
        return y, x

    def _fans(self):
        kh, kw = self._kernel_hw()
        return kh * kw * self._args["nb_inputs"], kh * kw * self._args["nb_outputs"]

    def _weights_shape(self):
        c, o = self._args["nb_inputs"], self._args["nb_outputs"]
        groups = self._groups if self._groups else 1
        first, second = (o, c // groups) if self._outputs_first else (c, o // groups)
        return (first, second) + self._kernel_hw()

    def _weight_tensor_shape(self):
        return list(self._kernel_hw())

    # -- connection table -----------------------------------------------------------------------
    def _on_parameter_change(self, key, value):
        super()._on_parameter_change(key, value)
        if key == "mapping":
            self._set_mapping(value)

    def _set_mapping(self, mapping):
        c, o = self._args["nb_inputs"], self._args["nb_outputs"]
        if mapping is None:
            table = None
        else:
            if mapping.shape() != [c, o]:
                raise ValueError(f"Cell '{self._name}': mapping must have the numpy shape [nb_inputs, nb_outputs] "
                                 f"= [{c}, {o}], got {mapping.shape()}")
            table = np.asarray(to_host(mapping._data)) != 0
        dense = self._dense_weights() if getattr(self, "_weights", None) is not None else None
        groups = 1 if table is None else ops.mapping_groups(table)
        self._table = None if groups == 1 else table
        self._groups = groups
        self._mask = self._to_model_device(table) if groups == 0 else None
        if dense is not None:
            # re-store the current weights in the layout of the new table (unconnected: dropped)
            self._weights = self._to_model_device(np.zeros(self._weights_shape(), dtype=np.float32))
            self._set_pair_kernels(*self._connections(), dense[self._connections()])

    def _config_str(self):
        # The mapping prints only when one was given (ConvDepthWise gives one).
        keys = [k for k in self._parameters if k != "mapping" or self._config["mapping"] is not None]
        return ", ".join(f"{k}={format_value(self._config[k])}" for k in keys)

    def _connections(self, channel_major=False):
        """Index arrays (outputs, channels) of the connected pairs, output-major (or channel-major)."""
        c, o = self._args["nb_inputs"], self._args["nb_outputs"]
        if self._groups == 0:
            table = self._table
        elif self._groups == 1:
            table = np.ones((c, o), dtype=bool)
        else:
            g = self._groups
            table = np.kron(np.eye(g, dtype=bool), np.ones((c // g, o // g), dtype=bool))
        if channel_major:
            chans, outs = np.nonzero(table)
            return outs, chans
        outs, chans = np.nonzero(table.T)
        return outs, chans

    def _is_connected(self, output_index, channel_index):
        if self._groups == 0:
            return bool(self._table[channel_index, output_index])
        g = self._groups
        return output_index // (self._args["nb_outputs"] // g) == channel_index // (self._args["nb_inputs"] // g)

    def _pair_index(self, outs, chans):
        """Index into the weight array of connected (output, channel) pairs (arrays or ints)."""
        g = self._groups if self._groups else 1
        if self._outputs_first:
            return outs, chans % (self._args["nb_inputs"] // g)
        return chans, outs % (self._args["nb_outputs"] // g)

    def _pair_kernels(self, outs, chans):
        """Host float32 array [P, kH, kW] of the kernels of the given connected pairs."""
        return np.array(to_host(self._weights)[self._pair_index(outs, chans)], dtype=np.float32)

    def _set_pair_kernels(self, outs, chans, kernels):
        kernels = np.asarray(kernels, dtype=np.float32).reshape((len(outs),) + self._kernel_hw())
        if isinstance(self._weights, np.ndarray):
            self._weights[self._pair_index(outs, chans)] = kernels
            return
        host = to_host(self._weights).copy()   # device weights: edit on the host, write back in place
        host[self._pair_index(outs, chans)] = kernels
        self._weights[...] = self._to_model_device(host)

    def _dense_weights(self):
        """Host [O, C, kH, kW] weights, zeros where not connected."""
        outs, chans = self._connections()
        dense = np.zeros((self._args["nb_outputs"], self._args["nb_inputs"]) + self._kernel_hw(), np.float32)
        dense[outs, chans] = self._pair_kernels(outs, chans)
        return dense

    def _mask_weights(self):
        if self._mask is not None and getattr(self, "_weights", None) is not None:
            mask = self._mask.T if self._outputs_first else self._mask
            self._weights *= mask[:, :, None, None]

    # -- weight API -----------------------------------------------------------------------------
    def get_weight(self, output_index, channel_index) -> Tensor:
        """Kernel of (output, channel), a Tensor of numpy shape [kH, kW] (zeros if not connected)."""
        self._check_indices(output_index, channel_index)
        if not self._is_connected(output_index, channel_index):
            return Tensor(self._weight_tensor_shape())
        kernel = self._pair_kernels(output_index, channel_index)
        return Tensor._wrap(np.array(kernel, dtype=np.float32))

    def set_weight(self, output_index, channel_index, weight: Tensor):
        """Set the kernel of (output, channel); an unconnected pair only accepts zeros."""
        if not isinstance(weight, Tensor):
            raise WrongInputType("weight", type(weight), ["Tensor"])
        self._check_indices(output_index, channel_index)
        values = np.asarray(weight.to_numpy(), dtype=np.float32)
        kh, kw = self._kernel_hw()
        if values.size != kh * kw:
            raise ValueError(f"Cell '{self._name}': weight ({output_index}, {channel_index}) is a [{kh}, {kw}] "
                             f"kernel, got a tensor of shape {weight.shape()}")
        if not self._is_connected(output_index, channel_index):
            if values.any():
                raise RuntimeError(f"Cell '{self._name}': channel {channel_index} is not connected to output "
                                   f"{output_index} (mapping); its kernel stays zero")
            return
        self._set_pair_kernels(np.array([output_index]), np.array([channel_index]), values)

    # -- inputs ---------------------------------------------------------------------------------
    def _geometry(self, in_shape):
        """The op's geometry for an NCHW input shape (subclasses)."""
        raise NotImplementedError

    def _check_input(self, tensors):
        for t in tensors:
            if t.nb_dims() != 4:
                raise ValueError(f"Cell '{self._name}' ({self.get_type()}): input tensors must have 4 dims "
                                 f"(N, C, H, W), got shape {t.shape()}")
        shapes = [t.shape() for t in tensors]
        channels = sum(t.dimZ() for t in tensors)
        if channels != self._args["nb_inputs"]:
            raise RuntimeError(f"Cell '{self._name}' ({self.get_type()}): Total number of input dimZ = {channels} "
                               f"(input shapes {shapes}) differs from nb_inputs = {self._args['nb_inputs']}")
        hw = (tensors[0].dimY(), tensors[0].dimX())
        if self._input_hw is None:
            try:
                self._geometry((tensors[0].dimB(), channels) + hw)
            except ValueError as e:
                raise ValueError(f"Cell '{self._name}' ({self.get_type()}): input shapes {shapes}: {e}") from None
            self._input_hw = hw
        elif hw != self._input_hw:
            raise RuntimeError(f"Cell '{self._name}' ({self.get_type()}): Unmatching dims: input H, W = "
                               f"{list(hw)} (shapes {shapes}), the first call had {list(self._input_hw)}")

    def _concat(self, xs):
        return xs[0] if len(xs) == 1 else self._xp().concatenate(xs, axis=1)

    def _attrs(self):
        """The op attributes shared by Conv and Deconv ((height, width) pairs, plain data)."""
        return {
            "stride": self._hw("stride_dims"),
            "padding": self._hw("padding_dims"),
            "dilation": self._hw("dilation_dims"),
            "groups": self._groups or 1,
            "mapping": self._table if self._groups == 0 else None,
            "activation": activation_spec(self._config["activation"]),
        }

    # -- free parameters ------------------------------------------------------------------------
    def _check_remap(self):
        if self._config["outputs_remap"]:
            raise NotImplementedError(f"Cell '{self._name}': outputs_remap "
                                      f"'{self._config['outputs_remap']}' is not supported")

    def _weights_rows(self):
        """The weights as N2D2 writes them (a list of 1-D rows, ragged for irregular tables).

        OCHW: one row per output, the kernels of its connected channels in channel order,
        each row-major (H then W). HWCO: one row per kernel position (row-major), the values
        of every connected pair in (channel, output) order. `weights_export_flip` writes each
        kernel rotated by 180 degrees.
        """
        kh, kw = self._kernel_hw()
        flip = self._config["weights_export_flip"]
        if self._config["weights_export_format"] == "HWCO":
            kernels = self._pair_kernels(*self._connections(channel_major=True)).reshape(-1, kh * kw)
            if flip:
                kernels = kernels[:, ::-1]
            return list(kernels.T)
        outs, chans = self._connections()
        kernels = self._pair_kernels(outs, chans).reshape(-1, kh * kw)
        if flip:
            kernels = kernels[:, ::-1]
        counts = np.bincount(outs, minlength=self._args["nb_outputs"])
        return [row.reshape(-1) for row in np.split(kernels, np.cumsum(counts)[:-1])]

    def _set_weights_rows(self, rows):
        """Inverse of `_weights_rows` (rows, or all the values in file order)."""
        kh, kw = self._kernel_hw()
        values = np.concatenate([np.asarray(r, dtype=np.float32).reshape(-1) for r in rows]) \
            if isinstance(rows, list) else np.asarray(rows, dtype=np.float32).reshape(-1)
        flip = self._config["weights_export_flip"]
        if self._config["weights_export_format"] == "HWCO":
            outs, chans = self._connections(channel_major=True)
            kernels = values.reshape(kh * kw, len(outs)).T
        else:
            outs, chans = self._connections()
            kernels = values.reshape(len(outs), kh * kw)
        if flip:
            kernels = kernels[:, ::-1]
        self._set_pair_kernels(outs, chans, kernels)

    def _nb_weight_values(self):
        kh, kw = self._kernel_hw()
        return len(self._connections()[0]) * kh * kw

    def _parameter_files(self):
        self._check_remap()
        files = {"_weights": "".join(format_rows(row.reshape(1, -1)) for row in self._weights_rows())}
        if self.has_bias():
            files["_biases"] = format_rows(to_host(self._biases).reshape(-1, 1))
        return files

    def _parameter_shapes(self):
        self._check_remap()
        shapes = {"_weights": (self._nb_weight_values(),)}
        if self.has_bias():
            shapes["_biases"] = (self._args["nb_outputs"],)
        return shapes

    def _set_parameter_values(self, values):
        self._check_remap()
        if "_weights" in values:
            self._set_weights_rows(values["_weights"])
        if "_biases" in values and self.has_bias():
            self._biases[...] = self._to_model_device(values["_biases"])


def convolution_parameters(quantizer=True):
    """The configuration parameters of Conv (Deconv: without `quantizer`), in print order."""
    specs = solver_and_filler_specs()
    if not quantizer:
        del specs["quantizer"]
    return {
        "back_propagate": Spec(bool, True),
        "no_bias": Spec(bool, False),
        "outputs_remap": Spec(str, ""),
        "weights_export_flip": Spec(bool, False),
        "weights_export_format": Spec(str, "OCHW", choices=("OCHW", "HWCO")),
        **specs,
        "mapping": Spec(Tensor, None, allow_none=True),
    }


class Conv(ConvolutionCell):
    """2-D convolution (N2D2 ConvCell).

    Parameters
    ----------
    nb_inputs : int
        Number of input channels (all inputs of an Interface together).
    nb_outputs : int
        Number of output channels.
    kernel_dims : list
        Kernel [X, Y]; `[k]` means `[k, 1]`.
    nb_input_cells : int
        Accepted for compatibility (inputs are concatenated along channels).
    sub_sample_dims, stride_dims, dilation_dims : list, optional
        [X, Y], default [1, 1]. Sub-sampling sums the convolution output over blocks, as
        N2D2's CPU kernel does.
    padding_dims : list, optional
        Symmetric padding [X, Y] (negative crops), default [0, 0].
    mapping : Tensor, optional
        Bool/int [nb_inputs, nb_outputs]: [c][o] true when output o reads channel c.
    """

    _arguments = ("nb_inputs", "nb_outputs", "kernel_dims", "sub_sample_dims", "stride_dims", "padding_dims",
                  "dilation_dims")
    _parameters = convolution_parameters()

    def __init__(self, nb_inputs, nb_outputs, kernel_dims, nb_input_cells=1, sub_sample_dims=None,
                 stride_dims=None, padding_dims=None, dilation_dims=None, mapping=None, **config):
        arguments = check_conv_arguments(nb_inputs, nb_outputs, nb_input_cells, kernel_dims,
                                         sub_sample_dims=sub_sample_dims, stride_dims=stride_dims,
                                         padding_dims=padding_dims, dilation_dims=dilation_dims)
        super().__init__(arguments, mapping=mapping, **config)

    def _geometry(self, in_shape):
        return ops.ConvGeometry(in_shape, self._args["nb_outputs"], self._kernel_hw(),
                                self._hw("stride_dims"), self._hw("padding_dims"),
                                self._hw("dilation_dims"), self._hw("sub_sample_dims"))

    def _ir_node(self):
        """Computed through the IR op "Conv" (n2d2.ir.ops), which calls n2d2.ops.conv."""
        attrs = self._attrs()
        attrs["sub_sample"] = self._hw("sub_sample_dims")
        return self._with_quantizer("Conv", attrs, self._params())


class ConvDepthWise(Conv):
    """Depthwise convolution: `Conv(nb_channel, nb_channel, ...)`, each output reads its own channel."""

    def __init__(self, nb_channel, kernel_dims, **config):
        if "mapping" in config:
            raise RuntimeError("ConvDepthWise does not support custom mappings (it is one channel per group)")
        check_int("nb_channel", nb_channel)

        config["mapping"] = Mapping(nb_channels_per_group=1).create_mapping(nb_channel, nb_channel)
        super().__init__(nb_channel, nb_channel, kernel_dims, **config)


class ConvPointWise(Conv):
    """Pointwise (1x1, stride 1) convolution."""

    def __init__(self, nb_inputs, nb_outputs, **config):
        super().__init__(nb_inputs, nb_outputs, [1, 1], stride_dims=[1, 1], **config)
