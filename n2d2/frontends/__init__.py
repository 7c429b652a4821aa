"""Frontends: networks described in other formats, turned into n2d2 cells and IR graphs.

- `onnx_import`: an ONNX file becomes cells, called eagerly and traced into a `DeepNetCell`
  (`DeepNetCell.load_from_ONNX`); its errors are `onnx_import.ONNXError` subclasses;
- `onnx_export`: an IR graph (a `DeepNetCell` or a trace) written as an ONNX file
  (`DeepNetCell.export_onnx`);
- `ini`: N2D2 INI network descriptions.

Optional dependencies (`onnx`) are imported only when one of these functions runs, so
`import n2d2` works without them; this module imports none of its submodules.
"""
