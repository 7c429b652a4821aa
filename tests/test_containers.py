"""Block, Sequence and Layer: indexing, modes, solvers, parameters on disk, calling."""
import numpy as np
import pytest

import n2d2
from n2d2.cells import Block, Fc, Layer, Sequence
from n2d2.error_handler import WrongInputType
from n2d2.solver import SGD


def _net():
    inner = Sequence([Fc(4, 3, name="a"), Fc(3, 2, name="b")], name="inner")
    return Sequence([Fc(4, 4, name="first"), inner], name="outer"), inner


def test_indexing_by_position_and_name():
    outer, inner = _net()
    assert outer[1] is inner and outer["b"] is inner[1] and outer["inner"] is inner
    assert len(outer) == 2 and [c.get_name() for c in outer] == ["first", "inner"]
    assert list(outer.get_cells()) == ["first", "a", "b"]
    with pytest.raises(KeyError, match="zzz"):
        outer["zzz"]


def test_insert_append_remove():
    seq = Sequence([Fc(2, 2, name="x")])
    y = Fc(2, 2, name="y")
    seq.append(y)
    seq.insert(0, Fc(2, 2, name="z"))
    assert [c.get_name() for c in seq] == ["z", "x", "y"] and seq.index(y) == 2
    seq.remove(y)
    assert len(seq) == 2
    with pytest.raises(ValueError):
        seq.insert(-1, y)
    with pytest.raises(WrongInputType):
        Sequence([1])


def test_modes_propagate():
    outer, inner = _net()
    outer.test()
    assert all(c._inference for c in outer.get_cells().values())
    assert outer.learn() is outer and not inner[0]._inference


def test_set_solver_gives_copies():
    outer, _ = _net()
    s = SGD(learning_rate=0.3)
    outer.set_solver(s)
    solvers = [c.weights_solver for c in outer.get_cells().values()]
    assert len({id(x) for x in solvers}) == 3 and all(x.learning_rate == 0.3 and x is not s for x in solvers)


def test_set_back_propagate():
    outer, _ = _net()
    outer.set_back_propagate(False)
    assert not any(c.back_propagate for c in outer.get_cells().values())


def test_sequence_call_and_identity():
    outer, _ = _net()
    y = outer(n2d2.Tensor([3, 4, 1, 1], value=1.0))
    assert y.shape() == [3, 2, 1, 1] and y.cell.get_name() == "b"
    x = n2d2.Tensor([1, 2, 1, 1])
    assert Sequence([])(x) is x


def test_block_parameters_round_trip(tmp_path, capsys):
    outer, _ = _net()
    outer.export_free_parameters(str(tmp_path))
    printed = capsys.readouterr().out.splitlines()
    # the log names the files really written (issue 10), weights and biases of the three Fc
    assert printed == [f"Export to {tmp_path}/{c}_{kind}.syntxt" for c in ("first", "a", "b")
                       for kind in ("weights", "biases")]
    other, _ = _net()
    other.import_free_parameters(str(tmp_path))
    for name, cell in outer.get_cells().items():
        assert np.array_equal(cell._weights, other[name]._weights)


def test_layer_branches_and_elemwise_residual():
    from n2d2.cells import ElemWise

    main = Sequence([Fc(4, 4, name="m")])
    shortcut = Sequence([])
    layer = Layer([main, shortcut])
    x = n2d2.Tensor([2, 4, 1, 1], value=1.0)
    out = layer(x)
    assert isinstance(out, n2d2.Interface) and len(out) == 2
    y = ElemWise()(out)
    expected = main[0](x).to_numpy() + 1.0
    assert np.allclose(y.to_numpy(), expected, rtol=1e-6)


def test_layer_mapping_validation():
    layer = Layer([Fc(4, 2), Fc(4, 2)], mapping=[[1, 0]])
    with pytest.raises(ValueError, match="branch 1"):
        layer(n2d2.Tensor([1, 4, 1, 1]))


def test_block_is_abstract_call():
    b = Block([Fc(2, 2)])
    with pytest.raises(TypeError):
        b(n2d2.Tensor([1, 2, 1, 1]))
