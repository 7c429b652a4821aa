"""Graph optimisation passes: each is a function `Graph -> Graph` (it works on a copy; shared
parameter arrays are never modified) whose docstring states the rewrite and its precondition.
`PassManager` / `optimize` run them in the default inference or training pipeline.
"""
from n2d2.ir.passes.dead_node_elimination import dead_node_elimination
from n2d2.ir.passes.fold_batchnorm import fold_batchnorm
from n2d2.ir.passes.fold_padding import fold_padding
from n2d2.ir.passes.fuse_activation import fuse_activation
from n2d2.ir.passes.fuse_batchnorm_epilogue import fuse_batchnorm_epilogue
from n2d2.ir.passes.fuse_elementwise_chains import fuse_elementwise_chains
from n2d2.ir.passes.manager import PASSES, PIPELINES, PassManager, optimize, register_pass
from n2d2.ir.passes.remove_dropout import remove_dropout
from n2d2.ir.passes.remove_identities import remove_identities
from n2d2.ir.passes.shape_inference import shape_inference

__all__ = ["PASSES", "PIPELINES", "PassManager", "dead_node_elimination", "fold_batchnorm", "fold_padding",
           "fuse_activation", "fuse_batchnorm_epilogue", "fuse_elementwise_chains", "optimize", "register_pass",
           "remove_dropout", "remove_identities", "shape_inference"]
