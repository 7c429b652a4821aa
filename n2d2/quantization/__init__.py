"""Post-training quantization (PTQ) and its integer simulation; the integer C export.

`ptq.quantize_network(deepnet_cell, provider, nb_bits=8, calibration=N, ...)` returns an
`IntegerNetwork` (plain data per node and a pure-numpy int64 simulation); upstream's entry
point is `n2d2.quantizer.PTQ`, the export `n2d2.export.export_c / export_cpp(nb_bits=8,
calibration=N)`. See n2d2/quantization/ptq.py and integer.py.

The package imports only the integer arithmetic (`integer`, numpy only), which every op's integer
form uses; PTQ (`n2d2.quantization.ptq`) and the export (`n2d2.quantization.export`) sit above the
compiler and are imported from their modules.
"""
from n2d2.quantization.integer import SCALING_MODES, QuantizationError, approximate, requantize, round_away

__all__ = ["SCALING_MODES", "QuantizationError", "approximate", "requantize", "round_away"]
