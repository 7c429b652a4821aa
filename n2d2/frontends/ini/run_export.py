"""`n2d2 run MODEL.ini -export TYPE ...`: N2D2's export options (reference n2d2-ini-and-export.md 3.1)
mapped onto n2d2's export functions.

    n2d2 run model.ini -w weights -export CPP -nbbits 8 -calib 1000 -act-rescaling-mode Fixed-point

| option [default] | n2d2 |
|---|---|
| `-export C` | `n2d2.export.export_c` (float32 with `-nbbits -32`, else integer) |
| `-export CPP` / `CPP_STM32` | `export_cpp` / `export_cpp_stm32` (integer) |
| `-export ONNX` | float32 `DeepNetCell.export_onnx` (`-nbbits -32`); QDQ `export_onnx` (`-nbbits 8`, `4`) |
| `-nbbits` [8] | `nb_bits` |
| `-calib` [0] | `calibration` (-1 all, 0 none: an integer export then fails as upstream's) |
| `-db-export` [-1] | `export_nb_stimuli_max` |
| `-act-rescaling-mode` / `-act-scaling-mode` | `act_scaling_mode` (CLI or Python spellings; default: the export's) |
| `-act-clipping-mode` [MSE], `-wt-clipping-mode` [None] | `act_clipping_mode`, `wt_clipping_mode` |
| `-act-rescale-per-output 0/1` [0] | `act_rescale_per_output` |
| `-act-quantile-value` [0.9999] | `act_quantile_value` |
| `-no-unsigned`, `-no-cle`, `-qat-sat` | `export_no_unsigned`, `export_no_cross_layer_equalization`, `qat_sat` |
| `-export-parameters FILE` | the export parameter keys, checked (see `read_export_parameters`) |

The project goes to `export_<TYPE>_<int|float><bits>/` in the run's output folder (replaced when
it exists, as N2D2 writes over it). Export types N2D2 has and n2d2 does not are refused by name.
"""
import os

from n2d2.export import export_c, export_cpp, export_cpp_stm32, export_onnx
from n2d2.frontends.ini.parser import Reader, parse_file, warn

__all__ = ["EXPORT_TYPES", "REFUSED_EXPORT_TYPES", "SCALING_MODES", "CLIPPING_MODES", "export_network",
           "export_folder_name", "read_export_parameters", "add_export_arguments", "export_options"]

#: Export types `-export` accepts
EXPORT_TYPES = ("C", "CPP", "CPP_STM32", "ONNX")
#: N2D2's other export types, refused with the reason
REFUSED_EXPORT_TYPES = {
    "CPP_TensorRT": "the TensorRT export needs NVIDIA TensorRT, which n2d2 does not generate code for",
    "CPP_cuDNN": "the cuDNN export is not implemented (n2d2's CUDA code runs through CuPy, not as a standalone "
                 "project)",
    "CPP_OpenCL": "the OpenCL export is not implemented",
    "C_HLS": "the Vivado HLS export is not implemented",
    "SC_Spike": "spiking exports are not implemented (n2d2 has no spiking models)",
    "CPP_Quantization": "upstream's C++ export of networks in QAT form is not implemented: -export CPP -qat-sat "
                        "exports a SAT-trained network as integers, -export CPP -calib N by post-training "
                        "quantization",
    "DNeuro": "the DNeuro (FPGA RTL) export is not implemented",
    "DNeuro_V2": "the DNeuro (FPGA RTL) export is not implemented",
}
#: `-act-rescaling-mode`: N2D2's CLI spellings (reference 2.11) -> n2d2's `act_scaling_mode`
SCALING_MODES = {"Floating-point": "FLOAT_MULT", "Fixed-point16": "FIXED_MULT16", "Fixed-point32": "FIXED_MULT32",
                 "Fixed-point": "FIXED_MULT32", "Single-shift": "SINGLE_SHIFT", "Double-shift": "DOUBLE_SHIFT"}
SCALING_MODES.update({v: v for v in list(SCALING_MODES.values())})
#: `-act-clipping-mode` / `-wt-clipping-mode`: CLI spellings -> n2d2's names (Quantile: refused)
CLIPPING_MODES = {"None": "NONE", "MSE": "MSE", "KL-Divergence": "KL_DIVERGENCE", "NONE": "NONE",
                  "KL_DIVERGENCE": "KL_DIVERGENCE"}
_QUANTILE = ("Quantile", "QUANTILE")

# `-export-parameters` keys (reference 3.3): name -> (type, the value n2d2's export behaves as, or None
# when any value is accepted and changes nothing)
_EXPORT_PARAMETERS = {
    "IncludeInputInBuffer": (bool, None),
    "OptimizeBufferMemory": (bool, None),
    "OptimizeNoBranchConcat": (bool, None),
    "MemoryAlignment": (int, None),
    "MemoryManagerStrategy": (str, None),
    "DilatedWeights": (bool, False),
    "ImplicitCasting": (bool, None),
    "FakeQuantization": (bool, False),
    "GenStimuliCalib": (bool, None),
}
_STRATEGIES = ("None", "OptimizeMaxLifetimeMaxSizeFirst", "OptimizeMaxLifetimeMinSizeFirst",
               "OptimizeMaxHoleMaxLifetimeFirst")


def export_folder_name(export_type: str, nb_bits: int) -> str:
    """N2D2's folder name: `export_<TYPE>_<int|float><|bits|>` (`export_CPP_int8`, `export_C_float32`)."""
    return f"export_{export_type}_{'float' if nb_bits < 0 else 'int'}{abs(nb_bits)}"


def read_export_parameters(path: str) -> dict:
    """The keys of an `-export-parameters` file (INI-like, global keys), type-checked.

    n2d2's exports always plan one static arena, so the memory keys (`IncludeInputInBuffer`,
    `OptimizeBufferMemory`, `OptimizeNoBranchConcat`, `MemoryAlignment`, `MemoryManagerStrategy`)
    and the ONNX/TensorRT ones (`ImplicitCasting`, `GenStimuliCalib`) are accepted and change
    nothing (an `IniWarning` says so); `DilatedWeights=1` and `FakeQuantization=1` ask for layouts
    n2d2 does not write and are errors, as is any other key (file, section, line)."""
    doc = parse_file(path)
    names = [""] + [n for n in doc.order if n]
    out = {}
    for name in names:
        r = Reader(doc, name)
        for key in r.keys():
            if key.startswith("$"):
                continue
            if key not in _EXPORT_PARAMETERS:
                raise r.error(f"unknown export parameter '{key}'", key, "one of " + ", ".join(_EXPORT_PARAMETERS))
            kind, supported = _EXPORT_PARAMETERS[key]
            value = r.bool(key) if kind is bool else r.int(key, minimum=1) if kind is int else \
                r.choice(key, _STRATEGIES)
            if supported is not None and value != supported:
                raise r.error(f"{key}={r.text(key)} is not supported by n2d2's export", key, f"{key}={int(supported)}")
            if supported is None:
                entry = r.entry(key)
                warn(f"export parameter '{key}' changes nothing in n2d2's export (one planned static arena, no "
                     "separate input buffer or alignment option)", entry.file, entry.line, name)
            out[key] = value
    return out


def export_options(args) -> dict:
    """The keyword arguments of `export_network` from parsed `run` arguments (None without -export)."""
    if args.export is None:
        for flag, given in (("-qat-sat", args.qat_sat), ("-calib", args.calib != 0),
                            ("-export-parameters", args.export_parameters is not None)):
            if given:
                raise ValueError(f"{flag} is an export option: pass -export C|CPP|CPP_STM32|ONNX too")
        return None
    return dict(export_type=args.export, nb_bits=args.nbbits, calibration=args.calib,
                export_nb_stimuli_max=args.db_export, act_scaling_mode=args.act_scaling_mode,
                act_clipping_mode=args.act_clipping_mode, wt_clipping_mode=args.wt_clipping_mode,
                act_rescale_per_output=bool(args.act_rescale_per_output), act_quantile_value=args.act_quantile_value,
                no_unsigned=args.no_unsigned, no_cle=args.no_cle, qat_sat=args.qat_sat,
                export_parameters=args.export_parameters)


def _check_type(export_type: str) -> str:
    if export_type in EXPORT_TYPES:
        return export_type
    if export_type in REFUSED_EXPORT_TYPES:
        raise ValueError(f"-export {export_type}: {REFUSED_EXPORT_TYPES[export_type]}")
    if export_type.startswith("DNeuro"):
        raise ValueError(f"-export {export_type}: {REFUSED_EXPORT_TYPES['DNeuro']}")
    raise ValueError(f"-export {export_type}: unknown export type (expected one of {', '.join(EXPORT_TYPES)})")


def _mode(option: str, value, table: dict, default=None):
    if value is None:
        return default
    if value in _QUANTILE and table is CLIPPING_MODES:
        raise ValueError(f"{option} {value}: quantile clipping is not implemented (None, MSE, KL-Divergence are)")
    if value not in table:
        raise ValueError(f"{option} {value}: expected one of {', '.join(table)}")
    return table[value]


def export_network(deepnet, export_type: str, folder: str = ".", nb_bits: int = 8, calibration: int = 0,
                   export_nb_stimuli_max: int = -1, act_scaling_mode: str = None, act_clipping_mode: str = "MSE",
                   wt_clipping_mode: str = "None", act_rescale_per_output: bool = False,
                   act_quantile_value: float = 0.9999, no_unsigned: bool = False, no_cle: bool = False,
                   qat_sat: bool = False, export_parameters: str = None, check_only: bool = False) -> str:
    """Export `deepnet` as `-export export_type` does into `folder/export_<TYPE>_<int|float><bits>`
    (replaced when it exists); returns that folder. `check_only`: check the options (before a
    long training) and return the folder without exporting (`deepnet` may be None). Raises
    ValueError / RuntimeError / NotImplementedError (from the export functions) with the option,
    node or op named."""
    export_type = _check_type(export_type)
    if not isinstance(nb_bits, int) or isinstance(nb_bits, bool) or nb_bits == 0:
        raise ValueError(f"-nbbits {nb_bits}: expected an integer width (8, 4, ...) or -32 (float32)")
    if calibration < -1:
        raise ValueError(f"-calib {calibration}: expected -1 (the whole set), 0 (none) or a number of stimuli")
    if export_nb_stimuli_max < -1:
        raise ValueError(f"-db-export {export_nb_stimuli_max}: expected -1 (all), 0 (none) or a number of stimuli")
    if not 0.0 < act_quantile_value <= 1.0:
        raise ValueError(f"-act-quantile-value {act_quantile_value}: expected a fraction in (0, 1]")
    parameters = read_export_parameters(export_parameters) if export_parameters else {}
    options = dict(act_clipping_mode=_mode("-act-clipping-mode", act_clipping_mode, CLIPPING_MODES, "MSE"),
                   wt_clipping_mode=_mode("-wt-clipping-mode", wt_clipping_mode, CLIPPING_MODES, "NONE"),
                   act_rescale_per_output=bool(act_rescale_per_output), act_quantile_value=float(act_quantile_value),
                   export_no_unsigned=bool(no_unsigned), export_no_cross_layer_equalization=bool(no_cle),
                   qat_sat=bool(qat_sat), calibration=int(calibration))
    scaling = _mode("-act-rescaling-mode", act_scaling_mode, SCALING_MODES)
    if scaling is not None:
        options["act_scaling_mode"] = scaling
    if export_type == "ONNX":
        if nb_bits not in (-32, 4, 8):
            raise ValueError(f"-export ONNX -nbbits {nb_bits}: expected 8 or 4 (QDQ model) or -32 (float32)")
    elif export_type != "C" and nb_bits < 0:
        raise ValueError(f"-export {export_type} -nbbits {nb_bits}: the float {export_type} export is not "
                         "implemented; -export C -nbbits -32 writes the float32 C project")
    if export_type == "C" and scaling == "FLOAT_MULT":
        raise ValueError("-export C -act-rescaling-mode Floating-point: the C export has no float requantization "
                         "(as N2D2's); use Single-shift (default), Double-shift or Fixed-point, or -export CPP")
    path = os.path.join(os.path.abspath(folder), export_folder_name(export_type, nb_bits))
    if check_only:
        return path
    common = dict(export_folder_name=path, export_nb_stimuli_max=export_nb_stimuli_max, overwrite=True)
    if export_type == "ONNX":
        if nb_bits < 0:
            deepnet.export_onnx(os.path.join(path, "model.onnx"))
        else:
            options.setdefault("act_scaling_mode", "FLOAT_MULT")
            export_onnx(deepnet, nb_bits=nb_bits, export_file_name=os.path.join(path, "model.onnx"),
                        overwrite=True, **options)
        return path
    if export_type == "C":
        if nb_bits < 0:
            options.pop("calibration")   # a float export calibrates nothing (N2D2 calibrates integer exports only)
        return export_c(deepnet, nb_bits=nb_bits, **common, **options)
    optimize = parameters.get("OptimizeBufferMemory", True)
    function = export_cpp if export_type == "CPP" else export_cpp_stm32
    return function(deepnet, nb_bits=nb_bits, optimize_buffer_memory=optimize, **common, **options)


def add_export_arguments(parser):
    """The `-export` options of `n2d2 run` (N2D2's single-dash spellings; `--x` works too)."""
    g = parser.add_argument_group("export (N2D2's -export options; the project goes into the output folder)")
    g.add_argument("-export", "--export", default=None, metavar="TYPE",
                   help="write a standalone project: " + ", ".join(EXPORT_TYPES) + " (N2D2's other types are "
                        "refused by name)")
    g.add_argument("-nbbits", "--nbbits", type=int, default=8, metavar="N",
                   help="integer width (8, 4, ... 16) or -32 for float32 (default: 8)")
    g.add_argument("-calib", "--calib", type=int, default=0, metavar="N",
                   help="calibration stimuli for the integer export (Validation, else Test; -1: all; default: 0, "
                        "none: an integer export then needs -calib)")
    g.add_argument("-db-export", "--db-export", dest="db_export", type=int, default=-1, metavar="N",
                   help="Test stimuli written with the project (-1: all, default; 0: none)")
    g.add_argument("-act-rescaling-mode", "-act-scaling-mode", "--act-rescaling-mode", "--act-scaling-mode",
                   dest="act_scaling_mode", default=None, metavar="MODE",
                   help="requantization: Floating-point, Fixed-point16, Fixed-point32 (Fixed-point), Single-shift, "
                        "Double-shift (or FLOAT_MULT...); default: the export's (C: Single-shift, CPP: "
                        "Floating-point)")
    g.add_argument("-act-clipping-mode", "--act-clipping-mode", dest="act_clipping_mode", default="MSE",
                   metavar="MODE", help="activation clipping: None, MSE (default), KL-Divergence")
    g.add_argument("-wt-clipping-mode", "--wt-clipping-mode", dest="wt_clipping_mode", default="None",
                   metavar="MODE", help="weight clipping: None (default), MSE, KL-Divergence")
    g.add_argument("-act-rescale-per-output", "--act-rescale-per-output", dest="act_rescale_per_output", type=int,
                   choices=(0, 1), default=0, help="weights scaled per output channel (default: 0)")
    g.add_argument("-act-quantile-value", "--act-quantile-value", dest="act_quantile_value", type=float,
                   default=0.9999, metavar="Q",
                   help="quantile of Quantile clipping (checked; Quantile clipping itself is not implemented)")
    g.add_argument("-no-unsigned", "--no-unsigned", dest="no_unsigned", action="store_true",
                   help="signed activations and inputs only")
    g.add_argument("-no-cle", "--no-cle", dest="no_cle", action="store_true",
                   help="no cross-layer equalization before quantization")
    g.add_argument("-qat-sat", "--qat-sat", dest="qat_sat", action="store_true",
                   help="export a SAT-trained network from its learned ranges (n2d2.quantizer.fuse_qat; the "
                        "layers without a quantizer are calibrated on -calib stimuli, 256 by default)")
    g.add_argument("-export-parameters", "--export-parameters", dest="export_parameters", default=None,
                   metavar="FILE", help="N2D2's export parameter file (checked; memory keys change nothing: one "
                                        "planned arena)")
    return parser

