"""The INI runner: `n2d2 run MODEL.ini -learn N -log M -test`, like N2D2's executable.

- `-learn N` trains on N stimuli (N2D2 counts stimuli, not epochs), reading the Learn partition
  in shuffled passes; every `-log M` stimuli it logs the learning curve and, when the database
  has a Validation partition, validates and keeps the best weights (`weights_validation/`);
  the best weights are restored at the end;
- `-test` scores the Test partition and prints the success rate;
- logs and plots (the target's confusion matrices, success curves, statistics) go to an output
  folder (`-o`, default `<model name>.run/` in the current directory), printed at the start;
- `-export C|CPP|CPP_STM32|ONNX` with N2D2's export options (`-nbbits`, `-calib`, `-db-export`,
  `-act-*`, `-no-unsigned`, `-no-cle`, `-qat-sat`, `-export-parameters`: `run_export`) writes
  `export_<TYPE>_<int|float><bits>/` in the output folder, after learning and testing, with the
  weights of `-w DIR` (`-w /dev/null`: the initial ones), else the ones just learnt, else (as
  N2D2) `weights_validation/` (a database with a Validation partition) or `weights/` of the
  output folder.

The training loop is `DeepNetCell`'s (one pass over a partition at a time); this module only
splits the stimuli budget into log periods.
"""
import argparse
import os
import sys
import time
import warnings

import n2d2
from n2d2 import distributed
from n2d2.cells.deepnet_cell import VALID_METRICS, BestWeights
from n2d2.frontends.ini.builder import load_ini
from n2d2.frontends.ini.parser import IniError
from n2d2.frontends.ini.run_export import add_export_arguments, export_network, export_options

__all__ = ["run", "main", "build_parser", "add_arguments", "add_run_parser", "run_command"]


def _one_line_warnings():
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"Warning: {filename}:{lineno}: {message}", file=sys.stderr if file is None else file)

    warnings.showwarning = show


def run(model_path: str, learn: int = 0, log: int = 10000, test: bool = False, output: str = None,
        seed: int = None, weights: str = None, valid_metric: str = "Sensitivity", stop_valid: int = 0,
        backend: str = None, export: dict = None) -> dict:
    """Load the INI network `model_path`, train on `learn` stimuli (validating every `log`),
    optionally test, optionally export. `backend`: "numpy", "c", or None for DeepNetCell's
    choice. `weights`: a parameter folder to import first (`os.devnull`: keep the initial
    parameters). `export`: keyword arguments of `run_export.export_network` (`export_type`,
    `nb_bits`, `calibration`, ...), checked before anything is loaded.

    Returns {'output': folder, 'deepnet': DeepNetCell, 'validation': best validation score or
    None, 'test': test success or None, 'learned': stimuli learnt, 'export': the project folder
    or None}."""
    if not isinstance(learn, int) or isinstance(learn, bool) or learn < 0:
        raise n2d2.error_handler.WrongValue("learn", learn, ["a number of stimuli >= 0"])
    if not isinstance(log, int) or isinstance(log, bool) or log < 1:
        raise n2d2.error_handler.WrongValue("log", log, ["a number of stimuli >= 1"])
    if valid_metric not in VALID_METRICS:
        raise n2d2.error_handler.WrongValue("valid_metric", valid_metric, VALID_METRICS)
    if seed is not None:
        n2d2.global_variables.seed = seed
    model_path = os.path.abspath(model_path)
    if weights and weights != os.devnull:
        weights = os.path.abspath(weights)
    name = os.path.splitext(os.path.basename(model_path))[0]
    folder = os.path.abspath(output or f"{name}.run")
    if export is not None:
        export_network(None, folder=folder, check_only=True, **export)

    deepnet = load_ini(model_path, backend=backend)
    is_root = distributed.current().is_root   # under mpirun, rank 0 alone writes and prints
    if is_root:
        os.makedirs(folder, exist_ok=True)
        print(f"Output folder: {folder}")
    result = {"output": folder, "deepnet": deepnet, "validation": None, "test": None, "learned": 0, "export": None}
    cwd = os.getcwd()
    if is_root:
        os.chdir(folder)
    try:
        if weights == os.devnull:
            pass    # N2D2's `-w /dev/null`: no parameter file, the fillers' values
        elif weights:
            deepnet.import_free_parameters(weights)
        elif export is not None and learn == 0:
            _import_saved_weights(deepnet, folder)
        if learn > 0:
            result["learned"], result["validation"] = _learn(deepnet, learn, log, valid_metric, stop_valid)
        if test:
            result["test"] = _test(deepnet)
        if export is not None and is_root:
            result["export"] = _export(deepnet, folder, export)
    finally:
        os.chdir(cwd)
    return result


def _import_saved_weights(deepnet, folder):
    """N2D2's export without -w: the run's `weights_validation/` when the database has a Validation
    partition, else its `weights/`."""
    database = deepnet.get_provider().get_database()
    name = "weights_validation" if database.get_nb_stimuli("Validation") > 0 else "weights"
    path = os.path.join(folder, name)
    if not os.path.isdir(path):
        raise RuntimeError(f"-export: no {name}/ in {folder} to export (N2D2 exports the weights of a training run): "
                           "train first with -learn, or pass -w DIR (-w /dev/null exports the initial weights)")
    deepnet.import_free_parameters(path)


def _export(deepnet, folder, export):
    path = export_network(deepnet, folder=folder, **export)
    kind, bits = export["export_type"], export.get("nb_bits", 8)
    print(f"{kind} export ({f'{bits}-bit integer' if bits > 0 else f'float{-bits}'}) written to {path}")
    if kind in ("C", "CPP"):
        print(f"Build and run it: make -C {path} run")
    elif kind == "CPP_STM32":
        print(f"Build it: make -C {path} (arm-none-eabi-gcc), or make -C {path} emulator for this machine")
    return path


def _learn(deepnet, budget, log, valid_metric, stop_valid):
    """The learning loop; under an MPI launcher the passes are sharded as in `DeepNetCell.fit`
    (`n2d2.distributed`: each global batch split over the ranks, gradients all-reduced)."""
    world = distributed.current()
    deepnet._world = world
    try:
        return _learn_in(deepnet, budget, log, valid_metric, stop_valid, world)
    finally:
        deepnet._world = None


def _learn_in(deepnet, budget, log, valid_metric, stop_valid, world):
    provider, target = deepnet.get_provider(), deepnet.get_target()
    database = provider.get_database()
    nb_learn = database.get_nb_stimuli("Learn")
    if nb_learn == 0:
        raise RuntimeError("-learn: the database has no Learn stimulus")
    has_validation = database.get_nb_stimuli("Validation") > 0
    say = print if world.is_root else (lambda *a, **k: None)
    if world.is_root:
        deepnet.export_free_parameters("weights_init", verbose=False)
    if world.size > 1:
        deepnet._share_initial_state(world)
    say(f"Learning {budget} stimuli ({budget / nb_learn:.2f} epochs of {nb_learn}), log every {log}"
          + (", validation on " + str(database.get_nb_stimuli("Validation")) + " stimuli" if has_validation else ""))
    done, best = 0, BestWeights(deepnet, stop_valid, write=world.is_root)
    start = time.perf_counter()
    while done < budget:
        chunk = min(log, budget - done)
        period_done = 0
        while period_done < chunk:  # a period may span the end of a pass over Learn
            success, seen, _ = deepnet._run_epoch("Learn", True, nb_max=chunk - period_done,
                                                  desc=f"learn {done + period_done}/{budget}", check_finite=True)
            if seen == 0:
                break
            period_done += seen
        if period_done == 0:
            break
        done += period_done
        elapsed = time.perf_counter() - start
        say(f"Learn: {done} stimuli, success {100 * success:.2f}% (last pass), {done / max(elapsed, 1e-9):.0f} "
            f"stimuli/s")
        if world.is_root:
            target.log_success("Learn", partition="Learn")
        if not has_validation:
            continue
        deepnet._run_epoch("Validation", False, desc="validation", shuffle=False)
        score = target.get_average_score(valid_metric, partition="Validation")
        target.new_validation_point(score=score)
        improved = best.improves(score)
        say(f"Validation {valid_metric}: {100 * score:.2f}%"
            + (" (best)" if improved else f" (best {100 * best.score:.2f}%)"))
        if world.is_root:
            target.log_success("Validation", partition="Validation")
        stop = best.record(score)
        if improved and world.is_root:
            target.log_confusion_matrix("Validation", partition="Validation")
        if stop:
            break
    if best.restore():
        say(f"Best validation {valid_metric}: {100 * best.score:.2f}% (weights restored from weights_validation/)")
    elif world.is_root:
        deepnet.export_free_parameters("weights", verbose=False)
    return done, best.score


def _test(deepnet):
    """Score the Test partition; the rate is exact (from the confusion matrix), where the
    average of per-batch rates would weigh a last partial batch like a full one."""
    import numpy as np

    target = deepnet.get_target()
    success = deepnet.run_test()
    if not distributed.is_root():
        return success
    target.log_stats("stats")
    matrix = target.get_confusion_matrix("Test")
    total = int(matrix.sum())
    if total:
        success = float(np.trace(matrix)) / total
    print(f"Test success rate: {100 * success:.2f}% ({total} stimuli)")
    return success


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The `run` verb's options (N2D2's spelling: single-dash long options; `--learn` works too)."""
    parser.add_argument("model", help="the INI file (e.g. LeNet.ini)")
    parser.add_argument("-learn", "--learn", type=int, default=0, metavar="N",
                        help="train on N stimuli (N2D2 counts stimuli, not epochs; 0: no training)")
    parser.add_argument("-log", "--log", type=int, default=10000, metavar="M",
                        help="log (and validate, when there is a Validation partition) every M stimuli "
                             "(default: 10000)")
    parser.add_argument("-test", "--test", action="store_true",
                        help="test on the Test partition and print the success rate")
    parser.add_argument("-seed", "--seed", type=int, default=None, help="random seed (fillers, dropout, reading order)")
    parser.add_argument("-w", dest="weights", default=None, metavar="DIR",
                        help="import the parameters of DIR before learning/testing/exporting (/dev/null: keep the "
                             "initial ones)")
    parser.add_argument("-valid-metric", "--valid-metric", dest="valid_metric", default="Sensitivity",
                        help="validation metric (Sensitivity, Accuracy, F1Score, ...; default: Sensitivity)")
    parser.add_argument("-stop-valid", "--stop-valid", dest="stop_valid", type=int, default=0, metavar="K",
                        help="stop after K validations without improvement (0: never)")
    parser.add_argument("-o", "--output", default=None, metavar="DIR",
                        help="output folder (default: <model name>.run in the current directory)")
    parser.add_argument("-backend", "--backend", default="auto", choices=("auto", "numpy", "c"),
                        help="how the compiled network runs: numpy executor, generated C, or auto (DeepNetCell's "
                             "choice; default)")
    add_export_arguments(parser)
    return parser


def build_parser(prog: str = "n2d2 run") -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(
        prog=prog, description="Train and/or test the network of an N2D2 INI file, as N2D2's executable does."))


def add_run_parser(subparsers):
    """Register the `run` verb on the `n2d2` command line (`n2d2.cli`)."""
    parser = subparsers.add_parser(
        "run", help="train/test the network of an N2D2 INI file (-learn N -log M -test)",
        description="Train and/or test the network of an N2D2 INI file, as N2D2's executable does: "
                    "n2d2 run LeNet.ini -learn 480000 -log 48000 -test")
    add_arguments(parser)
    parser.set_defaults(func=run_command)
    return parser


def run_command(args) -> int:
    """Run parsed `run` arguments; errors of the user are printed in one line (exit status 1)."""
    _one_line_warnings()
    try:
        run(args.model, learn=args.learn, log=args.log, test=args.test, output=args.output, seed=args.seed,
            weights=args.weights, valid_metric=args.valid_metric, stop_valid=args.stop_valid,
            backend=None if args.backend == "auto" else args.backend, export=export_options(args))
    except (IniError, ValueError, RuntimeError, OSError, FloatingPointError) as e:
        # FloatingPointError: training diverged (NonFiniteError names the cell)
        print(f"n2d2 run: error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    """`python -m n2d2.frontends.ini.runner MODEL.ini ...`: returns the exit status."""
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
