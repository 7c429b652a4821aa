"""Building an n2d2 network from a parsed N2D2 INI file (`load_ini(path) -> DeepNetCell`).

What is read (reference: N2D2 INI format, section 1):

- global keys `DefaultModel` (`Frame`, `Frame_CUDA`; `Transcode[_CUDA]` mean the same here;
  `Frame_CUDA` falls back to `Frame` with a warning when CUDA is missing), `DefaultDataType`
  (`Float32` only), `InsertBatchNormAfterConv` (0 only), `$VARIABLES`;
- `[database]`: `MNIST_IDX_Database` (data from `DataPath`, else `$N2D2_DATA/mnist` or the
  bundled copy through `n2d2.datasets.mnist_path`), `CIFAR10_Database`, `CIFAR100_Database`,
  `DIR_Database`, `ILSVRC2012_Database`, `GTSRB_DIR_Database`, `IMDBWIKI_Database`, with the
  common database parameters;
- `[sp]` (size, `NbChannels`, `BatchSize`, `CompositeStimuli`) and its `[sp.Transformation*]` /
  `[sp.OnTheFlyTransformation*]` sub-sections, applied in file order;
- every section with `Input=` is a layer: `Conv`, `Deconv`, `Pool`, `Fc`, `Softmax`, `Dropout`,
  `BatchNorm`, `ElemWise`, `Padding`, `Resize`, `Reshape`, `Transpose`, `Scaling`,
  `Activation`, built in order of longest path from the input (file order within a level);
  several inputs are concatenated along channels (ElemWise combines them);
- `ConfigSection=a,b` (and `ConfigSection(<DefaultModel>)=`): configuration parameters and
  `Solvers.*` / `WeightsSolver.*` / `BiasSolver.*` / `ScaleSolver.*` keys;
- `Mapping.NbGroups|ChannelsPerGroup`, `Mapping(<input>)=` tables, and the `Mapping.Size/Stride/
  Offset/NbIterations` (and per-input `Mapping(<input>).*`) canvas keys;
- one `[<layer>.Target*]` section (a `Score` target; `TargetScore` is the only type).
- QAT quantizers (reference 4.6): `QWeight=SAT|LSQ` on Conv/Deconv/Fc and `QAct=SAT|LSQ` on any
  layer with an activation, their `QWeight.*`/`QAct.*` parameters and `QWeightSolver`/`QActSolver`
  solvers, built as `n2d2.quantizer` objects (`_quantizer`).

Checks: an unknown layer type, a key no reader uses (typo, unsupported feature) in a layer,
`[sp]`, `[database]`, transformation, target or global section, or a config key the layer type
does not have, raises `IniError` (a `ValueError`) naming the file, section and line. Keys that
N2D2 itself ignores, and that therefore do not change the network, give an `IniWarning`
instead:

- configuration parameters written in the layer section instead of a config section (N2D2
  reads them only from `ConfigSection`; e.g. `Dropout=0.2` in `cifar-10.ini`);
- dotted solver keys in a layer section without a solver type key there (`WeightsSolver=`);
- lower-priority spellings shadowed by another one (`StrideX` when `Stride` is given);
- `SubSample*` on a Deconv layer (N2D2's generator does not read it).

Keys accepted and ignored because they only affect logging, display, caching or export:

- global: `CheckWeightRange`, `ProgramMethod(*)` (spiking/RRAM hardware only);
- `[sp]`: `CachePath`;
- targets: `NoDisplayLabel`, `LabelsHueOffset`, `EstimatedLabelsValueDisplay`, `ImageLogFormat`
  (passed to `Score`, which only prints them);
- config sections: `WeightsExportFormat`, `WeightsExportFlip`, `OutputsRemap` (export layout;
  passed to the cells, which use them for parameter files only);
- layer keys `ConfigSection(<model>)` for a model other than the one in use (`Spike_*`).
"""
import os

import numpy as np

import n2d2.activation as activations
import n2d2.database as databases
import n2d2.filler as fillers
import n2d2.quantizer as quantizers
import n2d2.solver as solvers
import n2d2.transform as transforms
from n2d2.cells import (
    LRN,
    Activation,
    BatchNorm2d,
    Conv,
    Deconv,
    Dropout,
    ElemWise,
    Fc,
    Normalize,
    Padding,
    Pool,
    Pool2d,
    Reshape,
    Resize,
    Scaling,
    Softmax,
    Transpose,
)
from n2d2.cells.deepnet_cell import DeepNetCell, rebatch
from n2d2.datasets import mnist_path
from n2d2.deepnet import DeepNet
from n2d2.frontends.ini.onnx_section import OnnxSection, is_onnx_section
from n2d2.frontends.ini.parser import IniDocument, IniError, Reader, parse_file, warn
from n2d2.ir.trace import trace
from n2d2.ops import activation as act_table
from n2d2.provider import DataProvider
from n2d2.scaling import FloatingPointScaling
from n2d2.settings import global_variables
from n2d2.target import Score
from n2d2.tensor import Interface, Tensor

__all__ = ["load_ini", "NetworkBuilder", "LAYER_TYPES"]

# -- tables ------------------------------------------------------------------------------------------
_MODELS = {"Frame": "Frame", "Frame_CUDA": "Frame_CUDA", "Transcode": "Frame", "Transcode_CUDA": "Frame_CUDA"}
_DATATYPES = ("Float32", "float", "Float")

# Solver parameters: INI name -> (python name, type)
_SGD_KEYS = {
    "LearningRate": ("learning_rate", float), "Momentum": ("momentum", float), "Decay": ("decay", float),
    "MinDecay": ("min_decay", float), "Power": ("power", float), "IterationSize": ("iteration_size", int),
    "MaxIterations": ("max_iterations", int), "WarmUpDuration": ("warm_up_duration", int),
    "WarmUpLRFrac": ("warm_up_lr_frac", float), "LearningRatePolicy": ("learning_rate_policy", str),
    "LearningRateStepSize": ("learning_rate_step_size", int), "LearningRateDecay": ("learning_rate_decay", float),
    "Clamping": ("clamping", str), "PolyakMomentum": ("polyak_momentum", bool),
}
_ADAM_KEYS = {"LearningRate": ("learning_rate", float), "Beta1": ("beta1", float), "Beta2": ("beta2", float),
              "Epsilon": ("epsilon", float), "Clamping": ("clamping", str)}
_SOLVER_TYPES = ("SGD", "Adam")

# Fillers: INI type -> (n2d2.filler class name, {INI key: (python name, type, default)})
_FILLERS = {
    "NormalFiller": ("Normal", {"Mean": ("mean", float, 0.0), "StdDev": ("std_dev", float, 1.0)}),
    "ConstantFiller": ("Constant", {"Value": ("value", float, 0.0)}),
    "UniformFiller": ("Uniform", {"Min": ("min", float, 0.0), "Max": ("max", float, 1.0)}),
    "HeFiller": ("He", {"VarianceNorm": ("variance_norm", str, "FanIn"), "MeanNorm": ("mean_norm", float, 0.0),
                        "Scaling": ("scaling", float, 1.0)}),
    "XavierFiller": ("Xavier", {"VarianceNorm": ("variance_norm", str, "FanIn"),
                                "Distribution": ("distribution", str, "Uniform"),
                                "Scaling": ("scaling", float, 1.0)}),
}

# Activations: INI name -> (n2d2.activation class name, {INI key: (python name, type)}), from the
# activation table (n2d2.ops.activation)
_ACTIVATIONS = {d.ini_name: (d.name, {k: (py, float) for k, py in d.ini_params.items()})
                for d in act_table.ACTIVATIONS.values() if d.ini_name}

# QAT quantizers (reference 4.6): (role, INI type) -> (n2d2.quantizer class, {sub-key: (python name, type)}).
# `Mode` is the docs' spelling of the code's `QuantMode`, `StepOptInitStepSize` the docs' spelling of
# `SetOptInitStepSize`: both are read (one of the two per section).
_QRANGE = {"Range": ("range", int)}
_QMODE = {"QuantMode": ("quant_mode", str), "Mode": ("quant_mode", str)}
_QLSQ = {"StepSize": ("step_size", float), "SetOptInitStepSize": ("set_opt_init_step_size", bool),
         "StepOptInitStepSize": ("set_opt_init_step_size", bool)}
_QUANTIZERS = {
    ("QWeight", "SAT"): ("SATCell", {**_QRANGE, **_QMODE, "ApplyQuantization": ("apply_quantization", bool),
                                     "ApplyScaling": ("apply_scaling", bool)}),
    ("QWeight", "LSQ"): ("LSQCell", {**_QRANGE, **_QMODE, **_QLSQ}),
    ("QAct", "SAT"): ("SATAct", {**_QRANGE, "Alpha": ("alpha", float)}),
    ("QAct", "LSQ"): ("LSQAct", {**_QRANGE, **_QLSQ}),
}
_QUANTIZER_WHAT = {"QWeight": "weight", "QAct": "activation"}

# Database parameters common to every database: INI name -> (python name, type)
_DATABASE_PARAMETERS = {
    "DefaultLabel": ("default_label", int), "ROIsMargin": ("rois_margin", int),
    "RandomPartitioning": ("random_partitioning", bool), "DataFileLabel": ("data_file_label", bool),
    "CompositeLabel": ("composite_label", str), "TargetDataPath": ("target_data_path", str),
    "MultiChannelMatch": ("multi_channel_match", str), "MultiChannelReplace": ("multi_channel_replace", str),
}

# Upstream's database generators: INI type -> (n2d2.database class, default DataPath under $N2D2_DATA,
#   whether it reads LabelPath (default: the class's own, inside DataPath),
#   {INI key: (python name, default; None = required)}); `extract_rois` goes to load(), the rest to the class.
_UPSTREAM_DATABASES = {
    "ILSVRC2012_Database": ("ILSVRC2012", "ILSVRC2012", True,
                            {"Learn": ("learn", None), "UseValidationForTest": ("use_validation_for_test", True),
                             "BackgroundClass": ("background_class", False)}),
    "GTSRB_DIR_Database": ("GTSRB", "GTSRB", False,
                           {"Validation": ("validation", 0.0), "ExtractROIs": ("extract_rois", False)}),
    "IMDBWIKI_Database": ("IMDBWIKI", "IMDB-WIKI", True,
                          {"Learn": ("learn", 1.0), "Validation": ("validation", 0.0), "WikiSet": ("wiki_set", True),
                           "IMDBSet": ("imdb_set", False), "CropFrame": ("crop_frame", False),
                           "UseNameAsLabel": ("use_name_as_label", False)}),
}

# Transformations: INI type -> (n2d2.transform class, [(required INI key, python name, type)],
#                                 {optional INI key: (python name, type)})
_TRANSFORMATIONS = {
    "RescaleTransformation": ("Rescale", [("Width", "width", int), ("Height", "height", int)],
                              {"KeepAspectRatio": ("keep_aspect_ratio", bool),
                               "ResizeToFit": ("resize_to_fit", bool)}),
    "PadCropTransformation": ("PadCrop", [("Width", "width", int), ("Height", "height", int)],
                              {"AdditiveWH": ("additive_wh", bool), "BorderType": ("border_type", str),
                               "BorderValue": ("border_value", list)}),
    "RangeAffineTransformation": ("RangeAffine", [("FirstOperator", "first_operator", str),
                                                  ("FirstValue", "first_value", list)],
                                  {"SecondOperator": ("second_operator", str), "SecondValue": ("second_value", list),
                                   "Truncate": ("truncate", bool)}),
    "ColorSpaceTransformation": ("ColorSpace", [("ColorSpace", "color_space", str)], {}),
    "SliceExtractionTransformation": ("SliceExtraction", [("Width", "width", int), ("Height", "height", int)],
                                      {"OffsetX": ("offset_x", int), "OffsetY": ("offset_y", int),
                                       "RandomOffsetX": ("random_offset_x", bool),
                                       "RandomOffsetY": ("random_offset_y", bool),
                                       "RandomRotation": ("random_rotation", bool),
                                       "RandomRotationRange": ("random_rotation_range", list),
                                       "RandomScaling": ("random_scaling", bool),
                                       "RandomScalingRange": ("random_scaling_range", list),
                                       "AllowPadding": ("allow_padding", bool), "BorderType": ("border_type", str),
                                       "BorderValue": ("border_value", list)}),
    "FlipTransformation": ("Flip", [], {"HorizontalFlip": ("horizontal_flip", bool),
                                       "VerticalFlip": ("vertical_flip", bool),
                                       "RandomHorizontalFlip": ("random_horizontal_flip", bool),
                                       "RandomVerticalFlip": ("random_vertical_flip", bool)}),
    "ChannelExtractionTransformation": ("ChannelExtraction", [("CSChannel", "channel", str)], {}),
    "DistortionTransformation": ("Distortion", [], {"ElasticGaussianSize": ("elastic_gaussian_size", int),
                                                    "ElasticSigma": ("elastic_sigma", float),
                                                    "ElasticScaling": ("elastic_scaling", float),
                                                    "Scaling": ("scaling", float), "Rotation": ("rotation", float),
                                                    "IgnoreMissingData": ("ignore_missing_data", bool)}),
    "RandomResizeCropTransformation": ("RandomResizeCrop", [("Width", "width", int), ("Height", "height", int)],
                                       {"ScaleMin": ("scale_min", float), "ScaleMax": ("scale_max", float),
                                        "RatioMin": ("ratio_min", float), "RatioMax": ("ratio_max", float)}),
    "ReshapeTransformation": ("Reshape", [("NbRows", "nb_rows", int)],
                              {"NbCols": ("nb_cols", int), "NbChannels": ("nb_channels", int)}),
}
_TRANSFORMATION_KINDS = ("ChannelsOnTheFlyTransformation", "ChannelsTransformation", "ChannelOnTheFlyTransformation",
                         "ChannelTransformation", "OnTheFlyTransformation", "Transformation")

# Target keys: INI name -> (python name, type); the first five are constructor arguments.
_TARGET_KEYS = {
    "TargetValue": ("target_value", float), "DefaultValue": ("default_value", float), "TopN": ("top_n", int),
    "LabelsMapping": ("labels_mapping", str), "BinaryThreshold": ("binary_threshold", float),
    "DataAsTarget": ("data_as_target", bool), "ValueThreshold": ("value_threshold", float),
    "ConfusionRangeMin": ("confusion_range_min", float), "ConfusionRangeMax": ("confusion_range_max", float),
    "ConfusionQuantSteps": ("confusion_quant_steps", int), "MaskedLabel": ("masked_label", int),
    "MaskedLabelValue": ("masked_label_value", bool), "WeakTarget": ("weak_target", int),
    # display only
    "NoDisplayLabel": ("no_display_label", int), "LabelsHueOffset": ("labels_hue_offset", int),
    "EstimatedLabelsValueDisplay": ("estimated_labels_value_display", bool),
    "ImageLogFormat": ("image_log_format", str),
}

# Configuration parameters (read from config sections) per layer type: INI name -> (python name, type)
_WEIGHTED_CONFIG = {"NoBias": ("no_bias", bool), "BackPropagate": ("back_propagate", bool),
                    "OutputsRemap": ("outputs_remap", str)}
_CONV_CONFIG = {**_WEIGHTED_CONFIG, "WeightsExportFormat": ("weights_export_format", str),
                "WeightsExportFlip": ("weights_export_flip", bool)}
_FC_CONFIG = {**_WEIGHTED_CONFIG, "WeightsExportFormat": ("weights_export_format", str),
              "DropConnect": ("drop_connect", float), "Normalize": ("normalize", bool)}
_LAYER_CONFIG = {
    "Conv": _CONV_CONFIG, "Deconv": _CONV_CONFIG, "Fc": _FC_CONFIG,
    "BatchNorm": {"Epsilon": ("epsilon", float), "MovingAverageMomentum": ("moving_average_momentum", float),
                  "BackPropagate": ("back_propagate", bool)},
    "Dropout": {"Dropout": ("dropout", float)},
    "Resize": {"AlignCorners": ("align_corners", bool)},
}
# Solver roles (prefix of the dotted keys) per layer type
_SOLVER_ROLES = {"Conv": ("Weights", "Bias"), "Deconv": ("Weights", "Bias"), "Fc": ("Weights", "Bias"),
                 "BatchNorm": ("Scale", "Bias")}

# Upstream layer types with no n2d2 op yet: refused by name, saying what they are
_UNSUPPORTED_TYPES = {
    "FMP": "fractional max pooling has no n2d2 op yet",
    "Unpool": "max unpooling has no n2d2 op yet",
    "Threshold": "the Threshold cell has no n2d2 op yet",
}

_COMMON_LAYER_KEYS = ("Input", "Type", "Model", "DataType", "ConfigSection", "NbOutputs")
_INPUT_CROP_KEYS = ("InputOffsetX", "InputOffsetY", "InputWidth", "InputHeight")


def load_ini(path, backend: str = None, cls=None) -> "DeepNetCell":  # noqa: F821 (string annotation)
    """Parse and build the INI network at `path`: a `DeepNetCell` (or `cls`) with its provider
    and target, run by `backend` (`DeepNetCell`'s choice when None)."""
    return NetworkBuilder(parse_file(path), backend=backend, cls=cls).build()


class _Layer:
    """What a layer builder needs: its section reader, config reader, inputs and model."""

    def __init__(self, builder, name, reader, config, inputs, parents, model):
        self.builder = builder
        self.name = name
        self.r = reader
        self.config = config
        self.inputs = inputs        # eager zero Tensors, one per Input
        self.parents = parents      # INI names of the inputs ("env" for the provider)
        self.model = model
        self.type = None

    @property
    def channels(self) -> int:
        return sum(t.dimZ() for t in self.inputs)

    def error(self, message, key=None, expected=None):
        return self.r.error(message, key, expected)


class NetworkBuilder:
    """Turns an `IniDocument` into a `DeepNetCell` (see the module docstring)."""

    def __init__(self, doc: IniDocument, backend: str = None, cls=None):
        self.doc = doc
        self.backend = backend
        self.cls = cls
        self.file = doc.path
        self.model = "Frame"
        self.requested_model = "Frame"
        self._warned_cuda = False
        self.referenced_configs = set()
        self.onnx = {}            # Type=ONNX section name -> OnnxSection, once imported
        self.external = set()     # Input names that are ONNX values (resolved once the graph is imported)
        self._onnx_owners = {}    # ONNX value -> its OnnxSection, for a target on that value

    # -- entry point -------------------------------------------------------------------------------
    def build(self):
        self._check_extra_environments()
        self._global_keys()
        saved = global_variables.default_model
        global_variables.default_model = self.model
        try:
            database = self._database()
            provider = self._provider(database)
            self._transformations(provider)
            order, parents = self._graph()
            tensors, cells = self._build_layers(provider, order, parents)
            target_node, target = self._target(provider, order, parents)
            if target_node in self._onnx_owners:
                section = self._onnx_owners[target_node]
                tensors[target_node] = self._wrap(section.name, lambda: section.tensor(target_node),
                                                  f"cannot take the ONNX value '{target_node}'")
                cells[target_node] = []
            output = target_node or self._default_output(order, parents)
            deepnet_cell = self._deepnet_cell(provider, target, tensors, cells, parents, output)
        finally:
            global_variables.default_model = saved
        self._check_unattached_layers(order)
        deepnet_cell._ini_document = self.doc
        return deepnet_cell

    # -- helpers -----------------------------------------------------------------------------------
    def _reader(self, name, user=None) -> Reader:
        return Reader(self.doc, name, user)

    def _section_error(self, name, message, expected=None):
        sec = self.doc.section(name)
        return IniError(message, sec.file or self.file, name, sec.line, expected)

    def _wrap(self, name, action, what):
        """Run `action()`; errors of the n2d2 objects it builds become IniError for section `name`."""
        try:
            return action()
        except IniError:
            raise
        except MemoryError:
            raise self._section_error(name, f"{what}: does not fit in memory", "smaller sizes") from None
        except (TypeError, ValueError, RuntimeError, ZeroDivisionError, OSError) as e:
            raise self._section_error(name, f"{what}: {e}") from e

    def _resolve_model(self, value, reader, key):
        if value not in _MODELS:
            raise reader.error(f"{key}={value!r} is not supported", key,
                               "Frame or Frame_CUDA (spiking and other engine models are not available)")
        model = _MODELS[value]
        if model == "Frame_CUDA":
            if not global_variables.cuda_available:
                if not self._warned_cuda:
                    entry = reader.entry(key)
                    warn(f"{key}={value}: CUDA is not available, using Frame (CPU) instead",
                         entry.file if entry else self.file, entry.line if entry else None, reader.name)
                    self._warned_cuda = True
                model = "Frame"
        return model

    def _check_extra_environments(self):
        for name in ("env", "cenv"):
            if name in self.doc:
                raise self._section_error(name, f"[{name}] (spiking environment) is not supported",
                                          "a formal [sp] StimuliProvider section")

    # -- global section ----------------------------------------------------------------------------
    def _global_keys(self):
        r = self._reader("")
        if r.has("DefaultModel"):
            self.requested_model = r.text("DefaultModel")
            self.model = self._resolve_model(self.requested_model, r, "DefaultModel")
        if r.has("DefaultDataType"):
            r.choice("DefaultDataType", _DATATYPES)
        if r.has("InsertBatchNormAfterConv") and r.bool("InsertBatchNormAfterConv"):
            raise r.error("InsertBatchNormAfterConv=1 is not supported", "InsertBatchNormAfterConv",
                          "0 (write the BatchNorm layers in the file)")
        r.mark("InsertBatchNormAfterConv", "CheckWeightRange")
        for key, entry, holder in r.unused():
            if key.startswith("$") or key.startswith("ProgramMethod("):
                continue
            raise IniError(f"unknown global key '{key}'", entry.file, holder, entry.line,
                           "DefaultModel, DefaultDataType, InsertBatchNormAfterConv, CheckWeightRange or $VARIABLE "
                           "(or a missing [section] header above this line)")

    # -- database ----------------------------------------------------------------------------------
    def _database(self):
        if "database" not in self.doc:
            warn("no [database] section: the network is built on an empty database", self.file)
            self.doc.set_generated("sp" if "sp" in self.doc else "", "_EpochSize", 0)
            return databases.Database()
        r = self._reader("database")
        kind = r.choice("Type", ("MNIST_IDX_Database", "CIFAR10_Database", "CIFAR100_Database", "DIR_Database")
                        + tuple(_UPSTREAM_DATABASES))
        config = {}
        for key, (name, kind_) in _DATABASE_PARAMETERS.items():
            if r.has(key):
                config[name] = self._typed(r, key, kind_)
        if r.has("LoadDataInMemory"):
            config["load_data_in_memory"] = r.bool("LoadDataInMemory")
        if kind == "MNIST_IDX_Database":
            validation = r.float("Validation", 0.0, 0.0, 1.0)
            path = self._data_path(r, None)
            if path is None:
                path = self._wrap("database", lambda: mnist_path(), "MNIST not found")
            config.pop("load_data_in_memory", None)
            db = self._wrap("database", lambda: databases.MNIST(path, validation=validation, **config),
                            "cannot load the MNIST database")
        elif kind in ("CIFAR10_Database", "CIFAR100_Database"):
            validation = r.float("Validation", 0.0, 0.0, 1.0)
            use_test = r.bool("UseTestForValidation", False)
            config.pop("load_data_in_memory", None)
            if kind == "CIFAR10_Database":
                default = "cifar-10-batches-bin"
                make = lambda: databases.CIFAR10(validation=validation, use_test_for_validation=use_test,  # noqa
                                                 **config)
            else:
                coarse = r.bool("UseCoarse", False)
                default = "cifar-100-binary"
                make = lambda: databases.CIFAR100(validation=validation, use_coarse=coarse,  # noqa
                                                  use_test_for_validation=use_test, **config)
            path = self._data_path(r, default)
            db = self._wrap("database", make, "invalid CIFAR database parameters")
            self._wrap("database", lambda: db.load(path), f"cannot load the CIFAR database from '{path}'")
        elif kind in _UPSTREAM_DATABASES:
            db = self._upstream_database(r, kind, config)
        else:
            db = self._dir_database(r, config)
        self._check_unused(r, "database keys")
        self.doc.set_generated("sp" if "sp" in self.doc else "", "_EpochSize", db.get_nb_stimuli("Learn"))
        return db

    def _dir_database(self, r, config):
        path = self._data_path(r, None)
        if path is None:
            raise r.error("missing required key 'DataPath'", expected="DataPath=<folder>")
        kwargs = dict(learn=r.float("Learn", minimum=0.0), validation=r.float("Validation", 0.0, 0.0),
                      depth=r.int("Depth", 1), label_path=r.text("LabelName", ""), label_depth=r.int("LabelDepth", 1),
                      per_label_partitioning=r.bool("PerLabelPartitioning", True),
                      equiv_label_partitioning=r.bool("EquivLabelPartitioning", True))
        if r.has("Test"):
            kwargs["test"] = r.float("Test", minimum=0.0)
        if r.has("IgnoreMasks"):
            kwargs["ignore_mask"] = r.text("IgnoreMasks").split()
        if r.has("ValidExtensions"):
            kwargs["valid_extensions"] = r.text("ValidExtensions").split()
        if r.has("LoadInMemory"):
            kwargs["load_data_in_memory"] = r.bool("LoadInMemory")
        elif "load_data_in_memory" in config:
            kwargs["load_data_in_memory"] = config.pop("load_data_in_memory")
        for key in ("ROIFile", "ROIDir", "LoadMore"):
            if r.has(key) and r.text(key):
                raise r.error(f"{key} is not supported", key, f"no {key} key")
        return self._wrap("database", lambda: databases.DIR(path, **kwargs, **config),
                          f"cannot load the DIR database from '{path}'")

    def _upstream_database(self, r, kind, config):
        """GTSRB / ILSVRC2012 / IMDB-WIKI: keys and defaults of upstream's database generators."""
        cls, default_dir, reads_labels, keys = _UPSTREAM_DATABASES[kind]
        kwargs = {}
        for key, (name, default) in keys.items():
            if isinstance(default, bool):
                kwargs[name] = r.bool(key, default)
            else:  # a fraction; None: required
                kwargs[name] = r.float(key, minimum=0.0, maximum=1.0) if default is None \
                    else r.float(key, default, 0.0, 1.0)
        extract = kwargs.pop("extract_rois", False)
        path = self._data_path(r, default_dir)
        labels = (self._data_path(r, None, "LabelPath") if reads_labels else None) or ""
        db = self._wrap("database", lambda: getattr(databases, cls)(**kwargs, **config),
                        f"invalid {kind} parameters")
        self._wrap("database", lambda: db.load(path, labels, extract),
                   f"cannot load the {kind} from '{path}'")
        return db

    def find_file(self, value: str, exists=os.path.isfile):
        """`value` if it exists as given (relative: to the current directory), else relative to
        the INI file's folder; None when neither exists (N2D2's rule for file keys)."""
        candidates = [value]
        if not os.path.isabs(value) and self.file and not self.file.startswith("<"):
            candidates.append(os.path.join(os.path.dirname(os.path.abspath(self.file)), value))
        return next((c for c in candidates if exists(c)), None)

    def _data_path(self, r, default_name, key="DataPath"):
        """DataPath (or `key`) as given (relative: to the current directory, else to the INI
        file's), or `$N2D2_DATA/<default_name>`; None when neither applies."""
        if r.has(key):
            value = r.text(key)
            found = self.find_file(value, os.path.exists)
            if found is not None:
                return found
            raise r.error(f"{key} '{value}' does not exist", key,
                          "an existing folder" if key == "DataPath" else "an existing file or folder")
        if default_name is None:
            return None
        root = os.environ.get("N2D2_DATA") or os.path.join(os.path.expanduser("~"), "DATABASE")
        return os.path.join(root, default_name)

    # -- stimuli provider ----------------------------------------------------------------------------
    def _provider(self, database):
        if "sp" not in self.doc:
            raise IniError("missing [sp] section (the stimuli provider: SizeX, SizeY, BatchSize...)", self.file,
                           expected="an [sp] section")
        r = self._reader("sp")
        if r.has("Input"):
            raise r.error("[sp] is the network input; it cannot have an Input key", "Input", "no Input key")
        if r.has("Size"):
            size = r.ints("Size", count=(1, 2, 3), minimum=1)
            size = (size + [1, 1])[:3]
            if size[2] != 1:
                raise r.error(f"Size={' '.join(map(str, size))}: 3-D stimuli are not supported", "Size", "Size=X Y")
            size_x, size_y = size[:2]
        else:
            size_x, size_y = r.int("SizeX", minimum=1), r.int("SizeY", minimum=1)
        if r.int("SizeD", 1) != 1:
            raise r.error("SizeD > 1 (3-D stimuli) is not supported", "SizeD", "SizeD=1")
        channels = r.int("NbChannels", 1, minimum=1)
        batch = r.int("BatchSize", 1, minimum=1)
        composite = r.bool("CompositeStimuli", False)
        r.mark("CachePath")
        for key in r.keys():
            if key.startswith("TargetSize"):
                raise r.error(f"{key} is not supported", key, "no TargetSize keys")
        self._sp_config(r)
        self._check_unused(r, "[sp] keys")
        return self._wrap("sp", lambda: DataProvider(database, [size_x, size_y, channels], batch_size=batch,
                                                     composite_stimuli=composite, name="sp"),
                          "invalid stimuli provider")

    def _sp_config(self, r):
        names = self._config_names(r, "ConfigSection")
        if not names:
            return
        c = Reader(self.doc, names, "sp")
        if c.has("DataSignedMapping") and c.bool("DataSignedMapping"):
            raise c.error("DataSignedMapping=1 is not supported", "DataSignedMapping", "0")
        for key in ("QuantizationLevels",):
            if c.has(key) and c.int(key):
                raise c.error(f"{key} is not supported", key, f"{key}=0")
        c.mark("QuantizationMin", "QuantizationMax")
        for key, entry, holder in c.unused():
            raise IniError(f"unknown StimuliProvider parameter '{key}' (read for [sp])", entry.file, holder,
                           entry.line, "DataSignedMapping, QuantizationLevels")

    def _transformations(self, provider):
        for name in self.doc.order:
            if not name.startswith("sp."):
                continue
            rest = name[3:]
            if rest.startswith("StimuliData"):
                self._stimuli_data(name, provider)
                continue
            kind = next((k for k in _TRANSFORMATION_KINDS if rest.startswith(k)), None)
            if kind is None:
                continue
            r = self._reader(name)
            if kind.startswith("Channel"):
                raise r.error(f"{kind} sub-sections are not supported", None,
                              "Transformation or OnTheFlyTransformation")
            type_name = r.choice("Type", tuple(_TRANSFORMATIONS))
            cls_name, required, optional = _TRANSFORMATIONS[type_name]
            args = [self._typed(r, key, kind_) for key, _, kind_ in required]
            kwargs = {py: self._typed(r, key, kind_) for key, (py, kind_) in optional.items() if r.has(key)}
            kwargs["apply_to"] = r.choice("ApplyTo", ("All", "LearnOnly", "ValidationOnly", "TestOnly", "NoLearn",
                                                      "NoValidation", "NoTest"), "All")
            self._check_unused(r, f"{type_name} keys")
            cls = getattr(transforms, cls_name)
            t = self._wrap(name, lambda: cls(*args, **kwargs), f"invalid {type_name}")
            if kind == "OnTheFlyTransformation":
                provider.add_on_the_fly_transformation(t)
            else:
                provider.add_transformation(t)

    _APPLY_TO = {"All": ("Learn", "Validation", "Test"), "LearnOnly": ("Learn",), "ValidationOnly": ("Validation",),
                 "TestOnly": ("Test",), "NoLearn": ("Validation", "Test"), "NoValidation": ("Learn", "Test"),
                 "NoTest": ("Learn", "Validation")}

    def _stimuli_data(self, name, provider):
        """`[sp.StimuliData-<x>]`: statistics of the stimuli (after the transformations above it in
        the file) written as `_GlobalValue.mean` / `_GlobalValue.stdDev` for later sections."""
        r = self._reader(name)
        apply_to = r.choice("ApplyTo", tuple(self._APPLY_TO), "All")
        r.mark("LogSizeRange", "LogValueRange")   # N2D2 only logs these ranges
        self._check_unused(r, "StimuliData keys (ApplyTo, LogSizeRange, LogValueRange)")
        mean, std, count = self._wrap(name, lambda: provider.stimuli_statistics(self._APPLY_TO[apply_to]),
                                      "cannot compute the stimuli statistics")
        if count == 0:
            sec = self.doc.section(name)
            warn(f"no stimulus in {apply_to}: _GlobalValue.mean = 0 and _GlobalValue.stdDev = 1 (identity)",
                 sec.file, sec.line, name)
            mean, std = 0.0, 1.0
        self.doc.set_generated(name, "_GlobalValue.mean", repr(mean))
        self.doc.set_generated(name, "_GlobalValue.stdDev", repr(std))

    # -- typed values ----------------------------------------------------------------------------------
    @staticmethod
    def _typed(r, key, kind):
        if kind is int:
            return r.int(key)
        if kind is float:
            return r.float(key)
        if kind is bool:
            return r.bool(key)
        if kind is list:
            return r.floats(key)
        return r.text(key)

    # -- graph -------------------------------------------------------------------------------------------
    def _graph(self):
        """(nodes in build order, {node: [input names]})."""
        nodes = [n for n in self.doc.order if "Input" in self.doc.section(n).entries and n not in ("sp", "database")]
        onnx_nodes = {n for n in nodes if is_onnx_section(self.doc, n)}
        parents = {}
        for n in nodes:
            r = self._reader(n)
            names = [p.strip() for p in r.text("Input").split(",")]
            if not all(names):
                raise r.error(f"Input={r.text('Input')!r} has an empty name", "Input", "Input=name[,name...]")
            names = ["env" if p in ("sp", "cenv", "env") else p for p in names]
            for p in names:
                if p != "env" and p not in nodes and onnx_nodes:
                    self.external.add(p)   # an ONNX value (it may have a config section): checked on import
                elif p != "env" and p not in nodes:
                    what = "a section without Input= (not a layer)" if p in self.doc else "not a section of this file"
                    raise r.error(f"Input '{p}' is {what}", "Input",
                                  "sp or the name of a layer section (one with Input=)")
            if n in names:
                raise r.error(f"layer [{n}] takes itself as input", "Input", "an acyclic graph")
            parents[n] = names
        levels = {}
        for n in nodes:
            self._level(n, parents, levels, [])
        index = {n: i for i, n in enumerate(nodes)}
        order = sorted(nodes, key=lambda n: (levels[n], index[n]))
        return order, parents

    def _level(self, node, parents, levels, stack):
        """Longest path from the input to `node` (iterative: a file may chain thousands of layers)."""
        if node in levels:
            return levels[node]
        on_stack = {}
        stack.append((node, iter(parents[node])))
        on_stack[node] = 0
        while stack:
            current, pending = stack[-1]
            parent = next(pending, None)
            if parent is None:
                stack.pop()
                del on_stack[current]
                levels[current] = 1 + max((0 if p == "env" or p in self.external else levels[p])
                                          for p in parents[current])
                continue
            if parent == "env" or parent in levels or parent in self.external:
                continue
            if parent in on_stack:
                names = [n for n, _ in stack]
                cycle = " -> ".join(names[names.index(parent):] + [parent])
                raise self._reader(parent).error(f"the layers form a cycle: {cycle}", "Input", "an acyclic graph")
            on_stack[parent] = len(stack)
            stack.append((parent, iter(parents[parent])))
        return levels[node]

    # -- layers --------------------------------------------------------------------------------------------
    def _build_layers(self, provider, order, parents):
        try:
            x = self._wrap("sp", lambda: self._input_tensor(provider), "cannot allocate the input batch")
        except MemoryError:
            raise self._section_error("sp", f"the input batch {provider.shape()} does not fit in memory",
                                      "smaller SizeX, SizeY, NbChannels or BatchSize") from None
        tensors, cells = {"env": x}, {}
        for node in order:
            try:
                if is_onnx_section(self.doc, node):
                    tensors[node], cells[node] = self._build_onnx(node, parents, tensors)
                else:
                    tensors[node], cells[node] = self._build_layer(node, parents, tensors)
            except MemoryError:
                raise self._section_error(node, "this layer does not fit in memory",
                                          "smaller sizes (NbOutputs, kernel, input)") from None
        return tensors, cells

    @staticmethod
    def _input_tensor(provider):
        """A zero batch of ONE stimulus: the eager build only needs shapes, and every call record
        keeps its output alive until tracing, so a full batch (256 ImageNet images) multiplied the
        memory of loading by the batch size. `_deepnet_cell` rebatches the traced graph."""
        return Tensor([1] + list(provider.shape())[1:])

    def _inputs(self, node, names, tensors, r):
        """The tensors of a layer's Input names. With an ONNX section and ONNX values, the
        section is listed for ordering only (upstream's `Input=onnx,Pool_3:0`)."""
        if any(n in self.external for n in names):
            names = [n for n in names if n not in self.onnx]
        out = []
        for n in names:
            if n in tensors:
                out.append(tensors[n])
                continue
            section = next((s for s in self.onnx.values() if n in s.importer.values), None)
            if section is None:
                raise r.error(f"Input '{n}' is no layer section and no value of an ONNX graph imported before "
                              f"[{node}]", "Input", "a layer section, or an ONNX node output with the ONNX section "
                                                    "listed first (Input=onnx,<output>)")
            tensors[n] = self._wrap(node, lambda: section.tensor(n), f"cannot take the ONNX value '{n}'")
            out.append(tensors[n])
        return out

    def _build_onnx(self, node, parents, tensors):
        r = self._reader(node)
        inputs = self._inputs(node, parents[node], tensors, r)
        if len(inputs) != 1:
            raise r.error(f"an ONNX section takes one input, got {len(parents[node])}", "Input",
                          "Input=<sp or one layer> (the graph's data input)")
        section = OnnxSection(self, node, r, inputs[0])
        self._check_unused(r, "ONNX section keys")
        self.onnx[node] = section
        y = section.output
        for key, value in (("_NbChannels", inputs[0].dimZ()), ("_ChannelsWidth", inputs[0].dimX()),
                           ("_ChannelsHeight", inputs[0].dimY()), ("_NbOutputs", y.dimZ()),
                           ("_OutputsWidth", y.dimX()), ("_OutputsHeight", y.dimY())):
            self.doc.set_generated(node, key, value)
        return y, section

    def _build_layer(self, node, parents, tensors):
        r = self._reader(node)
        r.mark("Input")
        if r.has("Type") and r.text("Type") in _UNSUPPORTED_TYPES:
            raise r.error(f"Type={r.text('Type')} is not supported: {_UNSUPPORTED_TYPES[r.text('Type')]}", "Type",
                          "one of " + ", ".join(LAYER_TYPES) + ", ONNX")
        kind = r.choice("Type", tuple(LAYER_TYPES) + ("ONNX",))
        if kind == "ONNX":   # readable now, not when the graph was levelled
            raise r.error("Type=ONNX must not depend on keys generated while building", "Type", "Type=ONNX")
        model = self.model
        if r.has("Model"):
            model = self._resolve_model(r.text("Model"), r, "Model")
        if r.has("DataType"):
            r.choice("DataType", _DATATYPES)
        inputs = self._inputs(node, parents[node], tensors, r)
        layer = _Layer(self, node, r, self._config_reader(r, node, kind), inputs, parents[node], model)
        layer.type = kind
        for key in _INPUT_CROP_KEYS:
            if r.has(key) and r.int(key) != 0:
                raise r.error(f"{key} (input cropping) is not supported", key, f"{key}=0")
        cell = LAYER_TYPES[kind](layer)
        cell.test()
        what = f"{kind} layer cannot take its input {[list(t.shape()) for t in inputs]}"
        arg = inputs[0] if len(inputs) == 1 else self._wrap(node, lambda: Interface(inputs), what)
        y = self._wrap(node, lambda: cell(arg), what)
        cell.learn()
        nb_outputs = r.int("NbOutputs", minimum=1)
        if y.dimZ() != nb_outputs:
            raise r.error(f"NbOutputs={nb_outputs} but this {kind} layer gives {y.dimZ()} channels", "NbOutputs",
                          f"NbOutputs={y.dimZ()}")
        self._check_layer_keys(layer)
        for key, value in (("_NbChannels", layer.channels), ("_ChannelsWidth", inputs[0].dimX()),
                           ("_ChannelsHeight", inputs[0].dimY()), ("_NbOutputs", y.dimZ()),
                           ("_OutputsWidth", y.dimX()), ("_OutputsHeight", y.dimY())):
            self.doc.set_generated(node, key, value)
        return y, cell

    def _config_names(self, r, key="ConfigSection"):
        names = []
        specific = f"ConfigSection({self.requested_model})"
        used = specific if r.has(specific) else key
        for k in r.keys():
            if k.startswith("ConfigSection("):
                r.mark(k)
        if not r.has(used):
            return names
        for name in r.text(used).split(","):
            name = name.strip()
            if not name:
                continue
            if name not in self.doc or name == "":
                raise r.error(f"config section [{name}] is not defined", used, "the name of a section of this file")
            names.append(name)
        self.referenced_configs.update(names)
        return names

    def _config_reader(self, r, node, kind):
        return Reader(self.doc, self._config_names(r), node)

    def _check_unused(self, r, what):
        for key, entry, holder in r.unused():
            if key.startswith("$"):
                continue
            raise IniError(f"unknown key '{key}'" + (f" (inherited from [{entry.origin}])" if entry.origin else ""),
                           entry.file, holder, entry.line, f"one of the {what} this reader knows")

    def _check_layer_keys(self, layer):
        r, c, kind = layer.r, layer.config, layer.type
        config_keys = _LAYER_CONFIG.get(kind, {})
        roles = _SOLVER_ROLES.get(kind, ())
        solver_prefixes = tuple(f"{p}." for p in ("Solvers",) + tuple(f"{role}Solver" for role in roles)) if roles \
            else ()
        for key, entry, holder in r.unused():
            if key.startswith("$"):
                continue
            inherited = f" (inherited from [{entry.origin}])" if entry.origin else ""
            if key in config_keys or key.startswith(solver_prefixes):
                warn(f"'{key}' is a configuration parameter: N2D2 reads it only from a ConfigSection, so it is "
                     f"ignored here{inherited}", entry.file, entry.line, holder)
                continue
            raise IniError(f"unknown key '{key}' for a {kind} layer{inherited}", entry.file, holder, entry.line,
                           "one of: " + ", ".join(_known_layer_keys(kind)))
        for key, entry, holder in c.unused():
            if key.startswith("$"):
                continue
            known = list(config_keys) + [p + "*" for p in solver_prefixes]
            raise IniError(f"'{key}' is not a configuration parameter of a {kind} layer (read for [{layer.name}])",
                           entry.file, holder, entry.line,
                           "one of: " + ", ".join(known) if known else f"no configuration keys for a {kind} layer")

    # -- targets and the DeepNetCell ----------------------------------------------------------------------------
    def _target(self, provider, order, parents):
        targets = []
        for name in self.doc.order:
            if ".Target" not in name:
                continue
            owner = next((n for n in order if name.startswith(n + ".Target")), None)
            if owner is None:
                owner = self._onnx_target_owner(name, parents)
            if owner is None:
                raise self._section_error(name, f"target section [{name}] does not belong to a layer",
                                          "[<layer>.Target] for a layer section with Input=")
            targets.append((owner, name))
        if not targets:
            return None, None
        if len(targets) > 1:
            raise self._section_error(targets[1][1], "several targets are not supported",
                                      f"a single [<layer>.Target] section (first: [{targets[0][1]}])")
        node, name = targets[0]
        r = self._reader(name)
        r.choice("Type", ("TargetScore",), "TargetScore")
        if r.has("MaskLabelTarget"):
            raise r.error("MaskLabelTarget is not supported", "MaskLabelTarget", "no MaskLabelTarget")
        values = {py: self._typed(r, key, kind) for key, (py, kind) in _TARGET_KEYS.items() if r.has(key)}
        if "labels_mapping" in values and values["labels_mapping"]:
            values["labels_mapping"] = self._labels_mapping_path(r, values["labels_mapping"])
        self._check_unused(r, "target keys")
        arguments = {k: values.pop(k) for k in ("target_value", "default_value", "top_n", "labels_mapping")
                     if k in values}
        target = self._wrap(name, lambda: Score(provider, name=name, **arguments, **values), "invalid target")
        return node, target

    def _onnx_target_owner(self, name, parents):
        """`[<ONNX value>.Target]`: the owner is a value of an imported graph (upstream's
        `[Times418_Output_0.Target]`); it becomes a node fed by its ONNX section."""
        for section in self.onnx.values():
            for value in sorted(section.names(), key=len, reverse=True):
                if name.startswith(value + ".Target"):
                    self._onnx_owners[value] = section
                    parents[value] = [section.name]
                    return value
        return None

    def _labels_mapping_path(self, r, value):
        if os.path.exists(value) or os.path.isabs(value) or not self.file or self.file.startswith("<"):
            return value
        candidate = os.path.join(os.path.dirname(os.path.abspath(self.file)), value)
        return candidate if os.path.exists(candidate) else value

    def _default_output(self, order, parents):
        consumed = {p for n in order for p in parents[n]}
        sinks = [n for n in order if n not in consumed]
        if not sinks:
            raise IniError("the file defines no layer (no section with Input=)", self.file,
                           expected="at least one layer section with Input=sp")
        if len(sinks) > 1:
            warn(f"several output layers ({', '.join(sinks)}) and no [<layer>.Target] section: the network output "
                 f"is [{sinks[-1]}]", self.file)
        return sinks[-1]

    def _deepnet_cell(self, provider, target, tensors, cells, parents, output):
        needed, stack = set(), [output]
        while stack:
            n = stack.pop()
            if n in needed or n == "env":
                continue
            if n not in parents:   # an ONNX value: its section brings its cells
                stack.extend(name for name, section in self.onnx.items() if n in section.importer.values)
                continue
            needed.add(n)
            stack.extend(parents[n])
        dropped = [n for n in cells if n not in needed]
        if dropped:
            warn(f"layers not leading to the output [{output}] are left out: {', '.join(dropped)}", self.file)
        wanted = set()
        for n in needed:
            group = cells[n].cells if isinstance(cells[n], OnnxSection) else \
                cells[n] if isinstance(cells[n], list) else [cells[n]]
            wanted.update(id(c) for c in group)
        graph = DeepNet(provider)
        for record in tensors[output].get_deepnet().records():
            if id(record.cell) in wanted:
                graph.add(record)
        name = os.path.splitext(os.path.basename(self.file))[0] if self.file else None
        result = self._wrap(output, lambda: trace(graph, outputs=[tensors[output]], name=name,
                                                  input_names=["input"]), "cannot trace the network")
        batch = int(provider.shape()[0])
        if batch != 1:
            result.graph = self._wrap(output, lambda: rebatch(result.graph, batch), "cannot set the batch size")
        if target is None:
            target = Score(provider, name="Target")
        cls = self.cls or DeepNetCell
        if self.backend is None:
            return cls(result, provider, target)
        return cls(result, provider, target, backend=self.backend)

    def _check_unattached_layers(self, order):
        """A section with a layer Type= but no Input= is a layer the author forgot to connect,
        unless it is a parent or config section of others."""
        nodes = set(order)
        parents = {p for n in self.doc.order for p in self.doc.section(n).parents}
        for name in self.doc.order:
            sec = self.doc.section(name)
            if name in nodes or name in parents or name in self.referenced_configs or name in self.doc.template_parents:
                continue
            if name in ("database", "sp") or name.startswith("sp.") or ".Target" in name:
                continue
            if "Type" in sec.entries and sec.entries["Type"].value in LAYER_TYPES:
                raise IniError(f"layer section [{name}] (Type={sec.entries['Type'].value}) has no Input key: it is not "
                               f"connected to the network", sec.file, name, sec.line,
                               "Input=<sp or a layer>, or use it as a parent section ([child] " + name + ")")


def _known_layer_keys(kind):
    keys = list(_COMMON_LAYER_KEYS) + list(_LAYER_KEYS.get(kind, ()))
    if kind in ("Conv", "Deconv", "Fc", "Pool", "BatchNorm", "ElemWise", "Padding", "Resize", "Reshape", "Transpose",
                "Scaling", "Softmax", "Dropout", "Activation"):
        keys += ["ActivationFunction", "ActivationFunction.*", "QAct(.*)", "QActSolver(.*)"]
    if kind in ("Conv", "Deconv", "Fc"):
        keys += ["WeightsFiller(.*)", "BiasFiller(.*)", "QWeight(.*)", "QWeightSolver(.*)"]
    if kind in ("Conv", "Deconv", "Pool"):
        keys += ["Mapping.*", "Mapping(<input>)"]
    if kind in _SOLVER_ROLES:
        keys += ["Solvers", "WeightsSolver", "BiasSolver"] if kind != "BatchNorm" else ["Solvers", "ScaleSolver",
                                                                                       "BiasSolver"]
    return keys


_LAYER_KEYS = {
    "Conv": ("KernelDims", "KernelSize", "KernelWidth", "KernelHeight", "Stride*", "Padding*", "Dilation*",
             "SubSample*"),
    "Deconv": ("KernelDims", "KernelSize", "KernelWidth", "KernelHeight", "Stride*", "Padding*", "Dilation*"),
    "Pool": ("PoolDims", "PoolSize", "PoolWidth", "PoolHeight", "Stride*", "Padding*", "Pooling"),
    "Softmax": ("WithLoss", "GroupSize"),
    "ElemWise": ("Operation", "Weights", "Shifts", "CoeffMode"),
    "Normalize": ("Norm",),
    "LRN": ("N", "Alpha", "Beta", "K"),
    "Padding": ("TopPadding", "BottomPadding", "LeftPadding", "RightPadding"),
    "Resize": ("OutputWidth", "OutputHeight", "Mode"),
    "Reshape": ("Dims",),
    "Transpose": ("Perm",),
    "Scaling": ("Factor",),
}


# -- pieces shared by layer builders ----------------------------------------------------------------------
def _activation(layer, default=None):
    r = layer.r
    dotted = [k for k in r.keys() if k.startswith("ActivationFunction.")]
    if not r.has("ActivationFunction"):
        if dotted:
            raise r.error(f"'{dotted[0]}' without an ActivationFunction key", dotted[0],
                          "ActivationFunction=<type> before its parameters")
        if default is None:
            quantizer = _quantizer(layer, "QAct")   # QAct without an activation: Linear + quantizer
            return None if quantizer is None else activations.Linear(quantizer=quantizer)
        name = default
    else:
        name = r.choice("ActivationFunction", tuple(_ACTIVATIONS))
    cls_name, params = _ACTIVATIONS[name]
    kwargs = {}
    for key in dotted:
        short = key[len("ActivationFunction."):]
        if short not in params:
            raise r.error(f"'{key}' is not a parameter of the {name} activation", key,
                          ", ".join(f"ActivationFunction.{p}" for p in params) or f"no parameters for {name}")
        py, kind = params[short]
        kwargs[py] = r.float(key) if kind is float else r.text(key)
    quantizer = _quantizer(layer, "QAct")
    if quantizer is not None:
        kwargs["quantizer"] = quantizer
    return getattr(activations, cls_name)(**kwargs)


def _filler(layer, role):
    r = layer.r
    dotted = [k for k in r.keys() if k.startswith(role + ".")]
    if r.has(role):
        name = r.choice(role, tuple(_FILLERS))
        defaults = None
    else:
        name, defaults = "NormalFiller", {"mean": 0.0, "std_dev": 0.05}  # N2D2's code default
    cls_name, params = _FILLERS[name]
    kwargs = dict(defaults or {})
    for key in dotted:
        short = key[len(role) + 1:]
        if short not in params:
            raise r.error(f"'{key}' is not a parameter of {name}", key,
                          ", ".join(f"{role}.{p}" for p in params))
        py, kind, _ = params[short]
        kwargs[py] = r.float(key) if kind is float else r.text(key)
    return layer.builder._wrap(layer.name, lambda: getattr(fillers, cls_name)(**kwargs), f"invalid {role}")


def _solver(layer, role):
    """The solver of `role` ("Weights", "Bias", "Scale"): type from the layer section
    (`<role>Solver=`, else `Solvers=`, default SGD); parameters `Solvers.X` then `<role>Solver.X`
    from the config sections, then from the layer section when it names the type."""
    r, c = layer.r, layer.config
    specific = f"{role}Solver"
    kind = "SGD"
    for source in (c, r):
        for key in ("Solvers", specific):
            if source.has(key):
                kind = source.choice(key, _SOLVER_TYPES)
    sources = [c]
    if r.has("Solvers") or r.has(specific):
        sources.append(r)
    return _make_solver(layer, role, kind, sources, ("Solvers.", specific + "."))


def _make_solver(layer, role, kind, sources, prefixes):
    """A `kind` solver whose parameters are the keys `<prefix>X` of `sources` (later ones win)."""
    table = _SGD_KEYS if kind == "SGD" else _ADAM_KEYS
    kwargs = {}
    for source in sources:
        for prefix in prefixes:
            for key in source.keys():
                if not key.startswith(prefix):
                    continue
                short = key[len(prefix):]
                if short not in table:
                    raise source.error(f"'{key}' is not a parameter of the {kind} solver", key,
                                       ", ".join(prefix + k for k in table))
                py, type_ = table[short]
                value = NetworkBuilder._typed(source, key, type_)
                if py == "learning_rate_step_size" and value < 1:
                    raise source.error(f"{key}={value} must be at least 1 (an empty Learn partition gives "
                                       f"[sp]_EpochSize=0)", key, "a positive number of stimuli")
                if py == "learning_rate_policy" and value not in solvers._POLICIES:
                    raise source.error(f"{key}={value!r} is not a learning-rate policy", key,
                                       "one of " + ", ".join(solvers._POLICIES))
                kwargs[py] = value
    # keys of the other roles are read by their own call; mark the ones of absent roles as seen
    return layer.builder._wrap(layer.name, lambda: getattr(solvers, kind)(**kwargs), f"invalid {role} solver")


def _quantizer(layer, role):
    """The QAT quantizer of `role` (reference 4.6), or None without a `<role>=` type key:
    `QWeight=SAT|LSQ` (Conv, Deconv, Fc) or `QAct=SAT|LSQ` (any layer with an activation), its
    `<role>.X` parameters and its solver (`<role>Solver=SGD|Adam` or `<role>.Solver=`, parameters
    `<role>Solver.X`), read from the config sections then the layer section (which wins), as
    `n2d2.quantizer.SATCell(...)` etc. would be built. A sub-key the quantizer does not have, or
    parameters without the type key, are errors naming the section and line."""
    r, c = layer.r, layer.config
    what = _QUANTIZER_WHAT[role]
    sources = (c, r)
    solver_role = f"{role}Solver"
    dotted = [(s, k) for s in sources for k in s.keys() if k.startswith(role + ".")]
    solver_keys = [(s, k) for s in sources for k in s.keys() if k == solver_role or k.startswith(solver_role + ".")]
    typed = [s for s in sources if s.has(role)]
    if not typed:
        if dotted or solver_keys:
            source, key = (dotted or solver_keys)[0]
            raise source.error(f"'{key}' without a {role} key (no {what} quantizer)", key,
                               f"{role}=SAT or {role}=LSQ before its parameters")
        return None
    kind = typed[-1].choice(role, ("SAT", "LSQ"))
    for source in typed[:-1]:
        source.mark(role)
    cls_name, params = _QUANTIZERS[(role, kind)]
    kwargs = {}
    for source in sources:
        spelled = {}
        for key in source.keys():
            if not key.startswith(role + ".") or key == f"{role}.Solver":
                continue
            short = key[len(role) + 1:]
            if short not in params:
                raise source.error(f"'{key}' is not a parameter of the {kind} {what} quantizer ({cls_name})", key,
                                   ", ".join(f"{role}.{p}" for p in params) + f", {role}.Solver, {solver_role}.*")
            py, type_ = params[short]
            if py in spelled:
                raise source.error(f"'{key}' and '{role}.{spelled[py]}' set the same parameter", key,
                                   f"one of {role}.{spelled[py]}, {key}")
            spelled[py] = short
            kwargs[py] = NetworkBuilder._typed(source, key, type_)
    solver = _quantizer_solver(layer, role, kind, sources)
    if solver is not None:
        kwargs["solver"] = solver
    return layer.builder._wrap(layer.name, lambda: getattr(quantizers, cls_name)(model=layer.model, **kwargs),
                               f"invalid {role}={kind}")


def _quantizer_solver(layer, role, kind, sources):
    """The solver of a quantizer's learned scalar (`<role>Solver=` / `<role>.Solver=` type key and
    `<role>Solver.X` parameters), None when no key names one (the quantizer's default, SGD)."""
    solver_role = f"{role}Solver"
    type_keys = [(s, k) for s in sources for k in (solver_role, f"{role}.Solver") if s.has(k)]
    params = [(s, k) for s in sources for k in s.keys() if k.startswith(solver_role + ".")]
    if not type_keys and not params:
        return None
    if not type_keys:
        source, key = params[0]
        raise source.error(f"'{key}' without a {solver_role} key", key, f"{solver_role}=SGD or Adam before its "
                           "parameters")
    if len({k for _, k in type_keys}) > 1:
        source, key = type_keys[-1]
        raise source.error(f"{solver_role} and {role}.Solver both name the solver", key, f"one of {solver_role}, "
                           f"{role}.Solver")
    source, key = type_keys[-1]
    solver_kind = source.choice(key, _SOLVER_TYPES)
    for s, k in type_keys[:-1]:
        s.mark(k)
    if role == "QWeight" and kind == "SAT":    # SATCell learns nothing: N2D2 keeps the solver unused
        for s, k in type_keys + params:
            s.mark(k)
        entry = source.entry(key)
        warn(f"'{key}': the SAT weight quantizer has no learned parameter, its solver is ignored", entry.file,
             entry.line, layer.name)
        return None
    return _make_solver(layer, solver_role, solver_kind, sources, (solver_role + ".",))


def _config_values(layer, kind):
    c = layer.config
    out = {}
    for key, (py, type_) in _LAYER_CONFIG.get(kind, {}).items():
        if c.has(key):
            out[py] = NetworkBuilder._typed(c, key, type_)
    return out


def _dims(layer, name, default, minimum=None):
    """[X, Y] of a stride/padding/dilation/subsample family: `<name>Dims` > `<name>` > `<name>X/Y`."""
    r = layer.r
    candidates = [k for k in (f"{name}Dims", name, f"{name}X", f"{name}Y") if r.has(k)]
    if r.has(f"{name}Z") or r.has(f"{name}Depth"):
        key = f"{name}Z" if r.has(f"{name}Z") else f"{name}Depth"
        raise r.error(f"{key}: 3-D layers are not supported", key, f"2-D {name} keys")
    if r.has(f"{name}Dims"):
        values = r.ints(f"{name}Dims", count=(1, 2, 3), minimum=minimum)
        if len(values) == 3:
            if values[2] != default:
                raise r.error(f"{name}Dims has a third (depth) value: 3-D layers are not supported", f"{name}Dims",
                              f"{name}Dims=X Y")
            values = values[:2]
        result = values if len(values) == 2 else [values[0], default]
    elif r.has(name):
        v = r.int(name, minimum=minimum)
        result = [v, v]
    else:
        result = [r.int(f"{name}X", default, minimum=minimum), r.int(f"{name}Y", default, minimum=minimum)]
    _shadowed(layer, candidates)
    return result


def _window(layer, prefix):
    """[X, Y] of the kernel/pool window: `<prefix>Dims` > `<prefix>Size` > `<prefix>Width/Height`."""
    r = layer.r
    candidates = [k for k in (f"{prefix}Dims", f"{prefix}Size", f"{prefix}Width", f"{prefix}Height") if r.has(k)]
    if r.has(f"{prefix}Depth"):
        raise r.error(f"{prefix}Depth: 3-D layers are not supported", f"{prefix}Depth", f"no {prefix}Depth")
    if r.has(f"{prefix}Dims"):
        values = r.ints(f"{prefix}Dims", count=(1, 2, 3), minimum=1)
        if len(values) == 3:
            if values[2] != 1:
                raise r.error(f"{prefix}Dims has a depth value: 3-D layers are not supported", f"{prefix}Dims",
                              f"{prefix}Dims=X Y")
            values = values[:2]
        result = values if len(values) == 2 else [values[0], 1]
    elif r.has(f"{prefix}Size"):
        v = r.int(f"{prefix}Size", minimum=1)
        result = [v, v]
    else:
        result = [r.int(f"{prefix}Width", minimum=1), r.int(f"{prefix}Height", minimum=1)]
    _shadowed(layer, candidates)
    return result


def _shadowed(layer, candidates):
    r = layer.r
    if not candidates:
        return
    winner = candidates[0]
    losers = [k for k in candidates[1:] if k not in r.used]
    if winner.endswith(("Width", "X")):
        losers = [k for k in losers if not k.endswith(("Height", "Y"))]
    for key in losers:
        entry = r.entry(key)
        r.mark(key)
        warn(f"'{key}' is ignored because '{winner}' is given", entry.file, entry.line, r._holder(key))


# -- channel mapping ----------------------------------------------------------------------------------------
def _mapping_table(layer, nb_outputs):
    """Bool array [total channels, nb_outputs] from the Mapping keys, one block of rows per input."""
    r = layer.r
    for k in r.keys():
        if k.startswith("Mapping(") and not any(k.startswith(f"Mapping({p})") for p in layer.parents):
            hint = " (the stimuli provider is named env in mappings: Mapping(env))" if k.startswith("Mapping(sp)") \
                else ""
            raise r.error(f"'{k}' names no input of this layer{hint}", k,
                          ", ".join(f"Mapping({p})" for p in layer.parents))
    grouped = [k for k in ("Mapping.NbGroups", "Mapping.ChannelsPerGroup") if r.has(k)]
    if len(grouped) == 2:
        raise r.error("Mapping.NbGroups and Mapping.ChannelsPerGroup are mutually exclusive", grouped[1],
                      "only one of them")
    blocks = []
    for parent, tensor in zip(layer.parents, layer.inputs):
        channels = tensor.dimZ()
        table_key = f"Mapping({parent})"
        if grouped:
            blocks.append(_grouped_table(layer, grouped[0], channels, nb_outputs))
        elif r.has(table_key):
            blocks.append(_explicit_table(layer, table_key, channels, nb_outputs))
        else:
            blocks.append(_canvas_table(layer, parent, channels, nb_outputs))
    if grouped:
        others = [k for k in r.keys() if k.startswith("Mapping") and k not in grouped]
        if others:
            raise r.error(f"'{others[0]}' cannot be combined with {grouped[0]}", others[0], f"only {grouped[0]}")
    return np.concatenate(blocks, axis=0)


def _grouped_table(layer, key, channels, nb_outputs):
    r = layer.r
    value = r.int(key, minimum=1)
    if key == "Mapping.NbGroups":
        groups = value
        per_group = channels // groups
    else:
        per_group = value
        groups = channels // per_group
    if groups < 1 or per_group < 1 or channels % groups:
        raise r.error(f"{key}={value} does not split the {channels} input channels into equal groups", key,
                      f"a divisor of {channels}")
    if nb_outputs < groups:
        raise r.error(f"{key}={value}: {groups} groups for {nb_outputs} outputs", key,
                      f"at most {nb_outputs} groups")
    table = np.zeros((channels, nb_outputs), dtype=bool)
    out_offset = 0
    for g in range(groups):
        size = (nb_outputs - out_offset) // (groups - g)
        table[g * per_group:(g + 1) * per_group, out_offset:out_offset + size] = True
        out_offset += size
    return table


def _explicit_table(layer, key, channels, nb_outputs):
    r = layer.r
    text = r.text(key)
    values = text.split()
    if len(values) != channels * nb_outputs or any(v not in ("0", "1") for v in values):
        bad = next((v for v in values if v not in ("0", "1")), None)
        reason = f"value {bad!r} is not 0 or 1" if bad is not None else f"{len(values)} values"
        raise r.error(f"{key}: {reason}", key,
                      f"{channels} x {nb_outputs} = {channels * nb_outputs} values 0/1 (one row per input channel, "
                      f"one column per output)")
    return np.array([v == "1" for v in values], dtype=bool).reshape(channels, nb_outputs)


def _canvas_table(layer, parent, channels, nb_outputs):
    r = layer.r
    prefix = f"Mapping({parent})"
    general = [k for k in r.keys() if k.startswith("Mapping.")]
    specific = [k for k in r.keys() if k.startswith(prefix + ".")]
    if not general and not specific:
        return np.ones((channels, nb_outputs), dtype=bool)
    allowed = {"Size", "SizeX", "SizeY", "Stride", "StrideX", "StrideY", "Offset", "OffsetX", "OffsetY",
               "NbIterations"}
    for k in general + specific:
        if k.split(".", 1)[1] not in allowed:
            raise r.error(f"unknown mapping key '{k}'", k,
                          "Mapping[(input)].Size/SizeX/SizeY/Stride/StrideX/StrideY/Offset/OffsetX/OffsetY/"
                          "NbIterations, Mapping.NbGroups, Mapping.ChannelsPerGroup or Mapping(input)")

    def read(name, base):
        m = dict(base)
        for pair, single in (("Size", ("SizeX", "SizeY")), ("Stride", ("StrideX", "StrideY")),
                             ("Offset", ("OffsetX", "OffsetY"))):
            if r.has(f"{name}.{pair}"):
                v = r.int(f"{name}.{pair}", minimum=0)
                m[single[0]] = m[single[1]] = v
                r.mark(f"{name}.{single[0]}", f"{name}.{single[1]}")
            else:
                for s in single:
                    if r.has(f"{name}.{s}"):
                        m[s] = r.int(f"{name}.{s}", minimum=0)
        if r.has(f"{name}.NbIterations"):
            m["NbIterations"] = r.int(f"{name}.NbIterations", minimum=0)
        return m

    m = read("Mapping", {"SizeX": 1, "SizeY": 1, "StrideX": 1, "StrideY": 1, "OffsetX": 0, "OffsetY": 0,
                         "NbIterations": 0})
    m = read(prefix, m)
    size_x = m["SizeX"] or nb_outputs
    size_y = m["SizeY"] or channels
    iterations = m["NbIterations"] or max(nb_outputs, channels)
    if iterations * size_x * size_y > 10 ** 8:
        raise r.error("mapping canvas too large", None, "smaller Mapping sizes or NbIterations")
    table = np.zeros((channels, nb_outputs), dtype=bool)
    x, y = m["OffsetX"], m["OffsetY"]
    for _ in range(iterations):
        outs = (x + np.arange(size_x)) % nb_outputs
        chans = (y + np.arange(size_y)) % channels
        table[np.ix_(chans, outs)] = True
        x += m["StrideX"]
        y += m["StrideY"]
    return table


def _tensor(table):
    return Tensor.from_numpy(np.ascontiguousarray(table))


# -- layer builders -------------------------------------------------------------------------------------------
def _cell_kwargs(layer, kind, solvers=True, fillers=True, activation=True):
    kwargs = {"name": layer.name, "model": layer.model}
    if activation:
        kwargs["activation"] = _activation(layer)
    if fillers:
        kwargs["weights_filler"] = _filler(layer, "WeightsFiller")
        kwargs["bias_filler"] = _filler(layer, "BiasFiller")
    if solvers:
        for role in _SOLVER_ROLES[kind]:
            kwargs[f"{role.lower()}_solver"] = _solver(layer, role)
    if kind in ("Conv", "Deconv", "Fc"):
        quantizer = _quantizer(layer, "QWeight")
        if quantizer is not None:
            kwargs["quantizer"] = quantizer
    kwargs.update(_config_values(layer, kind))
    return kwargs


def _build_conv(layer, deconv=False):
    kind = "Deconv" if deconv else "Conv"
    r = layer.r
    nb_outputs = r.int("NbOutputs", minimum=1)
    kernel = _window(layer, "Kernel")
    geometry = dict(stride_dims=_dims(layer, "Stride", 1, 1), padding_dims=_dims(layer, "Padding", 0),
                    dilation_dims=_dims(layer, "Dilation", 1, 1))
    if deconv:
        for key in [k for k in r.keys() if k.startswith("SubSample")]:
            entry = r.entry(key)
            r.mark(key)
            warn(f"'{key}' is ignored on a Deconv layer (as N2D2's generator does)", entry.file, entry.line, r.name)
    else:
        geometry["sub_sample_dims"] = _dims(layer, "SubSample", 1, 1)
    for key in ("WeightsSharing", "BiasesSharing"):
        if r.has(key):
            raise r.error(f"{key} is not supported", key, f"no {key}")
    table = _mapping_table(layer, nb_outputs)
    mapping = None if table.all() else _tensor(table)
    kwargs = _cell_kwargs(layer, kind)
    cls = Deconv if deconv else Conv
    return layer.builder._wrap(layer.name, lambda: cls(layer.channels, nb_outputs, kernel_dims=kernel,
                                                       mapping=mapping, **geometry, **kwargs), f"invalid {kind}")


def _build_fc(layer):
    nb_outputs = layer.r.int("NbOutputs", minimum=1)
    nb_inputs = sum(t.dimZ() * t.dimY() * t.dimX() for t in layer.inputs)
    kwargs = _cell_kwargs(layer, "Fc")
    return layer.builder._wrap(layer.name, lambda: Fc(nb_inputs, nb_outputs, **kwargs), "invalid Fc")


def _build_pool(layer):
    r = layer.r
    nb_outputs = r.int("NbOutputs", minimum=1)
    pool = _window(layer, "Pool")
    stride, padding = _dims(layer, "Stride", 1, 1), _dims(layer, "Padding", 0, 0)
    pooling = r.choice("Pooling", ("Max", "Average"))
    table = _mapping_table(layer, nb_outputs)
    if table.shape[0] != nb_outputs:
        raise r.error(f"a Pool layer with {table.shape[0]} input channels and NbOutputs={nb_outputs} (cross-channel "
                      f"pooling to another channel count) is not supported", "NbOutputs",
                      f"NbOutputs={table.shape[0]}")
    kwargs = dict(stride_dims=stride, padding_dims=padding, pooling=pooling, name=layer.name, model=layer.model,
                  activation=_activation(layer))
    if np.array_equal(table, np.eye(nb_outputs, dtype=bool)):
        return layer.builder._wrap(layer.name, lambda: Pool2d(pool, **kwargs), "invalid Pool")
    mapping = None if table.all() else _tensor(table)
    return layer.builder._wrap(layer.name, lambda: Pool(pool, mapping=mapping, **kwargs), "invalid Pool")


def _simple(layer, make, what):
    return layer.builder._wrap(layer.name, make, f"invalid {what}")


def _build_softmax(layer):
    r = layer.r
    with_loss, group = r.bool("WithLoss", False), r.int("GroupSize", 0, minimum=0)
    act = _activation(layer)
    return _simple(layer, lambda: Softmax(with_loss=with_loss, group_size=group, name=layer.name, model=layer.model,
                                          activation=act), "Softmax")


def _build_dropout(layer):
    act = _activation(layer)
    kwargs = _config_values(layer, "Dropout")
    return _simple(layer, lambda: Dropout(name=layer.name, model=layer.model, activation=act, **kwargs), "Dropout")


def _build_batchnorm(layer):
    for key in ("ScalesSharing", "BiasesSharing", "MeansSharing", "VariancesSharing"):
        if layer.r.has(key):
            raise layer.r.error(f"{key} is not supported", key, f"no {key}")
    kwargs = _cell_kwargs(layer, "BatchNorm", fillers=False)
    return _simple(layer, lambda: BatchNorm2d(layer.channels, **kwargs), "BatchNorm")


def _build_elemwise(layer):
    r = layer.r
    operation = r.choice("Operation", ("Sum", "AbsSum", "EuclideanSum", "Prod", "Max"))
    mode = r.choice("CoeffMode", ("PerLayer", "PerInput", "PerChannel"), "PerInput")
    weights = r.floats("Weights", [])
    shifts = r.floats("Shifts", [])
    act = _activation(layer)
    return _simple(layer, lambda: ElemWise(operation=operation, mode=mode, weights=weights, shifts=shifts,
                                           name=layer.name, model=layer.model, activation=act), "ElemWise")


def _build_normalize(layer):
    norm = layer.r.choice("Norm", ("L2",), "L2")
    act = _activation(layer)
    return _simple(layer, lambda: Normalize(norm, name=layer.name, model=layer.model, activation=act), "Normalize")


def _build_lrn(layer):
    r = layer.r
    size, k = r.int("N", 5, minimum=1), r.float("K", 2.0)
    alpha, beta = r.float("Alpha", 1e-4), r.float("Beta", 0.75)
    act = _activation(layer)
    return _simple(layer, lambda: LRN(size, alpha, beta, k, name=layer.name, model=layer.model, activation=act), "LRN")


def _build_padding(layer):
    r = layer.r
    pads = [r.int(k) for k in ("TopPadding", "BottomPadding", "LeftPadding", "RightPadding")]
    act = _activation(layer)
    return _simple(layer, lambda: Padding(*pads, name=layer.name, model=layer.model, activation=act), "Padding")


def _build_resize(layer):
    r = layer.r
    width, height = r.int("OutputWidth", minimum=1), r.int("OutputHeight", minimum=1)
    mode = r.choice("Mode", ("Bilinear", "BilinearTF", "NearestNeighbor"))
    kwargs = _config_values(layer, "Resize")
    align = kwargs.pop("align_corners", True)
    act = _activation(layer)
    return _simple(layer, lambda: Resize(width, height, mode, align_corners=align, name=layer.name,
                                         model=layer.model, activation=act), "Resize")


def _build_reshape(layer):
    dims = layer.r.ints("Dims", count=(1, 2, 3, 4))
    act = _activation(layer)
    return _simple(layer, lambda: Reshape(dims, name=layer.name, model=layer.model, activation=act), "Reshape")


def _build_transpose(layer):
    perm = layer.r.ints("Perm", count=(3, 4))
    act = _activation(layer)
    return _simple(layer, lambda: Transpose(perm, name=layer.name, model=layer.model, activation=act), "Transpose")


def _build_scaling(layer):
    factor = layer.r.float("Factor")
    act = _activation(layer)
    scaling = FloatingPointScaling([factor] * layer.channels)
    return _simple(layer, lambda: Scaling(scaling, name=layer.name, model=layer.model, activation=act), "Scaling")


def _build_activation(layer):
    act = _activation(layer, default="Tanh")  # N2D2's ActivationCell defaults to Tanh
    return _simple(layer, lambda: Activation(act, name=layer.name, model=layer.model), "Activation")


LAYER_TYPES = {
    "Conv": _build_conv,
    "Deconv": lambda layer: _build_conv(layer, deconv=True),
    "Pool": _build_pool,
    "Fc": _build_fc,
    "Softmax": _build_softmax,
    "Dropout": _build_dropout,
    "BatchNorm": _build_batchnorm,
    "ElemWise": _build_elemwise,
    "Normalize": _build_normalize,
    "LRN": _build_lrn,
    "Padding": _build_padding,
    "Resize": _build_resize,
    "Reshape": _build_reshape,
    "Transpose": _build_transpose,
    "Scaling": _build_scaling,
    "Activation": _build_activation,
}
