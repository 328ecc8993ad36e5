"""jaxloss.parity: prove that a JAX port computes what its PyTorch original computes.

Compare a JAX function and a torch function on the same inputs, values and gradients, in float32
and float64 (`compare`, `assert_parity`); a model's per-layer activations (`compare_layers`); and
training trajectories step by step (`compare_steps`). Every comparison returns a `Report` that a
person reads (``print(report)``). The `Reference` rule needs no tolerance to be guessed: JAX's
float32 error against a float64 reference must be no worse than ``k`` times torch's own.

torch is imported only when a comparison runs (``pip install 'jaxloss[parity]'``).
"""

from jaxloss.parity import layout
from jaxloss.parity._compare import assert_parity, compare, default_rule
from jaxloss.parity._inputs import Input, fixed, integers, normal, probabilities, uniform
from jaxloss.parity._layers import compare_layers
from jaxloss.parity._nnx_port import nnx_to_torch, torch_to_nnx
from jaxloss.parity._report import Entry, ParityError, Report
from jaxloss.parity._rules import Close, Reference, Verdict, judge
from jaxloss.parity._steps import compare_steps, nnx_training_state, torch_training_state

__all__ = (
    "Close",
    "Entry",
    "Input",
    "ParityError",
    "Reference",
    "Report",
    "Verdict",
    "assert_parity",
    "compare",
    "compare_layers",
    "compare_steps",
    "default_rule",
    "fixed",
    "integers",
    "judge",
    "layout",
    "nnx_to_torch",
    "nnx_training_state",
    "normal",
    "probabilities",
    "torch_to_nnx",
    "torch_training_state",
    "uniform",
)
