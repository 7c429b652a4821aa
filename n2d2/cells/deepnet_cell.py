"""`DeepNetCell`: a whole network compiled from its IR graph, usable as a cell.

It is built by tracing (`Block.to_deepnet_cell(provider)`) or by a frontend (ONNX/INI import).
The forward graph is kept as traced; from it the cell derives, per batch size, an inference
program (passes of `n2d2.ir.passes` that keep parameters live) and a training program
(`n2d2.ir.autodiff`), and runs them on the numpy executor. Parameters are the cells' own
arrays, so `dn["conv1"].get_weights()` always shows what the program uses.
"""
import time

import numpy as np

from n2d2 import checkpoint as checkpoints
from n2d2 import distributed, stats
from n2d2.backend import array_module, to_host
from n2d2.cells.cell import Iterable
from n2d2.cells.nn.base import deferred_values
from n2d2.codegen import backends
from n2d2.codegen.numpy_exec import Session
from n2d2.codegen.programs import InferenceProgram, TrainingProgram, program_source, select_backend
from n2d2.deepnet import CallRecord
from n2d2.distributed import LocalWorld
from n2d2.error_handler import NonFiniteError, WrongInputType, WrongValue
from n2d2.frontends.onnx_export import export_onnx
from n2d2.ir import ops as op_registry
from n2d2.ir import planner
from n2d2.ir.autodiff import build_training_graph
from n2d2.ir.passes.manager import PIPELINES, PassManager
from n2d2.ir.passes.shape_inference import rebatch  # noqa: F401  (DeepNetCell's callers import it from here)
from n2d2.ir.trace import trace
from n2d2.ir.types import GraphError
from n2d2.names import file_stem
from n2d2.provider.base import Provider, TensorPlaceholder
from n2d2.quantization.ptq import read_stimuli
from n2d2.quantization.qat import fuse_qat
from n2d2.settings import global_variables
from n2d2.target import Score
from n2d2.tensor import Tensor
from n2d2.utils import write_inside

VALID_METRICS = ("Sensitivity", "Specificity", "Precision", "NegativePredictiveValue", "MissRate", "FallOut",
                 "FalseDiscoveryRate", "FalseOmissionRate", "Accuracy", "F1Score", "Informedness", "Markedness")



def training_graph(graph, backend=None):
    """The training graph (`n2d2.ir.autodiff.TrainingGraph`) that `DeepNetCell.fit` runs for the
    traced `graph`: the live training passes first (`PIPELINES["live_training"]`, then the
    `training_passes` of `backend` when one is named), then autodiff."""
    extra = backends.get(backend).training_passes if backend is not None else ()
    pipeline = PIPELINES["live_training"] + tuple(extra)
    return build_training_graph(PassManager(pipeline=pipeline, mode="training", log=None).run(graph))


class BestWeights:
    """Early stopping on validation scores, shared by `DeepNetCell.fit` and the INI runner.

    The weights of the best score so far are kept in memory and written to
    `weights_validation/`; `stop_valid` validations in a row without improvement stop the
    training (0: never).
    """

    def __init__(self, deepnet, stop_valid: int, write: bool = True):
        self.score = None          # the best score so far
        self._deepnet = deepnet
        self._write = write        # False on the data-parallel ranks that write nothing
        self._stop_valid = stop_valid
        self._params = None
        self._stale = 0

    def improves(self, score) -> bool:
        return self.score is None or score > self.score

    def record(self, score) -> bool:
        """Keep the weights when `score` is the best so far; True when training should stop.
        Weights holding a NaN or an infinity are never kept (nor saved), whatever their score."""
        params = self._deepnet._snapshot() if self.improves(score) else None
        if params is not None and not all(np.isfinite(a).all() for a in params.values()):
            print("Validation: the weights are not finite; not kept as the best")
            params = None
        if params is not None:
            self.score, self._stale = score, 0
            self._params = params
            if self._write:
                self._deepnet.export_free_parameters("weights_validation", verbose=False)
            return False
        self._stale += 1
        if self._stop_valid and self._stale >= self._stop_valid:
            print(f"No improvement for {self._stale} validations: stopping")
            return True
        return False

    def restore(self) -> bool:
        """Put the best weights back into the network; False when no score was recorded."""
        if self._params is None:
            return False
        self._deepnet._restore(self._params)
        return True


class DeepNetCell(Iterable):
    """A compiled network; indexable by position or cell name like a Sequence."""

    def __init__(self, trace_result, provider=None, target=None, name=None, backend=None):
        cells = [trace_result.cell_of[n] for n in trace_result.graph.topological_order()
                 if n in trace_result.cell_of]
        unique = []
        for c in cells:
            if c not in unique:
                unique.append(c)
        super().__init__(unique, name)
        self._graph = trace_result.graph
        self._cell_of = dict(trace_result.cell_of)
        self._provider = provider
        self._target = target
        self._inference = False
        self._programs = {}
        self._last_program = None
        self._output = None
        self._input_cells = []
        self._deepnet = None
        self._batch_size = 1
        self._world = None     # the data-parallel world of the running fit (n2d2.distributed)
        self._synced = False   # True during a fit pass: the cells were synchronised at its start
        self._sync_batchnorm = False   # fit(sync_batchnorm=...): BatchNorm statistics over every rank
        self._bucket_bytes = None      # fit(bucket_bytes=...): gradient bucket size (None: the default)

        self._backend = select_backend(backend)

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_block(cls, block, provider, target=None, name=None, backend=None):
        """Trace `block` on a zero batch of `provider.shape()` (all cells in test mode; their
        outputs deferred: computed only if the block reads one, not a whole numpy forward)."""
        modes = {id(c): c._inference for c in block.get_cells().values()}
        block.test()
        try:
            x = Tensor(list(provider.shape()))
            with deferred_values():
                y = block(x)
        finally:
            for c in block.get_cells().values():
                c._inference = modes[id(c)]
        if not isinstance(y, Tensor):
            raise RuntimeError(f"{block.get_type()} '{block.get_name()}': __call__ must return a Tensor to become "
                               f"a DeepNetCell, got {type(y).__name__}")
        result = trace(y.get_deepnet(), name=block.get_name(), input_names=["input"])
        if target is None:
            target = Score(provider, name="Target")
        return cls(result, provider, target, name, backend)

    @classmethod
    def load_from_INI(cls, path, backend=None):
        """Build the network of an N2D2 INI file, with its database, provider and target; see
        `n2d2.frontends.ini.builder`."""
        from n2d2.frontends.ini.builder import load_ini  # the frontends build DeepNetCells: they sit above

        return load_ini(path, backend=backend, cls=cls)

    @classmethod
    def load_from_ONNX(cls, provider, model_path, ini_file=None, ignore_cells=None, ignore_input_size=False,
                       backend=None, generic_ops=True):
        """Import an ONNX model (cells named after the ONNX node outputs), fed by `provider`;
        By default (`generic_ops=True`) nodes no N2D2 cell represents run as `OnnxNode` cells (ONNX
        semantics, reference kernels); `generic_ops=False` refuses them instead (what the
        standalone C export needs). See `n2d2.frontends.onnx_import.load_from_onnx`."""
        from n2d2.frontends.onnx_import import load_from_onnx  # the frontends build DeepNetCells: they sit above

        return load_from_onnx(provider, model_path, ini_file=ini_file, ignore_cells=ignore_cells,
                              ignore_input_size=ignore_input_size, backend=backend, cls=cls,
                              generic_ops=generic_ops)

    def export_onnx(self, path, opset=17):
        """Write the forward graph as an ONNX model (atomically); see `n2d2.frontends.onnx_export`."""
        return export_onnx(self, path, opset=opset)

    # -- accessors --------------------------------------------------------------------------------
    def get_graph(self):
        """The forward IR graph (as traced or imported)."""
        return self._graph

    def get_provider(self):
        return self._provider

    def set_provider(self, provider):
        self._provider = provider

    def get_target(self):
        return self._target

    def get_deepnet(self):
        return self._deepnet

    def get_embedded_deepnet(self):
        return self._graph

    def get_input_cells(self):
        return [self._cell_of[d].get_name() for n in self._graph.inputs for d, _, _ in self._graph.consumers(n)
                if d in self._cell_of]

    def get_output_cells(self):
        return [self._cell_of[n].get_name() for n, _ in self._graph.outputs if n in self._cell_of]

    def get_outputs(self):
        return self._output if self._output is not None else Tensor([0])

    def get_name(self):
        return self._name

    def learn(self):
        self._inference = False
        super().learn()
        return self

    def test(self):
        self._inference = True
        super().test()
        return self

    def _invalidate(self):
        self._programs = {}

    # -- programs ---------------------------------------------------------------------------------
    def get_backend(self) -> str:
        return self._backend

    def set_backend(self, backend: str):
        """Run on `backend` ("numpy" or "c") from now on."""
        self._backend = select_backend(backend)
        self._invalidate()

    def _graph_for(self, kind: str, batch_size: int, synchronised: bool = False, backend: str = None):
        """The IR graph of `kind` ("inference" or "training") at `batch_size` (cached); with
        `synchronised`, the training BatchNorm nodes normalise with the statistics of every rank
        (`n2d2.ops.batchnorm`); with `backend`, the training graph also has that backend's
        `training_passes` (what `_program` runs; without, the graph every backend can run)."""
        key = (kind + ".graph", batch_size, synchronised, backend)
        if key not in self._programs:
            graph = self._graph if self._batch_of(self._graph) == batch_size else rebatch(self._graph, batch_size)
            if kind == "inference":
                self._programs[key] = self._optimize(graph)
            else:
                if synchronised:
                    graph = graph.copy()
                    for node in graph.nodes():
                        if graph.op(node) == "BatchNorm":
                            graph.attrs(node)["synchronised"] = True
                self._programs[key] = training_graph(graph, backend)
        return self._programs[key]

    def _program(self, kind: str, batch_size: int):
        """The runnable program of `kind` at `batch_size` on this cell's backend (cached). During
        a data-parallel fit the training program reduces its gradients over the world's ranks."""
        world = self._world if kind == "training" and self._world is not None and self._world.size > 1 else None
        key = (kind, batch_size) if world is None else (kind, batch_size, id(world), self._sync_batchnorm,
                                                         self._bucket_bytes)
        if key not in self._programs:
            if kind == "inference":
                self._programs[key] = InferenceProgram(self._graph_for(kind, batch_size), self._backend)
            else:
                graph = self._graph_for(kind, batch_size, world is not None and self._sync_batchnorm, self._backend)
                self._programs[key] = TrainingProgram(graph, self._backend, world, self._bucket_bytes)
        return self._programs[key]

    def dump_sources(self, directory: str, batch_size: int = None) -> list:
        """Write the generated sources of the inference and training programs (C or CUDA
        backends) to `directory`; returns the paths written. Each kernel's comment names the
        IR node it comes from."""
        n = batch_size or self._batch_of(self._graph)
        extension = backends.get(self._backend).source_extension
        if extension is None:
            raise RuntimeError(f"DeepNetCell '{self._name}': the {self._backend} backend generates no source")
        paths = []
        for kind in ("inference", "training"):
            name = f"{file_stem(self._name)}_{kind}_b{n}{extension}"
            path = write_inside(directory, name, program_source(self._program(kind, n)))
            paths.append(path)
        return paths

    @staticmethod
    def _batch_of(graph):
        return graph.output_types(graph.inputs[0])[0].shape[0]

    @staticmethod
    def _optimize(graph):
        return PassManager(pipeline=PIPELINES["live_inference"], mode="inference", log=None).run(graph)

    def memory_report(self, batch_size=None, verbose=True) -> dict:
        """Planned arena bytes vs naive (one buffer per tensor) and the lower bound, for
        inference and training at `batch_size` (default: the traced one)."""
        n = batch_size or self._batch_of(self._graph)
        report = {}
        for kind in ("inference", "training"):
            program = self._graph_for(kind, n, backend=self._backend if kind == "training" else None)
            graph = program if kind == "inference" else program.graph
            plan = planner.plan(graph)
            planner.validate(graph, plan)
            report[kind] = planner.memory_report(graph, plan)
        if verbose:
            for kind, r in report.items():
                print(f"{self._name} {kind}: " + planner.format_memory_report(r).replace("\n", "\n  "))
        return report

    # -- calling ----------------------------------------------------------------------------------
    def __call__(self, x):
        if isinstance(x, Tensor) and x.cell is None and x._data.dtype.kind == "f":
            TensorPlaceholder(x)   # a raw float Tensor (the Cells chapter's `model(Tensor(dims))`)
        if not isinstance(x, Tensor) or x.cell is None or not isinstance(x.cell, Provider):
            raise ValueError(f"DeepNetCell '{self._name}': the input must be a raw float Tensor or one produced by a "
                             "provider (read_batch / read_random_batch), not the output of another cell")
        expected = tuple(self._graph.output_types(self._graph.inputs[0])[0].shape[1:])
        if tuple(x.shape()[1:]) != expected:
            raise ValueError(f"DeepNetCell '{self._name}': input shape {x.shape()} does not match the network's "
                             f"input {[x.shape()[0]] + list(expected)}")
        if not self._inference and not self._synced:
            self._sync_cells()
        deepnet = x.get_deepnet()
        data = x._data if x._data.dtype == np.float32 else x._data.astype(np.float32)
        n = int(data.shape[0])
        if n == 0:
            raise ValueError(f"DeepNetCell '{self._name}': input of shape {list(data.shape)} has a batch of 0; "
                             "expected at least 1")
        self._last_input = data
        if self._inference:
            program = self._program("inference", n)
            outputs = program.run({program.graph.inputs[0]: data})
            ctx = None
        else:
            program = self._program("training", n)
            outputs = program.forward({program.tg.graph.inputs[0]: data})
            ctx = program
        out = Tensor._wrap(outputs[0], cell=self)
        deepnet.add(CallRecord(self, [x], out, ctx, [False]))
        self._deepnet = deepnet
        self._output = out
        self._input_cells = [x.cell.get_name()]
        self._batch_size = n
        return out

    def _sync_cells(self):
        """Bring the graph up to date with its cells: solvers set after tracing (set_solver,
        `cell.solver = ...`) and back_propagate switches; the latter rebuilds the programs."""
        changed = False
        graph_params = self._graph.params
        for node, cell in self._cell_of.items():
            params, weight_quantizer = cell._ir_params()   # (not the whole IR node: its attributes cost more)
            name = cell.get_name()
            for role, (array, solver) in params.items():
                param = graph_params.get(f"{name}.{role}")
                if param is None:
                    continue
                if param.array is not array:
                    raise RuntimeError(f"DeepNetCell '{self._name}': the {role} array of cell '{name}' was "
                                       "replaced after tracing; write into it in place instead")
                param.solver = solver
            attrs = self._graph.attrs(node)
            changed = self._sync_quantizers(node, cell, weight_quantizer, attrs) or changed
            propagate = cell._config.get("back_propagate", True)
            if attrs.get("back_propagate", True) != propagate:
                attrs["back_propagate"] = propagate
                changed = True
        if changed:
            self._invalidate()

    def _sync_quantizers(self, node, cell, weight_quantizer, attrs) -> bool:
        """Carry quantizer settings changed after tracing (`set_quantization`, `set_range`, ...) into
        the graph (`weight_quantizer`: the cell's IR attribute now, `attrs`: its node's); a quantizer
        attached or removed after tracing is refused (trace again)."""
        graph = self._graph
        fq = [n for n in graph.nx.successors(node) if graph.op(n) == "FakeQuantize"]
        act_q = cell.activation_quantizer() if hasattr(cell, "activation_quantizer") else None
        if (weight_quantizer is None) != (attrs.get("weight_quantizer") is None) or \
                (act_q is None) != (not fq):
            raise RuntimeError(f"DeepNetCell '{self._name}': a quantizer of cell '{cell.get_name()}' was attached or "
                               "removed after tracing; attach quantizers before building the DeepNetCell")
        changed = False
        if weight_quantizer != attrs.get("weight_quantizer"):
            attrs["weight_quantizer"] = weight_quantizer
            changed = True
        if act_q is not None:
            param = graph.params[graph.node(fq[0]).params["quant_param"]]
            scalar, solver = act_q.learnable()
            if param.array is not scalar:
                raise RuntimeError(f"DeepNetCell '{self._name}': the activation quantizer of cell "
                                   f"'{cell.get_name()}' was replaced after tracing; trace again")
            param.solver = solver   # `quantizer.solver = ...` after tracing
            if graph.attrs(fq[0])["quantizer"] != act_q.ir_spec():
                graph.attrs(fq[0])["quantizer"] = act_q.ir_spec()
                changed = True
        return changed

    def _zero_param_grads(self):
        pass

    def _backward_record(self, record, dy):
        program = record.ctx
        if program is None:
            raise RuntimeError(f"DeepNetCell '{self._name}': back-propagation through a test-mode call; "
                               "call learn() before the forward pass")
        # the training graph's output may carry another name than the traced one (a fused
        # Activation hands its place to its producer): seed it by position
        program.backward({program.tg.graph.outputs[0]: dy})
        self._last_program = program
        return [None]

    def update(self):
        """Apply every parameter's solver with the gradients of the last back-propagation."""
        program = self._last_program
        if program is None:
            return
        program.update(getattr(self, "_world", None))
        self._last_program = None
        self._invalidate_inference()

    def _invalidate_inference(self):
        """Inference programs keep live parameters; only passes that copy them need a rebuild."""

    # -- training loops -----------------------------------------------------------------------------
    def _progress(self, total, desc):
        try:
            from tqdm import tqdm

            return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, leave=True)
        except ImportError:
            return None

    def _first_non_finite(self, data):
        """Name of the first cell (execution order) whose output on `data` is not finite: the
        forward re-run on the numpy reference, only after a non-finite loss (the compiled
        programs reuse activation buffers). "input" when the stimuli are not finite."""
        if not np.isfinite(to_host(data)).all():
            return "input"
        tg = self._program("training", int(data.shape[0])).tg
        session = Session(tg.graph, training=True, order=tg.forward_nodes)
        session.feed({tg.graph.inputs[0]: data})
        for node in tg.forward_nodes:
            session.run_nodes([node])
            if not all(v is None or np.isfinite(to_host(v)).all() for v in session.values[node]):
                cell = self._cell_of.get(node)
                return cell.get_name() if cell is not None else node
        return None

    def _check_finite_loss(self, loss: float, epoch_desc: str):
        """One test per step; on a NaN / infinite loss, stop naming the cell that produced it."""
        if np.isfinite(loss):
            return
        cell = self._first_non_finite(self._last_input)
        where = ("the input stimuli hold NaN or infinite values" if cell == "input" else
                 f"the first cell whose output is not finite is '{cell}'" if cell is not None else
                 "every cell output is finite on the reference backend (the loss itself overflowed)")
        raise NonFiniteError(f"DeepNetCell '{self._name}': the training loss is {loss} ({epoch_desc}): {where}. "
                             "Lower the learning rate or check the data; fit(check_finite=False) trains on "
                             "regardless.", cell=cell)

    def _run_epoch(self, partition: str, learn: bool, nb_max: int = -1, desc=None, shuffle=True,
                   check_finite=False):
        """One pass over `partition`; returns (average success, images, seconds)."""
        provider, target = self._provider, self._target
        provider.set_partition(partition)
        self.learn() if learn else self.test()
        target.clear_success()
        target.clear_score()  # the confusion matrix of this pass only (valid_metric reads it)
        nb = provider.get_database().get_nb_stimuli(partition)
        if nb_max >= 0:
            nb = min(nb, nb_max)
        world = self._world_or_local()
        bar = self._progress(nb, desc or partition) if world.is_root else None
        if bar is not None and bar.disable:    # TQDM_DISABLE: no figures to format each batch
            bar.close()
            bar = None
        shown = -1.0    # when the postfix was last set: at most every tqdm refresh interval
        shard = (world.rank, world.size) if world.size > 1 else None
        seen, start = 0, time.perf_counter()
        if learn:   # nothing but the loop below runs until the pass ends: synchronise once, not per batch
            self._sync_cells()
        self._synced = learn
        try:
            for x in provider.prefetch_batches(shuffle=shuffle and learn, shard=shard):
                loss = target(self(x))
                if check_finite:
                    self._check_finite_loss(target.loss(), desc or partition)
                if learn:
                    loss.back_propagate()
                    loss.update()
                step = min(provider.get_batch_size() * world.size, nb - seen)
                seen += step
                if bar is not None:
                    now = time.perf_counter()
                    if now - shown >= bar.mininterval or seen >= nb:
                        shown = now
                        bar.set_postfix(loss=f"{target.loss():.4f}",
                                        success=f"{100 * target.get_success_rate():.2f}%",
                                        rate=f"{seen / max(now - start, 1e-9):.0f} img/s", refresh=False)
                    bar.update(step)
                if seen >= nb:
                    break
        finally:
            self._synced = False
            if bar is not None:
                bar.close()
        if world.size > 1:
            self._reduce_pass(world, partition, learn)
        return target.get_success_rate(), seen, time.perf_counter() - start

    def _world_or_local(self):
        return getattr(self, "_world", None) or LocalWorld()

    def _reduce_pass(self, world, partition, learn):
        """After a sharded pass: the confusion matrix summed over the ranks (scores of the whole
        partition); after learning, the parameters no solver updates (BatchNorm running
        statistics, per rank during the epoch) averaged so that every rank holds the same."""
        score = self._target._score(partition)
        score.confusion = world.sum_objects(score.confusion, what=f"{partition} confusion-matrix reduction")
        if not learn:
            return
        stats = [p.array for p in self._graph.params.values() if not p.trainable]
        if stats:
            flat = np.concatenate([to_host(a).reshape(-1).astype(np.float64) for a in stats])
            world.allreduce_sum(flat, what="running-statistics all-reduce")
            flat /= world.size
            offset = 0
            for a in stats:
                a[...] = array_module(a).asarray(flat[offset:offset + a.size].reshape(a.shape).astype(a.dtype))
                offset += a.size

    def _share_initial_state(self, world):
        """Check that the ranks train the same network on the same data with the same batch,
        then put rank 0's parameters and generator state on every rank (they differ with seed 0)."""
        database = self._provider.get_database()
        world.check_same({
            "batch size": self._provider.get_batch_size(),
            "partition sizes": [database.get_nb_stimuli(p) for p in ("Learn", "Validation", "Test")],
            "parameters": sorted((name, list(p.array.shape)) for name, p in self._graph.params.items()),
            "backend": self._backend,
            "synchronised BatchNorm": self._sync_batchnorm,   # the collectives of a step must match
            "gradient bucket bytes": self._bucket_bytes}, what=f"training of DeepNetCell '{self._name}'")

        for p in self._graph.params.values():
            host = np.ascontiguousarray(to_host(p.array))
            world.broadcast(host, what="initial parameters broadcast")
            p.array[...] = array_module(p.array).asarray(host)
        global_variables.rng.bit_generator.state = world.broadcast_object(global_variables.rng.bit_generator.state,
                                                                          what="generator state broadcast")

    def fit(self, learn_epoch: int, log_epoch=1000, avg_window=10000, bench=False, ban_multi_device=False,
            valid_metric="Sensitivity", stop_valid=0, log_kernels=False, check_finite=True, resume=None,
            checkpoint="checkpoint.npz", sync_batchnorm=False, bucket_bytes=None):
        """Train `learn_epoch` epochs on Learn (shuffled), validating each epoch when the
        database has a Validation partition; the best weights (by `valid_metric`) are saved to
        `weights_validation/` and restored at the end, the initial ones to `weights_init/`.

        Solvers and `back_propagate` switches set on the cells are read at the start of each
        pass, not at each batch.

        `check_finite` (default True): a NaN or infinite training loss stops with
        `n2d2.error_handler.NonFiniteError` naming the first cell whose output is not finite
        (one test of the loss per step). Non-finite weights are never kept as the best.

        After each epoch the whole training state goes to `checkpoint` (None: not saved);
        `resume` (a checkpoint or a folder holding `checkpoint.npz`) continues a run from its
        last saved epoch to the same result as a run never interrupted. Under an MPI launcher
        with several ranks the epoch is sharded over them (`n2d2.distributed`); rank 0 alone
        writes files; `ban_multi_device` trains in this process alone. There, `sync_batchnorm`
        normalises each BatchNorm with the statistics of the global batch (all ranks; default:
        each rank its own batch), and the gradients are all-reduced in buckets of `bucket_bytes`
        (default `n2d2.distributed.DEFAULT_BUCKET_BYTES`; 0: one bucket) started during the
        backward pass; with the cuda backend through NCCL when CuPy has it (`N2D2_COLLECTIVES`)."""
        if not isinstance(learn_epoch, int) or isinstance(learn_epoch, bool):
            raise WrongInputType("learn_epoch", type(learn_epoch), ["int"])
        if not isinstance(sync_batchnorm, bool):
            raise WrongInputType("sync_batchnorm", type(sync_batchnorm), ["bool"])
        if bucket_bytes is not None and (isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int)
                                         or bucket_bytes < 0):
            raise WrongValue("bucket_bytes", bucket_bytes, ["None", "a number of bytes >= 0"])
        if valid_metric not in VALID_METRICS:
            raise WrongValue("valid_metric", valid_metric, VALID_METRICS)
        if self._provider is None or self._target is None:
            raise RuntimeError(f"DeepNetCell '{self._name}': fit() needs a provider and a target")
        world = distributed.for_backend(distributed.current(ban_multi_device), self._backend)
        database = self._provider.get_database()
        has_validation = database.get_nb_stimuli("Validation") > 0
        best = BestWeights(self, stop_valid, write=world.is_root)
        first_epoch = 0
        if resume is not None:
            meta = checkpoints.restore(resume, self, best)
            first_epoch = meta["epoch"]
            if hasattr(self._target, "restore_checkpoint_state"):
                self._target.restore_checkpoint_state(meta.get("extra") or {})
            if world.is_root:
                print(f"Resuming from {checkpoints.resolve(resume)} after epoch {first_epoch}")
        elif world.is_root:
            self.export_free_parameters("weights_init", verbose=False)
        self._world = world
        self._sync_batchnorm, self._bucket_bytes = sync_batchnorm, bucket_bytes
        try:
            if world.size > 1:
                self._share_initial_state(world)
            for epoch in range(first_epoch, learn_epoch):
                stop = self._fit_epoch(epoch, learn_epoch, has_validation, valid_metric, best, world.is_root,
                                       check_finite)
                if checkpoint is not None and world.is_root:
                    extra = self._target.checkpoint_state() if hasattr(self._target, "checkpoint_state") else None
                    checkpoints.save(checkpoint, self, epoch + 1, best, extra)
                if stop:
                    break
        finally:
            self._world = None
            self._sync_batchnorm, self._bucket_bytes = False, None
        best.restore()
        self._provider.set_partition("Learn")
        return best.score

    def _fit_epoch(self, epoch, learn_epoch, has_validation, valid_metric, best, verbose,
                   check_finite=True) -> bool:
        """One epoch of `fit`: learn, then validate; True when early stopping says stop."""
        self._run_epoch("Learn", True, desc=f"epoch {epoch + 1}/{learn_epoch}", check_finite=check_finite)
        if not has_validation:
            return False
        self._run_epoch("Validation", False, desc="validation")
        score = self._target.get_average_score(valid_metric)
        self._target.new_validation_point(score=score)
        if verbose:
            print(f"Validation {valid_metric}: {100 * score:.2f}%" + (" (best)" if best.improves(score) else ""))
        return best.record(score)

    def run_test(self, log=1000, report=100, nb_test=-1, test_index=-1, test_id=-1, qat_sat=False,
                 log_kernels=False, wt_round_mode="NONE", b_round_mode="NONE", c_round_mode="NONE",
                 act_scaling_mode="FLOAT_MULT", log_JSON=False, log_outputs=0):
        """Score the Test partition (`nb_test` stimuli, -1 = all); returns the success rate over
        every scored stimulus (`Score.get_success_rate`; upstream's `get_average_success`, a
        per-batch average, weighs a partial last batch like a full one)."""
        if self._provider is None or self._target is None:
            raise RuntimeError(f"DeepNetCell '{self._name}': run_test() needs a provider and a target")
        if qat_sat and getattr(self, "_integer_network", None) is None:   # upstream's -test -qat-sat
            fuse_qat(self, self._provider, act_scaling_mode, wt_round_mode, b_round_mode, c_round_mode)
        if getattr(self, "_integer_network", None) is not None:   # after n2d2.quantizer.PTQ / fuse_qat
            return self._run_integer_test(nb_test)
        self._world = distributed.current() if nb_test < 0 else distributed.LocalWorld()
        try:
            success, seen, seconds = self._run_epoch("Test", False, nb_max=nb_test, desc="test", shuffle=False)
            is_root = self._world.is_root
        finally:
            self._world = None
        if is_root:
            print(f"Test: {seen} stimuli, success {100 * success:.2f}% of the stimuli "
                  f"({seen / max(seconds, 1e-9):.0f} img/s)")
            self._target.log_confusion_matrix("Test")
            self._target.log_success("Test")
        return success

    def _run_integer_test(self, nb_test):
        """run_test() after PTQ: the integer simulation's success rate on the Test partition."""

        inputs, labels = read_stimuli(self._provider, "Test", nb_test)
        success = self._integer_network.accuracy(inputs, labels)
        print(f"Test (integer simulation, {self._integer_network.nb_bits} bits, "
              f"{self._integer_network.act_scaling_mode}): {len(inputs)} stimuli, success {100 * success:.2f}%")
        return success

    def _snapshot(self):
        return {name: p.array.copy() for name, p in self._graph.params.items()}

    def _restore(self, snapshot):
        for name, values in snapshot.items():
            self._graph.params[name].array[...] = values   # in place: the programs read them live

    # -- editing --------------------------------------------------------------------------------
    def remove(self, name: str, reconnect: bool = True):
        """Remove the cell `name`; with `reconnect`, its input feeds its consumers.

        The shapes after it are inferred again (removing `Fc(50, 10)` before a Softmax gives the
        Softmax 50 channels); a cell whose parameters no longer fit its new input is an error, and
        the network is left as it was.
        """
        nodes = [n for n, c in self._cell_of.items() if c.get_name() == name]
        if not nodes:
            raise ValueError(f"DeepNetCell '{self._name}' has no cell named '{name}'")
        g = self._graph.copy()
        for node in nodes:
            sources = g.inputs_of(node)
            if reconnect:
                if len(sources) != 1:
                    raise RuntimeError(f"Cannot reconnect around '{name}': it has {len(sources)} inputs")
                src, out = sources[0]
                g.replace_uses(node, src, 0, out)
            elif g.consumers(node):
                raise RuntimeError(f"Cannot remove '{name}' without reconnecting: other cells read its output")
            g.remove_node(node)
        if not g.outputs:
            raise RuntimeError(f"Cannot remove '{name}' without reconnecting: it is the network's output")

        for node in g.topological_order():
            if g.op(node) == "Input":
                continue
            try:
                g.nx.nodes[node]["outputs"] = op_registry.get(g.op(node), node=node).infer(g, node)
            except GraphError as e:
                cell = self._cell_of.get(node)
                who = f"cell '{cell.get_name()}' ({cell.get_type()})" if cell is not None else f"node '{node}'"
                raise RuntimeError(f"Cannot remove '{name}' from DeepNetCell '{self._name}': {who} can no longer "
                                   f"accept its input {[tuple(t.shape) for t in g.input_types(node)]} ({e})") from None
        g.verify()
        for node in nodes:
            del self._cell_of[node]
        self._graph = g
        self._cells = [c for c in self._cells if c.get_name() != name]
        self._invalidate()

    # -- parameters on disk -------------------------------------------------------------------------
    def export_free_parameters(self, dir_name: str, verbose=True):
        if verbose:
            print(f"Exporting DeepNetCell '{self._name}' parameters from {dir_name}")
        super().export_free_parameters(dir_name, verbose=verbose)

    def import_free_parameters(self, dir_name: str, ignore_not_exists=False):
        print(f"Importing DeepNetCell '{self._name}' parameters from  {dir_name}")
        super().import_free_parameters(dir_name, ignore_not_exists=ignore_not_exists)
        self._invalidate()

    # -- summary --------------------------------------------------------------------------------
    def cell_stats(self) -> list:
        """One `stats.CellStats` per cell of the compiled graph (per image, in graph order), so
        that `Target.log_stats` describes the cells inside the DeepNetCell, not the DeepNetCell
        as one cell; parameters count once per cell, MACs and outputs once per call."""
        g = self._graph
        by_cell, order = {}, []
        for node in g.topological_order():
            cell = self._cell_of.get(node)
            if cell is None:
                continue
            out_shape = tuple(g.output_types(node)[0].shape)
            in_shape = tuple(g.input_types(node)[0].shape) if g.inputs_of(node) else out_shape
            if id(cell) not in by_cell:
                by_cell[id(cell)] = stats.CellStats(cell.get_name(), type(cell).__name__, stats.nb_parameters(cell))
                order.append(id(cell))
            entry = by_cell[id(cell)]
            entry.macs += stats.call_macs(cell, in_shape, out_shape)
            entry.nb_outputs += int(np.prod(out_shape[1:])) if len(out_shape) > 1 else 1
        return [by_cell[k] for k in order]

    def summary(self, verbose=False):
        """Print the layer table (shapes, parameters, MACs, connections, extras)."""
        g = self._graph
        rows = [("Image1 (input)", str(tuple(g.output_types(g.inputs[0])[0].shape)), "0", "0k", "", "", "-")]
        total_params, total_macs = 0, 0
        counted = set()
        for node in g.topological_order():
            if node not in self._cell_of:
                continue
            cell = self._cell_of[node]
            out_shape = tuple(g.output_types(node)[0].shape)
            in_shape = tuple(g.input_types(node)[0].shape) if g.inputs_of(node) else out_shape
            params = stats.nb_parameters(cell) if id(cell) not in counted else 0
            counted.add(id(cell))
            macs = stats.call_macs(cell, in_shape, out_shape)
            total_params += params
            total_macs += macs
            if g.op(node) == "BatchNorm" and not verbose:
                continue
            sources = [self._cell_of[s].get_name() if s in self._cell_of else "Image1" for s, _ in g.inputs_of(node)]
            grad = str(cell._config.get("back_propagate", "-")) if "back_propagate" in cell._parameters else "-"
            rows.append((f"{cell.get_name()} ({_layer_type(cell)})", str(out_shape), f"{params:,}",
                         f"{macs / 1000:.1f}k", ", ".join(sources), _extra(cell), grad))
        last = rows[-1][0].split(" ")[0]
        rows.append(("Features (output)", rows[-1][1], "", "", last, "", ""))
        headers = ("Layer (type)", "Output Shape", "Param #", " MAC #", "Connected to", "Extra", "Grad")
        widths = [max(len(h), *(len(r[i]) for r in rows)) + 2 for i, h in enumerate(headers)]
        line = "".join(h.ljust(w) for h, w in zip(headers, widths))
        print("-" * len(line))
        print(line)
        print("=" * len(line))
        for r in rows:
            print("".join(v.ljust(w) for v, w in zip(r, widths)))
        print("=" * len(line))
        print(f"Total params:  {total_params:,}")
        print(f"Total computing:  {total_macs:,} MAC")

    def __deepcopy__(self, memo):
        raise TypeError("DeepNetCell cannot be deep-copied; export and import its parameters instead")


def _layer_type(cell) -> str:
    t = cell.get_type()
    if t in ("Conv", "ConvDepthWise", "ConvPointWise"):
        k = cell._args.get("kernel_dims", [1, 1])
        if t == "ConvDepthWise":
            return "Depthwise"
        if list(k) == [1, 1]:
            return "PointWise"
        return f"Conv {k[0]}x{k[1]}"
    if t in ("Pool", "Pool2d", "GlobalPool2d"):
        return "MaxPool" if str(cell._args.get("pooling")).endswith("Max") else "AvgPool"
    return t


def _extra(cell) -> str:
    parts = []
    a = cell._args
    for key, label in (("kernel_dims", "k"), ("pool_dims", "k"), ("stride_dims", "str"), ("padding_dims", "pad"),
                       ("dilation_dims", "dilation")):
        v = a.get(key)
        if v is not None and (label == "k" or any(x != (1 if label in ("str", "dilation") else 0) for x in v)):
            parts.append(f"{label}: {'x'.join(str(x) for x in v)}")
    act = cell._config.get("activation") if "activation" in cell._parameters else None
    if act is not None:
        parts.append(f"Act: {act.get_type()}")
    return ", ".join(parts)
