"""Every op, one module per op (or small family): its reference forward and backward, and its
definition (`OpDef` subclass: shape rule, properties, C / CUDA lowering; see n2d2/ir/registry.py).

Each reference function takes and returns arrays of one array module (numpy or cupy, found with
`n2d2.backend.array_module`) and works in any float dtype, so the same code is the float64
oracle of gradient checks and the float32 path of eager cells. Backward functions return the
standard gradient d(loss)/d(input) given d(loss)/d(output).
"""
