"""n2d2.Tensor: construction, both dims orders, indexing, numpy interop, printing (reference 3, 22)."""
import numpy as np
import pytest

import n2d2
from n2d2.error_handler import WrongInputType, WrongValue
from tests.conftest import requires_cuda


def test_flat_write_visible_by_coordinates():
    t = n2d2.Tensor([2, 3, 4])
    t[0] = 7
    assert t[0, 0, 0] == 7
    assert t[[0, 0, 0]] == 7


def test_value_fills_int_tensor():
    t = n2d2.Tensor([2, 2], value=5, datatype="int")
    assert all(v == 5 for v in t)


def test_value_must_match_datatype_type():
    with pytest.raises(TypeError):
        n2d2.Tensor([2, 2], value=1)
    assert n2d2.Tensor([2, 2], value=1.0)[3] == 1.0


def test_slice_assignment_is_flat_and_set_only():
    t = n2d2.Tensor([1, 1, 4])
    t[1:3] = 1
    assert t[0, 0, 1] == 1 and t[0, 0, 2] == 1 and t[0, 0, 0] == 0 and t[0, 0, 3] == 0
    t[0:] = 1
    assert list(t) == [1, 1, 1, 1]


def test_coordinates_follow_numpy_c_order():
    t = n2d2.Tensor([2, 3, 4])
    t[0, 0, 3] = 9
    assert t[3] == 9
    t[1, 2, 3] = 4
    assert t[len(t) - 1] == 4
    assert len(t) == 24


def test_bad_coordinates():
    t = n2d2.Tensor([2, 3])
    with pytest.raises(ValueError):
        t[0, 3]
    with pytest.raises(ValueError):
        t[0, 0, 0]


def test_copy_is_distinct_and_equal():
    t = n2d2.Tensor([2, 2], value=3.0)
    c = t.copy()
    assert c is not t and c == t
    c[0] = 1.0
    assert c != t


def test_dims_orders():
    t = n2d2.Tensor([5, 4, 3, 2])
    assert (t.dimX(), t.dimY(), t.dimZ(), t.dimB()) == (2, 3, 4, 5)
    assert t.dims() == [2, 3, 4, 5] and t.shape() == [5, 4, 3, 2]
    u = n2d2.Tensor([2, 3, 4, 5], dim_format="N2D2")
    assert u.shape() == [5, 4, 3, 2]
    with pytest.raises(WrongValue):
        n2d2.Tensor([2], dim_format="NCHW")
    with pytest.raises(TypeError):
        n2d2.Tensor(3)


def test_reshape_and_resize():
    t = n2d2.Tensor([2, 3, 4])
    t.reshape([4, 3, 2])
    assert t.shape() == [4, 3, 2]
    with pytest.raises(ValueError):
        t.reshape([5])
    t.resize([3, 3])
    assert t.shape() == [3, 3]


def test_equality_ignores_datatype():
    assert n2d2.Tensor([2, 2], datatype="int") == n2d2.Tensor([2, 2], datatype="float")
    assert n2d2.Tensor([2, 2]) != n2d2.Tensor([4])
    with pytest.raises(TypeError):
        n2d2.Tensor([1]) == 1


def test_membership():
    t = n2d2.Tensor([3])
    t[1] = 5.0
    assert 5 in t and 6 not in t


def test_numpy_round_trip_and_shared_memory():
    t = n2d2.Tensor([3, 2])
    t.set_values([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert np.array_equal(t.to_numpy(), [[1, 2], [3, 4], [5, 6]])
    a = t.to_numpy()
    a[0, 0] = 42
    assert t[0] == 42
    assert t.to_numpy(copy=True) is not a
    u = n2d2.Tensor.from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert u == n2d2.Tensor.from_numpy(u.to_numpy())
    assert np.array(u).shape == (2, 3)


def test_from_numpy_datatypes():
    assert n2d2.Tensor.from_numpy(np.zeros(2, dtype=np.int32)).data_type() == "int"
    assert n2d2.Tensor.from_numpy(np.zeros(2, dtype=np.uint8)).data_type() == "uchar"
    with pytest.raises(TypeError):
        n2d2.Tensor.from_numpy(np.zeros(2, dtype=np.int64))
    with pytest.raises(WrongInputType):
        n2d2.Tensor.from_numpy([1, 2])
    src = np.ones(3, dtype=np.float32)
    t = n2d2.Tensor.from_numpy(src)
    src[0] = 5
    assert t[0] == 1.0


def test_set_values_checks_shape():
    t = n2d2.Tensor([2, 2])
    with pytest.raises(ValueError):
        t.set_values([1.0, 2.0])
    with pytest.raises(ValueError):
        t.set_values([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    with pytest.raises(WrongInputType):
        t.set_values((1, 2))


def test_autocast_failure():
    t = n2d2.Tensor([2], datatype="int")
    with pytest.raises(RuntimeError, match="Autocast"):
        t[0] = 1.5
    with pytest.raises(RuntimeError, match="Autocast"):
        t[0] = "a"


def test_printing():
    assert str(n2d2.Tensor([2, 3])) == "n2d2.Tensor([\n0 0 0 \n0 0 0 \n], device=cpu, datatype=float)"
    t = n2d2.Tensor([1, 2, 1, 1])
    t[0] = 0.0135
    t[1] = 0.0359
    assert repr(t) == "[0][0]:\n0.0135 \n[1]:\n0.0359 \n"
    t3 = n2d2.Tensor([2, 1, 2], datatype="int")
    assert repr(t3) == "[0]:\n0 0 \n[1]:\n0 0 \n"


def test_printing_names_the_producer():
    fc = n2d2.cells.Fc(4, 2, name="fc")
    y = fc(n2d2.Tensor([1, 4, 1, 1], value=1.0))
    assert str(y).endswith("datatype=float, cell='fc')")


def test_graph_methods_need_a_leaf():
    t = n2d2.Tensor([1])
    with pytest.raises(RuntimeError, match="not part of a graph"):
        t.back_propagate()
    fc = n2d2.cells.Fc(4, 2)
    y = fc(n2d2.Tensor([1, 4, 1, 1], value=1.0))
    with pytest.raises(RuntimeError, match="not the leaf"):
        y.update()
    assert y.detach().cell is None


def test_get_deepnet_wraps_raw_tensor():
    t = n2d2.Tensor([1, 1, 2, 2])
    g = t.get_deepnet()
    assert t.cell.get_name().startswith("TensorPlaceholder_")
    assert t.get_deepnet() is g


def test_cuda_without_gpu_warns_or_raises():
    if n2d2.global_variables.cuda_available:
        pytest.skip("a GPU is present")
    # cuda=True is how upstream scripts spell their device: a warning and a host tensor
    with pytest.warns(n2d2.backend.CudaUnavailableWarning, match=r"Tensor\(\.\.\., cuda=True\)"):
        t = n2d2.Tensor([2], value=1.0, cuda=True)
    assert not t.is_cuda and t[1] == 1.0
    with pytest.raises(RuntimeError):
        n2d2.Tensor([2]).cuda()
    with pytest.raises(WrongInputType):
        n2d2.Tensor([2], cuda=1)


@requires_cuda
def test_cuda_round_trip_and_explicit_sync():
    t = n2d2.Tensor([2, 2])
    t.set_values([[1.0, 2.0], [3.0, 4.0]])
    t.cuda()
    assert t.is_cuda
    t.htod()
    t.set_values([[2.0, 3.0], [4.0, 5.0]])
    t.dtoh()
    assert list(t) == [1, 2, 3, 4]
    t.set_values([[2.0, 3.0], [4.0, 5.0]])
    t.htod()
    t.cpu()
    assert not t.is_cuda and list(t) == [2, 3, 4, 5]


def test_interface_checks():
    a = n2d2.Tensor([2, 3, 4, 4])
    b = n2d2.Tensor([2, 5, 4, 4])
    i = n2d2.Interface([a, b])
    assert i.dimZ() == 8 and i.dims() == [4, 4, 8, 2] and len(i) == 2
    with pytest.raises(ValueError):
        n2d2.Interface([n2d2.Tensor([2, 3, 4, 4]), n2d2.Tensor([2, 3, 5, 4])])
