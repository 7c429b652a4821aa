"""`Type=ONNX` sections of an INI network (reference section 2.1): an ONNX graph inserted in the
INI flow like a layer.

```
[onnx]
Input=sp
Type=ONNX
File=model.onnx          ; relative: from the current directory, else the INI file's folder
Ignore=...               ; IgnoreInputSize, ONNX_init, CNTK, Transpose=0 as for load_from_ONNX
[fc] Input=onnx,Pool_3:0 ; a layer fed from inside the graph lists the ONNX section first
[Times418_Output_0.Target]
```

The graph is imported by `n2d2.frontends.onnx_import` on the tensor of the section's input, so its
cells join the INI network's trace; `[<onnx>:Conv_def]`-style and per-node sections configure
them as `load_from_ONNX(ini_file=...)` does. Later sections name ONNX values (node outputs) in
`Input=` and targets. ONNX errors become `IniError`s naming the section and line.
"""

import contextlib

from n2d2.cells.nn.weighted import weights_from_file
from n2d2.frontends import onnx_import
from n2d2.frontends.ini.parser import IniError

ONNX_KEYS = ("Input", "Type", "File", "Ignore", "IgnoreInputSize", "Transpose", "CNTK", "ONNX_init")


class _Shape:
    """The provider stand-in the importer asks for its input size: the input tensor's."""

    def __init__(self, tensor):
        self._shape = list(tensor.shape())

    def shape(self):
        return list(self._shape)


class OnnxSection:
    """An imported ONNX graph: its cells, its output tensor and the tensors of its values."""

    def __init__(self, builder, name, reader, input_tensor):
        self.name = name
        r = reader
        r.mark(*ONNX_KEYS)
        path = self._file(builder, r)
        try:
            embedding = onnx_import._IniEmbedding(builder.file or "<ini>", doc=builder.doc, section=name)
            model, inferred, arrays = onnx_import.load_model_arrays(path)
            self.importer = onnx_import._Importer(model, path, _Shape(input_tensor), embedding.ignore,
                                                  embedding.ignore_input_size, embedding.load_weights, arrays)
            with weights_from_file() if embedding.load_weights else contextlib.nullcontext():
                _, outputs, _ = self.importer.run(input_tensor=input_tensor)  # the file's values, no filler draws
            cells = {c.get_name(): c for c in self.importer.cells}
            embedding.apply(cells, [o for n in model.graph.node for o in n.output if o])
        except (onnx_import.ONNXError, FileNotFoundError) as e:
            raise r.error(f"ONNX import of '{path}' failed: {e}", "File", "a supported ONNX model") from None
        for cell in self.importer.cells:
            cell.learn()
        self.cells = self.importer.cells   # the same list: views materialized later add cells to it
        self.output = outputs[0]
        clash = sorted(set(cells) & {n for n in builder.doc.order if "Input" in builder.doc.section(n).entries})
        if clash:
            raise r.error(f"ONNX cells and INI layers share the names {clash}", "File",
                          "distinct names (rename the INI layer sections)")

    @staticmethod
    def _file(builder, r):
        value = r.text("File", expected="the ONNX file")
        found = builder.find_file(value)
        if found is not None:
            return found
        raise r.error(f"File '{value}' does not exist", "File", "an ONNX file (relative: to the current directory "
                                                                "or to the INI file's folder)")

    def names(self):
        """ONNX value names that later sections may use as Input or target owners."""
        return [n for n, v in self.importer.values.items() if not hasattr(v, "dtype")]

    def tensor(self, value_name):
        """The tensor of the ONNX value `value_name` (materialized in its ONNX layout)."""
        v = self.importer.values[value_name]
        return self.importer._tensor(v, interface_ok=False)


def is_onnx_section(doc, name) -> bool:
    """`Type=ONNX` after substitution (False when the value cannot be read yet: the layer
    builder reports that)."""
    if "Type" not in doc.section(name).entries:
        return False
    try:
        return doc.value(name, "Type").strip() == "ONNX"
    except IniError:
        return False


__all__ = ["OnnxSection", "is_onnx_section", "ONNX_KEYS", "IniError"]
