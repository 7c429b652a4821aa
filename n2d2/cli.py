"""The `n2d2` command line: one sub-command (verb) per task.

    n2d2 train --model lenet --database mnist --epochs 10
    n2d2 export n2d2_runs/lenet-mnist-<timestamp> --output lenet_c && make -C lenet_c run

Exit status: 0 on success, 2 for malformed arguments (argparse), 1 for any other user error
(unknown model, missing data files...), reported in one line without a traceback.

Adding a verb (e.g. `run` for INI files): write `add_<verb>_parser(subparsers)` that creates
its parser with `subparsers.add_parser("<verb>", help=...)`, declares the options and calls
`parser.set_defaults(func=<verb>_command)`; write `<verb>_command(args) -> int` (raise
`UserError` for mistakes of the user); append `add_<verb>_parser` to `VERBS`.
"""
import argparse
import contextlib
import io
import json
import os
import platform
import sys
import textwrap
import time

import n2d2
from n2d2 import distributed, global_variables, training
from n2d2.cells import Sequence, Softmax
from n2d2.cells.deepnet_cell import VALID_METRICS
from n2d2.codegen.programs import BACKENDS, select_backend
from n2d2.export import ExportError, export_c, export_onnx
from n2d2.frontends.ini.runner import add_run_parser
from n2d2.training import DATABASES, MODELS, UserError
from n2d2.utils import atomic_write_text

DEFAULT_OUTPUT_ROOT = "n2d2_runs"


# -- argument types (bad values exit with status 2, as argparse does) --------------------------------
def _int_at_least(text: str, minimum: int, integer: str, in_range: str) -> int:
    """`text` as an int >= minimum; the errors say "expected <integer>" (not an integer) or
    "expected <in_range>" (too small)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {integer}, got '{text}'") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {in_range}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer", "a positive integer")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not value >= 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _non_negative_float(text)
    if value >= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text}")
    return value


def _seed(text: str) -> int:
    return _int_at_least(text, 0, "an integer seed", "a seed >= 0 (0: time based)")


# -- train ----------------------------------------------------------------------------------------
def _backends() -> tuple:
    return tuple(BACKENDS)


def add_train_parser(subparsers):
    models = "\n".join(textwrap.fill(f"{name} ({', '.join(MODELS[name].databases)}): {MODELS[name].description}",
                                      width=100, initial_indent="  ", subsequent_indent="      ")
                        for name in sorted(MODELS))
    notes = ("On a busy machine, OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 can make training several times faster "
             "(threads spinning against other processes).")
    p = subparsers.add_parser(
        "train", help="train a zoo model on a data set and report its test accuracy",
        description="Train a model of n2d2's zoo, validate it each epoch, keep the best weights and report "
                    "the test accuracy. Logs, plots and weights go to the output folder.",
        epilog="models:\n" + models + "\n\n" + textwrap.fill(notes, width=100),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lenet", help="model to train (default: lenet; see the list below)")
    p.add_argument("--database", default="mnist", help=f"data set: {', '.join(sorted(DATABASES))} (default: mnist)")
    p.add_argument("--epochs", type=_positive_int, default=10, help="training epochs (default: 10)")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="batch size (default: 128)")
    p.add_argument("--learning-rate", type=_non_negative_float, default=None,
                   help="SGD learning rate (default: the model's)")
    p.add_argument("--momentum", type=_non_negative_float, default=None, help="SGD momentum (default: the model's)")
    p.add_argument("--decay", type=_non_negative_float, default=None, help="SGD weight decay (default: the model's)")
    p.add_argument("--data-path", default=None,
                   help="folder holding the data set's files (MNIST default: $N2D2_DATA/mnist, else the bundled "
                        "data/mnist/, else a download)")
    p.add_argument("--validation", type=_fraction, default=0.1,
                   help="fraction of the training set used for validation (default: 0.1)")
    p.add_argument("--valid-metric", default="Sensitivity", choices=VALID_METRICS, metavar="METRIC",
                   help="validation score that selects the best epoch's weights (default: Sensitivity, the "
                        "mean per-class recall, as N2D2)")
    p.add_argument("--output", default=None,
                   help=f"output folder (default: ./{DEFAULT_OUTPUT_ROOT}/<model>-<database>-<timestamp>)")
    p.add_argument("--seed", type=_seed, default=1, help="random seed: weights, partitions, batches, dropout "
                                                         "(default: 1; 0: time based)")
    p.add_argument("--limit-train", type=_positive_int, default=None, metavar="N",
                   help="use only N training images (split by --validation)")
    p.add_argument("--limit-test", type=_positive_int, default=None, metavar="N", help="test on N images only")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (numpy) or cuda (CuPy)")
    p.add_argument("--backend", default="auto", choices=("auto",) + _backends(),
                   help="how DeepNetCell runs the compiled network: numpy executor, generated C or CUDA, or "
                        "auto (DeepNetCell's choice from --device and the compilers found; default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--sync-batchnorm", action="store_true",
                   help="under mpirun: BatchNorm statistics of the global batch (all ranks), not of each rank's")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue the interrupted run in RUN_DIR from its last checkpoint, with its own options "
                        "(the other options are ignored)")
    p.set_defaults(func=train_command)
    return p


def _output_folder(args) -> str:
    if args.output:
        return os.path.abspath(os.path.expanduser(args.output))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.path.abspath(os.path.join(DEFAULT_OUTPUT_ROOT, f"{args.model}-{args.database}-{stamp}"))
    path, k = base, 1
    while os.path.exists(path):
        path, k = f"{base}-{k}", k + 1
    return path


def _check_output_folder(path: str, option: str = "--output") -> str:
    """UserError now, before any work, when `path` cannot become a folder (nothing is created)."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UserError(f"{option} {path}: exists and is not a folder")
    parent = path
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"{option} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: {parent} is not writable")
    return path


def _make_output_folder(path: str, option: str = "--output") -> str:
    """Create `path` (a folder that we can write into) or raise UserError saying why not."""
    _check_output_folder(path, option)
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".n2d2-write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise UserError(f"{option} {path}: cannot write there ({e.strerror or e})") from None
    return path


def _select_device(device: str):
    if device == "cuda":
        if not global_variables.cuda_available:
            raise UserError("--device cuda: CUDA is not available here (CuPy is not installed or no GPU was "
                            "found); install n2d2[gpu] on a GPU machine, or use --device cpu")
        global_variables.default_model = "Frame_CUDA"
    else:
        global_variables.default_model = "Frame"


def _check_backend(backend: str):
    """UserError now (before any file is written) when the backend cannot run here."""
    if backend == "auto":
        return
    try:
        select_backend(backend)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"--backend {backend}: {str(e).splitlines()[0]}") from None


def _versions() -> dict:
    import numpy

    return {"n2d2": n2d2.__version__, "numpy": numpy.__version__, "python": platform.python_version()}


def train_command(args) -> int:
    """`n2d2 train`: build, fit (DeepNetCell.fit), test, log; prints `Test accuracy: ...` last."""
    if not args.no_progress:
        return _train(args)
    # tqdm reads TQDM_DISABLE when it is first imported (DeepNetCell.fit imports it lazily)
    previous = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        return _train(args)
    finally:
        if previous is None:
            del os.environ["TQDM_DISABLE"]
        else:
            os.environ["TQDM_DISABLE"] = previous


RUN_ARGUMENTS = "arguments.json"   # the options of a run, written when it starts (for --resume)


def _resumed_arguments(args):
    """`args` replaced by the options saved in the run folder `args.resume` (output: that folder)."""
    run_dir = os.path.abspath(os.path.expanduser(args.resume))
    path = os.path.join(run_dir, RUN_ARGUMENTS)
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        raise UserError(f"--resume {run_dir}: no {RUN_ARGUMENTS} (not an `n2d2 train` output folder)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"--resume {run_dir}: cannot read {RUN_ARGUMENTS} ({e})") from None
    if not os.path.isfile(os.path.join(run_dir, "checkpoint.npz")):
        raise UserError(f"--resume {run_dir}: no checkpoint.npz (the run ended before its first epoch)")
    parsed = build_parser().parse_args(["train"])
    known = vars(parsed)
    if not isinstance(saved, dict) or any(k not in known for k in saved):
        raise UserError(f"--resume {run_dir}: {RUN_ARGUMENTS} holds unknown options")
    for key, value in saved.items():
        setattr(args, key, value)
    args.output, args.resume = run_dir, run_dir
    return args


def _train(args) -> int:
    if args.resume:
        args = _resumed_arguments(args)
    world = distributed.current()
    say = print if world.is_root else (lambda *a, **k: None)

    db_spec = training.check_database(args.database)
    model_spec = training.check_model(args.model, db_spec.name)
    args.database, args.model = db_spec.name, model_spec.name
    _select_device(args.device)
    _check_backend(args.backend)
    n2d2.global_variables.seed = args.seed
    data_path = training.find_data(db_spec, args.data_path)
    output = _check_output_folder(_output_folder(args))

    database = training.load_database(db_spec, data_path, args.validation)
    training.apply_limits(database, args.limit_train, args.limit_test, args.validation)
    counts = {p: database.get_nb_stimuli(p) for p in ("Learn", "Validation", "Test")}
    if counts["Learn"] == 0:
        raise UserError("no training image left (check --limit-train and --validation)")
    if counts["Test"] == 0:
        raise UserError(f"{db_spec.title} in {data_path} has no test image")
    provider = training.make_provider(database, db_spec, model_spec.input_size, args.batch_size)
    model = model_spec.build(db_spec.nb_classes, counts["Learn"])
    solver = training.make_solver(model_spec, counts["Learn"], args.epochs, args.learning_rate, args.momentum,
                                  args.decay)
    if solver is not None:
        model.set_solver(solver)
    network = Sequence([model, Softmax(with_loss=True, name="softmax")], name=model.get_name())

    if world.is_root:
        _make_output_folder(output)

        saved = {k: v for k, v in vars(args).items() if k not in ("func", "resume", "verb")}
        atomic_write_text(os.path.join(output, RUN_ARGUMENTS), json.dumps(saved, indent=1) + "\n")
    say(f"n2d2 train: model {model_spec.name}, database {db_spec.name} ({data_path}: {counts['Learn']} learn, "
        f"{counts['Validation']} validation, {counts['Test']} test), batch {args.batch_size}, "
        f"{args.epochs} epoch(s), seed {args.seed}, device {args.device}"
        + (f", {world.size} MPI ranks (global batch {args.batch_size * world.size}"
           + (", synchronised BatchNorm)" if args.sync_batchnorm else ")") if world.size > 1 else ""))
    say(f"Output folder: {output}")
    cwd = os.getcwd()
    if world.is_root:
        os.chdir(output)   # the target's logs and fit's weights_init/ weights_validation/ go there
    try:
        target = training.EpochReport(provider, args.epochs, name="Target", out=say)
        dn = network.to_deepnet_cell(provider, target)
        if args.backend != "auto":
            if not hasattr(dn, "set_backend"):
                raise UserError(f"--backend {args.backend}: this DeepNetCell has no choice of backend")
            dn.set_backend(args.backend)
        if world.is_root:
            with contextlib.redirect_stdout(io.StringIO()) as table:
                dn.summary()
            atomic_write_text("model.txt", str(model) + "\n\n" + table.getvalue())
        start = time.perf_counter()
        target.start()
        dn.fit(args.epochs, valid_metric=args.valid_metric, checkpoint="checkpoint.npz" if world.is_root else None,
               resume=os.path.join(output, "checkpoint.npz") if args.resume else None,
               sync_batchnorm=args.sync_batchnorm)
        train_seconds = time.perf_counter() - start
        if counts["Validation"] == 0:
            say("(no validation: --validation 0; the last epoch's weights are kept)")
        start = time.perf_counter()
        dn.run_test()
        test_seconds = time.perf_counter() - start
        accuracy, nb_test = training.partition_accuracy(target, "Test")
        if world.is_root:
            _write_logs(dn, target, args, output, data_path, counts, accuracy, nb_test, train_seconds, test_seconds)
    finally:
        os.chdir(cwd)
    say(f"Logs, plots and weights in {output}")
    say(f"Test accuracy: {100 * accuracy:.2f} % ({nb_test} images)")
    return 0


def _write_logs(dn, target, args, output, data_path, counts, accuracy, nb_test, train_seconds, test_seconds):
    """Curves, statistics, final weights and a summary.json in the output folder (the cwd)."""
    if counts["Validation"]:
        target.log_success("Validation", partition="Validation")
        target.log_confusion_matrix("Validation", partition="Validation")
    target.log_success("Learn", partition="Learn")
    target.log_stats("stats")
    with contextlib.redirect_stdout(io.StringIO()):
        dn.export_free_parameters("weights", verbose=False)
    atomic_write_text("epochs.tsv", target.epochs_tsv())
    validated = [r for r in target.epochs if r["validation_images"]]
    best = max(validated, key=lambda r: r["validation_metric"]) if validated else None
    summary = {
        "command": "n2d2 " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith(("n2d2", "__main__.py"))
        else None,
        "arguments": {k: v for k, v in vars(args).items() if k != "func"},
        "data_path": data_path, "partitions": counts,
        "test_accuracy": accuracy, "test_images": nb_test,
        "best_epoch": best["epoch"] if best else None,
        "train_seconds": round(train_seconds, 2), "test_seconds": round(test_seconds, 2),
        "epochs": target.epochs, "versions": _versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    atomic_write_text("summary.json", json.dumps(summary, indent=1, default=str) + "\n")


# -- export (a trained run as a standalone C project) -------------------------------------------
def add_export_parser(subparsers):
    p = subparsers.add_parser(
        "export", help="write the network of an `n2d2 train` run as a standalone C project",
        description="Rebuild the network that `n2d2 train` saved in RUN_DIR (summary.json, weights/), and write "
                    "a standalone C project (make; make run) with the run's Test stimuli.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="output folder of `n2d2 train`")
    p.add_argument("--format", default="c", choices=("c", "onnx"),
                   help="c: C project (float32, or integer with --nb-bits); onnx: ONNX model (float32, or QDQ with "
                        "--nb-bits 8 or 4)")
    p.add_argument("--nb-bits", type=int, default=-32, metavar="N",
                   help="-32: float32 (default); 8, 4, ...: post-training quantization to N-bit integers "
                        "(needs --calibration)")
    p.add_argument("--calibration", type=int, default=0, metavar="N",
                   help="calibration stimuli of the Validation partition (Test if empty) for --nb-bits > 0 "
                        "(-1: all)")
    p.add_argument("--act-scaling-mode", default=None,
                   choices=("FLOAT_MULT", "FIXED_MULT16", "FIXED_MULT32", "SINGLE_SHIFT", "DOUBLE_SHIFT"),
                   help="requantization of the integer export (default: SINGLE_SHIFT for c, N2D2's C export "
                        "default; FLOAT_MULT for onnx, QuantizeLinear's own)")
    p.add_argument("--act-clipping-mode", default="MSE", choices=("NONE", "MSE", "KL_DIVERGENCE"),
                   help="activation clipping thresholds from the calibration histograms (default: MSE)")
    p.add_argument("--per-output", action="store_true", help="weights scaled per output channel (N2D2's "
                   "act_rescale_per_output)")
    p.add_argument("--output", default=None, metavar="DIR",
                   help="project folder (default: RUN_DIR/export_C_float32, RUN_DIR/export_C_int<N>; "
                        "RUN_DIR/export_ONNX_int<N>.onnx with --format onnx)")
    p.add_argument("--nb-stimuli", type=int, default=-1, metavar="N",
                   help="Test stimuli written to stimuli/ (-1: all, as N2D2's export_nb_stimuli_max; 0: none)")
    p.add_argument("--data-path", default=None, help="the data set's folder (default: the one the run used)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing project folder")
    p.set_defaults(func=export_command)
    return p


def _read_run(run_dir: str) -> dict:
    """The `summary.json` of a `n2d2 train` run folder, checked for what export needs."""
    path = os.path.join(run_dir, "summary.json")
    try:
        with open(path) as f:
            summary = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{run_dir}: no summary.json (not an `n2d2 train` output folder, or the run did not "
                        "finish)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read it ({e})") from None
    arguments = summary.get("arguments") if isinstance(summary, dict) else None
    if not isinstance(arguments, dict) or not all(isinstance(arguments.get(k), str) for k in ("model", "database")):
        raise UserError(f"{path}: no model and database in 'arguments'")
    if not os.path.isdir(os.path.join(run_dir, "weights")):
        raise UserError(f"{run_dir}: no weights/ folder")
    return summary


def load_run(run_dir: str, data_path=None):
    """(DeepNetCell with the run's weights, its Test provider at batch 1, model spec, database spec)
    of an `n2d2 train` output folder: the model rebuilt from summary.json, weights/ imported."""
    run_dir = os.path.abspath(os.path.expanduser(run_dir))
    summary = _read_run(run_dir)
    arguments = summary["arguments"]
    db_spec = training.check_database(arguments["database"])
    model_spec = training.check_model(arguments["model"], db_spec.name)
    data_path = training.find_data(db_spec, data_path or summary.get("data_path"))
    database = training.load_database(db_spec, data_path, float(arguments.get("validation") or 0.0))
    provider = training.make_provider(database, db_spec, model_spec.input_size, 1)
    provider.set_partition("Test")
    learn = (summary.get("partitions") or {}).get("Learn") or database.get_nb_stimuli("Learn")
    model = model_spec.build(db_spec.nb_classes, int(learn))
    network = Sequence([model, Softmax(with_loss=True, name="softmax")], name=model.get_name())
    dn = network.to_deepnet_cell(provider)
    dn.test()
    with contextlib.redirect_stdout(io.StringIO()):
        dn.import_free_parameters(os.path.join(run_dir, "weights"))
    return dn, provider, model_spec, db_spec


def export_command(args) -> int:
    """`n2d2 export`: the run's model rebuilt from summary.json, its weights/ imported, export_c
    (or export_onnx with --format onnx)."""
    run_dir = os.path.abspath(os.path.expanduser(args.run_dir))
    _read_run(run_dir)
    integer = args.nb_bits > 0
    onnx_format = args.format == "onnx"
    if integer and args.calibration == 0:
        raise UserError(f"--nb-bits {args.nb_bits}: an integer export needs calibration stimuli: pass --calibration N "
                        "(N > 0, or -1 for the whole partition)")
    if args.nb_bits not in (-32,) and not 2 <= args.nb_bits <= 16:
        raise UserError(f"--nb-bits {args.nb_bits}: expected -32 (float32) or an integer width 2..16")
    if onnx_format and args.nb_bits not in (-32, 4, 8):
        raise UserError(f"--format onnx --nb-bits {args.nb_bits}: expected -32 (float32), 8 or 4 (QDQ)")
    if args.calibration < -1:
        raise UserError(f"--calibration {args.calibration}: expected -1 (all), 0 or a positive count")
    scaling = args.act_scaling_mode or ("FLOAT_MULT" if onnx_format else "SINGLE_SHIFT")
    if scaling == "FLOAT_MULT" and not onnx_format:
        raise UserError("--act-scaling-mode FLOAT_MULT: the C export takes integer scaling modes only "
                        "(FIXED_MULT16/32, SINGLE_SHIFT, DOUBLE_SHIFT)")
    name = f"export_{'ONNX' if onnx_format else 'C'}_{'int' if integer else 'float'}{abs(args.nb_bits)}"
    output = os.path.abspath(os.path.expanduser(args.output)) if args.output else \
        os.path.join(run_dir, name + (".onnx" if onnx_format else ""))
    if os.path.lexists(output) and not args.overwrite:
        raise UserError(f"--output {output}: already exists (pass --overwrite to replace it)")
    _make_output_folder(os.path.dirname(output) or ".")

    try:
        dn, provider, model_spec, db_spec = load_run(run_dir, args.data_path)
        quant = dict(calibration=args.calibration, act_scaling_mode=scaling,
                     act_clipping_mode=args.act_clipping_mode, act_rescale_per_output=args.per_output) \
            if integer else {}
        if onnx_format:
            folder = export_onnx(dn, provider=provider, nb_bits=args.nb_bits, export_file_name=output,
                                 overwrite=args.overwrite, **quant)
        else:
            folder = export_c(dn, provider=provider, nb_bits=args.nb_bits, export_folder_name=output,
                              export_nb_stimuli_max=args.nb_stimuli, overwrite=args.overwrite, **quant)
    except (ExportError, n2d2.error_handler.WrongValue, ValueError, RuntimeError, OSError) as e:
        raise UserError(str(e).splitlines()[0]) from None
    kind = f"{args.nb_bits}-bit integer" if integer else "float32"
    if onnx_format:
        print(f"{kind} ONNX model{' (QDQ)' if integer else ''} of {model_spec.name} ({db_spec.name}) written to "
              f"{folder}")
        return 0
    print(f"{kind} C project of {model_spec.name} ({db_spec.name}) written to {folder}")
    print(f"Build and run it: make -C {folder} run")
    return 0


# -- entry point ----------------------------------------------------------------------------------
VERBS = [add_train_parser, add_run_parser, add_export_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="n2d2", description="n2d2: N2D2's Python API on numpy (and CuPy).")
    parser.add_argument("--version", action="version", version=f"n2d2 {n2d2.__version__}")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for add in VERBS:
        add(subparsers)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (argparse errors exit with 2 by SystemExit)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, FloatingPointError) as e:   # FloatingPointError: training diverged (names the cell)
        print(f"n2d2 {args.verb}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"n2d2 {args.verb}: interrupted", file=sys.stderr)
        return 130
