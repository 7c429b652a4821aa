"""The explicit list of the modules that define ops: importing this module registers every op.

`n2d2.ir.ops.get` and `names` import it (once, on first need), so an op is found whatever was
imported before. An op module imports `n2d2.ir.ops` (the `OpDef` base and `register`) and the
reference it marshals to; nothing here imports a backend (`n2d2.codegen`) or the onnx package.
To add an op, write one module `n2d2/ops/<op>.py` and list it here. It holds:
- the reference: forward and backward functions on numpy / cupy arrays;
- `@register class <Op>(OpDef)` with a docstring naming its attrs, arity, `params`, the
  shape rule `_infer`, `_forward` / `_backward` marshalling to the reference, and the
  properties the passes ask (`OpDef.PROPERTIES`: elementwise, carries_activation, keeps_sign...);
- its C lowering `lower_c(graph, node, training)` -> the geometry its template
  `templates/c/ops/<Op>.c.j2` reads, or `Unsupported("why")` for the cases it does not cover
  (without `lower_c` the base answers "no C kernel: the numpy reference runs it");
- likewise `lower_cuda` and `plan_cuda_forward` / `plan_cuda_backward` (kernel launches built
  with the helpers the CUDA backend passes) for `templates/cuda/ops/<Op>.cu.j2`;
- `onnx_names` / `ini_names` where it has them. Attributes are plain data (`plain_attrs`
  converts a live object given at node creation).
tests/test_op_registry.py checks every op declares these.
"""
import n2d2.ir.epilogue  # noqa: F401
import n2d2.ir.tensor_ops  # noqa: F401  (the Onnx* ops)
import n2d2.ir.transformation_op  # noqa: F401
import n2d2.ops.activation_op  # noqa: F401
import n2d2.ops.batchnorm  # noqa: F401
import n2d2.ops.batchnorm_epilogue  # noqa: F401
import n2d2.ops.conv  # noqa: F401
import n2d2.ops.deconv  # noqa: F401
import n2d2.ops.dropout  # noqa: F401
import n2d2.ops.elemwise  # noqa: F401
import n2d2.ops.fake_quantize  # noqa: F401
import n2d2.ops.fc  # noqa: F401
import n2d2.ops.gradient  # noqa: F401  (AddN, Grad, Update)
import n2d2.ops.lrn  # noqa: F401
import n2d2.ops.normalize  # noqa: F401
import n2d2.ops.padding  # noqa: F401
import n2d2.ops.pool  # noqa: F401
import n2d2.ops.resize  # noqa: F401
import n2d2.ops.scaling  # noqa: F401
import n2d2.ops.softmax  # noqa: F401
import n2d2.ops.structure  # noqa: F401
import n2d2.ops.transpose  # noqa: F401
