"""Post-training quantization (PTQ) and its integer simulation; the integer C export.

`quantize_network(deepnet_cell, provider, nb_bits=8, calibration=N, ...)` returns an
`IntegerNetwork` (plain data per node and a pure-numpy int64 simulation); upstream's entry
point is `n2d2.quantizer.PTQ`, the export `n2d2.export.export_c / export_cpp(nb_bits=8,
calibration=N)`. See n2d2/quantization/ptq.py and integer.py.
"""
from n2d2.quantization.integer import SCALING_MODES, QuantizationError, approximate, requantize, round_away
from n2d2.quantization.ptq import (
                                   CLIPPING_MODES,
                                   Histogram,
                                   IntegerNetwork,
                                   TensorQ,
                                   calibrate,
                                   calibration_partition,
                                   clip_weights,
                                   cross_layer_equalization,
                                   float_forward,
                                   inference_graph,
                                   quantize_network,
                                   read_stimuli,
)

__all__ = ["SCALING_MODES", "CLIPPING_MODES", "QuantizationError", "approximate", "requantize", "round_away",
           "Histogram", "IntegerNetwork", "TensorQ", "calibrate", "calibration_partition", "clip_weights",
           "cross_layer_equalization", "float_forward", "inference_graph", "quantize_network", "read_stimuli"]
