"""Printed forms of cells, containers and objects at the three verbosities (reference 5, 12, 13)."""
import n2d2
from n2d2.activation import Linear, Rectifier, Tanh
from n2d2.cells import Fc, Sequence
from n2d2.filler import Constant, He, Normal, Xavier
from n2d2.settings import Verbosity
from n2d2.solver import SGD, Adam
from n2d2.utils import reset_name_counters

SGD_DEFAULT = ("SGD(clamping=, decay=0.0, iteration_size=1, learning_rate={lr}, learning_rate_decay=0.1, "
               "learning_rate_policy=None, learning_rate_step_size=1, max_iterations=0, min_decay=0.0, "
               "momentum=0.0, polyak_momentum=True, power=0.0, warm_up_duration=0, warm_up_lr_frac=0.25)")
ADAM = "Adam(beta1=0.9, beta2=0.999, clamping=, epsilon=1e-08, learning_rate={lr})"
FC = ("'{name}' Fc(Frame<float>)(nb_inputs={i}, nb_outputs={o} | back_propagate=True, drop_connect=1.0, "
      "no_bias=False, normalize=False, outputs_remap=, weights_export_format=OC, activation={act}, "
      "weights_solver={ws}, bias_solver={bs}, weights_filler=Normal(mean=0.0, std_dev=0.05), "
      "bias_filler=Normal(mean=0.0, std_dev=0.05), quantizer=None)")


def test_fc_detailed_short_graph_only():
    reset_name_counters()
    fc = Fc(784, 50, activation=Rectifier())
    sgd = SGD_DEFAULT.format(lr=0.01)
    assert str(fc) == FC.format(name="Fc_0", i=784, o=50, ws=sgd, bs=sgd,
                                act="Rectifier(clipping=0.0, leak_slope=0.0, quantizer=None)")
    n2d2.global_variables.verbosity = Verbosity.short
    assert str(fc) == "'Fc_0' Fc(Frame<float>)(nb_inputs=784, nb_outputs=50)"
    n2d2.global_variables.verbosity = Verbosity.graph_only
    assert str(fc) == "'Fc_0' Fc(Frame<float>)"
    fc2 = Fc(50, 10)
    fc2(fc(n2d2.Tensor([1, 1, 28, 28], value=0.5)))
    assert str(fc2) == "'Fc_1' Fc(Frame<float>)(['Fc_0'])"
    assert str(fc) == "'Fc_0' Fc(Frame<float>)(['TensorPlaceholder_0'])"


def _sequence_text(seq_name, c1, c2):
    return f"'{seq_name}' Sequence(\n\t(0): {c1}\n\t(1): {c2}\n)"


def test_solver_docs_example():
    """Reference 12: a Sequence of two Fc, a bias solver changed, then set_solver."""
    reset_name_counters()
    cell1 = Fc(2, 2, solver=SGD(learning_rate=0.1))
    cell2 = Fc(2, 2)
    model = Sequence([cell1, cell2])
    s01, s001 = SGD_DEFAULT.format(lr=0.1), SGD_DEFAULT.format(lr=0.01)
    assert str(model) == _sequence_text(
        "Sequence_0",
        FC.format(name="Fc_0", i=2, o=2, act="None", ws=s01, bs=s01),
        FC.format(name="Fc_1", i=2, o=2, act="None", ws=s001, bs=s001))
    cell2.bias_solver = Adam()
    assert str(cell2) == FC.format(name="Fc_1", i=2, o=2, act="None", ws=s001, bs=ADAM.format(lr=0.001))
    model.set_solver(Adam(learning_rate=0.1))
    adam = ADAM.format(lr=0.1)
    assert str(model) == _sequence_text(
        "Sequence_0",
        FC.format(name="Fc_0", i=2, o=2, act="None", ws=adam, bs=adam),
        FC.format(name="Fc_1", i=2, o=2, act="None", ws=adam, bs=adam))
    # set_solver gives copies: four distinct solver objects.
    solvers = {id(cell1.weights_solver), id(cell1.bias_solver), id(cell2.weights_solver), id(cell2.bias_solver)}
    assert len(solvers) == 4


def test_nested_container_printing():
    reset_name_counters()
    n2d2.global_variables.verbosity = Verbosity.graph_only
    inner = Sequence([Fc(4, 3), Fc(3, 2, name="last_fully")], name="classifier")
    outer = Sequence([Fc(4, 4), inner])
    outer(n2d2.Tensor([1, 4, 1, 1], value=1.0))
    assert str(outer) == (
        "'Sequence_0' Sequence(\n"
        "\t(0): 'Fc_1' Fc(Frame<float>)(['TensorPlaceholder_0'])\n"
        "\t(1): 'classifier' Sequence(\n"
        "\t\t(0): 'Fc_0' Fc(Frame<float>)(['Fc_1'])\n"
        "\t\t(1): 'last_fully' Fc(Frame<float>)(['Fc_0'])\n"
        "\t)\n"
        ")")


def test_object_strings():
    assert str(Adam()) == ADAM.format(lr=0.001)
    assert str(Normal()) == "Normal(mean=0.0, std_dev=1.0)"
    assert str(Constant(value=1.0)) == "Constant(value=1.0)"
    assert str(He()) == "He(variance_norm=FanIn, mean_norm=0.0, scaling=1.0)"
    assert str(Xavier()) == "Xavier(variance_norm=FanIn, distribution=Uniform, scaling=1.0)"
    assert str(Linear()) == "Linear(clipping=0.0, quantizer=None)"
    assert str(Tanh()) == "Tanh(alpha=1.0, quantizer=None)"


def test_names_count_per_class_and_explicit_names_do_not_consume():
    reset_name_counters()
    a = Fc(1, 1)
    Fc(1, 1, name="x")
    b = Fc(1, 1)
    s = Sequence([])
    assert (a.get_name(), b.get_name(), s.get_name()) == ("Fc_0", "Fc_1", "Sequence_0")


def test_global_variables_string():
    text = str(n2d2.global_variables)
    assert text.startswith("n2d2 global variables :\n\t- cuda_available : ")
    assert "\t- default_model : Frame" in text and "\t- verbosity : Verbosity.detailed" in text
