"""jaxloss.parity, the public harness: it must fail what differs, and pass only what is equal.

Every rule is tested at its edge: a 1e-4 relative error (what a wrong constant or a float32
shortcut gives) fails the float64-reference rule, NaN never passes by default, a dtype leak fails,
one bad element among many fails, and a function identical up to float32 rounding passes.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import jaxloss
from jaxloss import parity
from train.batch_norm import BatchNorm


def _ce(x, y):
    return jaxloss.cross_entropy(x, y)


def _torch_ce(x, y):
    return torch.nn.functional.cross_entropy(x, y)


def test_a_correct_port_passes_in_both_dtypes_with_labels_and_names():
    inputs = [parity.normal((16, 5), scale=3.0), parity.integers(16, high=5)]
    r = parity.compare(_ce, _torch_ce, inputs, trials=3, names=["logits", "labels"])
    assert r.ok, r
    assert [e.name for e in r.entries[:2]] == ["value", "grad logits"]
    assert {e.dtype for e in r.entries} == {"float32", "float64"}
    assert len(r.entries) == 3 * 2 * 2  # trials x dtypes x (value, grad); labels not differentiated
    f32 = [e for e in r.entries if e.dtype == "float32"]
    assert all(e.verdict.err_jax is not None and e.verdict.closer != "-" for e in f32)
    assert "all passed" in str(r).splitlines()[0]


def test_a_relative_error_of_1e_4_fails_the_reference_rule_and_says_where():
    def wrong(x):
        return jnp.sum(x**2, axis=-1).at[3].multiply(1 + 1e-4)  # one element of eight

    r = parity.compare(
        wrong, lambda t: (t**2).sum(-1), [parity.normal((8, 50))], dtypes=("float32",)
    )
    value, grad = r.entries
    assert not value.passed and not grad.passed  # row 3's gradient is scaled too
    assert value.verdict.abs_at == (3,) and grad.verdict.abs_at[0] == 3
    assert "error" in value.verdict.reason and value.verdict.closer == "torch"
    with pytest.raises(parity.ParityError, match=r"2 FAILED[\s\S]*FAIL: rms error"):
        r.assert_ok()


def test_float32_rounding_differences_pass_the_reference_rule():
    # a different but equally exact summation order: pairwise in JAX, a cumulative sum in torch
    r = parity.compare(
        lambda x: jnp.sum(x, axis=-1),
        lambda t: torch.cumsum(t, -1)[..., -1],
        [parity.normal((64, 1000))],
        trials=3,
        dtypes=("float32",),
    )
    assert r.ok, r


def test_nan_never_passes_unless_allowed_and_then_must_agree():
    def jax_log(x):
        return jnp.log(x)

    r = parity.compare(jax_log, torch.log, [np.array([-1.0, 1.0, 2.0])])
    assert not r.ok and all("not finite" in e.verdict.reason for e in r.failures)
    r = parity.compare(jax_log, torch.log, [np.array([-1.0, 1.0, 2.0])], allow_nonfinite=True)
    assert r.ok, r
    r = parity.compare(
        lambda x: jnp.where(x > 1.5, jnp.nan, x), lambda t: t, [np.array([1.0, 2.0])],
        allow_nonfinite=True,
    )  # fmt: skip
    assert not r.ok and "non-finite values differ" in r.failures[0].verdict.reason


def test_a_dtype_leak_and_a_shape_difference_fail():
    with jax.enable_x64(True):
        r = parity.compare(
            lambda x: x.astype(jnp.float64) * 2, lambda t: t * 2, [parity.normal(3)],
            dtypes=("float32",), reference=None, tolerance=parity.Close(1e-6),
        )  # fmt: skip
    assert "dtypes differ: jax float64, torch float32" in r.entries[0].verdict.reason
    r = parity.compare(lambda x: x[:2], lambda t: t, [parity.normal(3)], dtypes=("float64",))
    assert not r.ok and r.entries[0].verdict.reason.startswith("shapes differ")


def test_close_rule_is_numpys_and_reports_the_worst_index():
    r = parity.compare(
        lambda x: x.at[1, 2].add(1e-3), lambda t: t, [parity.normal((2, 4))],
        dtypes=("float64",), tolerance=parity.Close(rtol=0, atol=1e-4),
    )  # fmt: skip
    (value, grad) = r.entries
    assert not value.passed and grad.passed
    assert value.verdict.abs_at == (1, 2) and value.verdict.max_abs == pytest.approx(1e-3)


def test_pytree_outputs_integer_outputs_and_unused_inputs():
    def jax_fn(x, y):
        return {"sq": x**2, "pair": (jnp.argmax(x), x.sum())}

    def torch_fn(x, y):
        return {"sq": x**2, "pair": (torch.argmax(x), x.sum())}

    r = parity.compare(jax_fn, torch_fn, [parity.normal(5), parity.normal(2)])
    assert r.ok, r
    names = [e.name for e in r.entries if e.dtype == "float64"]
    assert names == ["value['pair'][0]", "value['pair'][1]", "value['sq']", "grad x0", "grad x1"]
    unused = [e for e in r.entries if e.name == "grad x1"]
    assert all(e.verdict.max_abs == 0 for e in unused)
    with pytest.raises(ValueError, match="differ in structure"):
        parity.compare(lambda x: (x, x), lambda t: [t, t], [parity.normal(2)])


def test_gradients_are_checked_not_just_values():
    # the same value, a wrong gradient (a stop_gradient where torch differentiates)
    def jax_fn(x):
        return jnp.sum(x * jax.lax.stop_gradient(x))

    r = parity.compare(jax_fn, lambda t: (t * t).sum(), [parity.normal(4)], dtypes=("float64",))
    assert r.entries[0].passed and not r.entries[1].passed


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dtypes=("float16",)), "dtypes must be"),
        (dict(trials=0), "trials must be"),
        (dict(reference="numpy"), "reference must be"),
        (dict(tolerance=parity.Reference(), dtypes=("float64",)), "wider reference"),
        (dict(reference=None), "needs reference="),
        (dict(names=["a", "b"]), "2 names for 1 inputs"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        parity.compare(jnp.sin, torch.sin, [parity.normal(2)], **kwargs)


def test_rule_and_input_validation():
    for bad in (dict(rtol=-1.0), dict(atol=float("nan"))):
        with pytest.raises(ValueError, match="Close"):
            parity.Close(**bad)
    with pytest.raises(ValueError, match="k must be"):
        parity.Reference(k=0.5)
    with pytest.raises(ValueError, match="low < high"):
        parity.integers(3, low=2, high=2)
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        parity.probabilities((2, 3), axis=2)
    with pytest.raises(ValueError, match="cannot be differentiated"):
        parity.fixed(np.arange(3), grad=True)


def test_layout_helpers_invert_each_other_and_match_torch_and_flax():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5))
    np.testing.assert_array_equal(parity.layout.nhwc_to_nchw(parity.layout.nchw_to_nhwc(x)), x)
    torch.manual_seed(0)
    conv_t = torch.nn.Conv2d(3, 6, (2, 3), bias=False).double()
    with jax.enable_x64(True):
        conv_f = nnx.Conv(3, 6, (2, 3), padding="VALID", use_bias=False, param_dtype=jnp.float64,
                          rngs=nnx.Rngs(0))  # fmt: skip
        conv_f.kernel.set_value(jnp.asarray(parity.layout.conv_kernel_to_flax(conv_t.weight)))
        got = parity.layout.nhwc_to_nchw(conv_f(jnp.asarray(parity.layout.nchw_to_nhwc(x))))
    want = conv_t(torch.from_numpy(x)).detach().numpy()
    # 18-term float64 dot products, summed in different orders by XLA and oneDNN: a few ulps of the
    # largest output (not of each one: an output near 0 is a cancellation, 6e-12 relative seen)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14 * np.abs(want).max())
    w = conv_t.weight.detach().numpy()
    np.testing.assert_array_equal(
        parity.layout.conv_kernel_to_torch(parity.layout.conv_kernel_to_flax(w)), w
    )
    lin = np.arange(6.0).reshape(2, 3)
    assert parity.layout.linear_kernel_to_flax(lin).shape == (3, 2)
    with pytest.raises(ValueError, match="2-d weight"):
        parity.layout.linear_kernel_to_flax(np.zeros(3))


class _TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3, padding=1, bias=False)  # a bias before BN: noise
        self.bn = torch.nn.BatchNorm2d(3)
        self.fc = torch.nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class _NnxNet(nnx.Module):
    def __init__(self, rngs, bn=BatchNorm):
        self.conv = nnx.Conv(2, 3, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
        self.bn = bn(3, rngs=rngs) if bn is BatchNorm else bn(3, momentum=0.9, rngs=rngs)
        self.fc = nnx.Linear(3, 4, rngs=rngs)

    def __call__(self, x, train=False):
        return self.fc(nnx.relu(self.bn(self.conv(x), use_running_average=not train)).mean((1, 2)))


def _pair(bn=BatchNorm):
    torch.manual_seed(0)
    tm = _TorchNet()
    with torch.no_grad():
        tm.bn.running_var.uniform_(0.5, 2.0)
        tm.bn.weight.normal_(1.0, 0.2)
    fm = _NnxNet(nnx.Rngs(0), bn)
    parity.torch_to_nnx(tm.state_dict(), fm)
    return tm, fm


def test_torch_to_nnx_names_every_mismatch_and_round_trips():
    tm, fm = _pair()
    sd = {k: v.numpy() for k, v in tm.state_dict().items()}
    back = parity.nnx_to_torch(fm)
    assert sorted(back) == sorted(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])
    bad = dict(sd, extra=np.zeros(1))
    del bad["fc.bias"]
    with pytest.raises(ValueError, match=r"missing \['fc.bias'\], unexpected \['extra'\]"):
        parity.torch_to_nnx(bad, fm)
    with pytest.raises(ValueError, match=r"conv.weight \(3, 3, 3, 3\) vs \(3, 3, 2, 3\)"):
        parity.torch_to_nnx(dict(sd, **{"conv.weight": np.zeros((3, 3, 3, 3))}), fm)


def test_compare_layers_names_the_first_layer_that_diverges():
    tm, fm = _pair()
    x = np.random.default_rng(1).normal(size=(4, 2, 5, 5)).astype(np.float32)
    r = parity.compare_layers(tm, fm, x)
    assert r.ok, r
    assert [e.name for e in r.entries] == ["layer conv", "layer bn", "layer fc", "output"]
    r = parity.compare_layers(tm, fm, x, train=True, jax_call=lambda m, v: m(v, train=True))
    assert r.ok, r
    assert "after bn.running_var" in [e.name for e in r.entries]
    broken = copy.deepcopy(tm)
    with torch.no_grad():
        broken.bn.bias.add_(1e-3)
    r = parity.compare_layers(broken, fm, x)
    assert r.first_failure is not None and r.first_failure.name == "layer bn"
    assert not r.ok and [e.name for e in r.entries if e.passed] == ["layer conv"]


def _steps(bn, lr_jax=0.1, adam=None):
    tm, fm = _pair(bn)
    t64 = copy.deepcopy(tm).double()
    graphdef, params, stats = nnx.split(fm, nnx.Param, nnx.BatchStat)
    tx = optax.sgd(lr_jax, momentum=0.9) if adam is None else adam(lr_jax)
    state = {"params": params, "stats": stats, "opt": tx.init(params)}

    def loss_fn(p, s, x, y):
        m = nnx.merge(graphdef, p, s, copy=True)
        return jaxloss.cross_entropy(m(x, train=True), y), nnx.state(m, nnx.BatchStat)

    def jax_step(batch):
        x, y = batch
        (loss, state["stats"]), g = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], state["stats"], parity.layout.nchw_to_nhwc(x), y
        )
        updates, state["opt"] = tx.update(g, state["opt"], state["params"])
        state["params"] = optax.apply_updates(state["params"], updates)
        model = nnx.merge(graphdef, state["params"], state["stats"])
        return parity.nnx_training_state(model, state["opt"], loss=loss)

    def torch_loop(model, lr):
        if adam is None:
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=lr)

        def step(batch):
            x, y = batch
            dtype = next(model.parameters()).dtype
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(
                model.train()(torch.from_numpy(x).to(dtype)), torch.from_numpy(y).long()
            )
            loss.backward()
            opt.step()
            return parity.torch_training_state(model, opt, loss=loss.detach())

        return step

    rng = np.random.default_rng(2)
    batches = [
        (rng.normal(size=(4, 2, 5, 5)).astype(np.float32), rng.integers(0, 4, 4)) for _ in range(3)
    ]
    return parity.compare_steps(
        jax_step, torch_loop(tm, 0.1), batches, reference_step=torch_loop(t64, 0.1)
    )


def test_compare_steps_passes_a_torch_exact_port_and_flags_what_differs():
    r = _steps(BatchNorm)
    assert r.ok, r
    names = {e.name for e in r.entries}
    assert {
        "step 3 loss",
        "step 3 opt/momentum_buffer/conv.weight",
        "step 3 buffer/bn.running_var",
    } <= names
    assert "step 1 buffer/bn.num_batches_tracked" in names
    # flax's own BatchNorm: the biased running variance, from the first step on
    r = _steps(nnx.BatchNorm)
    failed = {e.name: e.verdict.reason for e in r.failures}
    assert failed["step 1 buffer/bn.num_batches_tracked"] == "only on the torch side"
    assert "step 1 buffer/bn.running_var" in failed
    assert "step 1 buffer/bn.running_mean" not in failed and "step 1 loss" not in failed
    # a learning rate 1e-3 off on the JAX side: the first update differs (the rule is one-sided:
    # a torch side further from float64 than JAX would only make JAX look better)
    r = _steps(BatchNorm, lr_jax=0.1001)
    assert r.first_failure is not None and r.first_failure.name.startswith("step 1 param/")


def test_adam_steps_found_optax_float32_bias_correction_and_train_optim_is_torch_exact():
    # optax.adam computes 1 - b2**t in float32 from float32(0.999): the first updates are 6.4e-6
    # relative too small; a step of 0.1 on a zero bias is 6.7e-7 off, torch's own error 1e-8.
    from train import optim

    r = _steps(BatchNorm, adam=optax.adam)
    assert r.first_failure is not None and r.first_failure.name.startswith("step 1 param/")
    r = _steps(BatchNorm, adam=lambda lr: optim.create_optimizer("adam", learning_rate=lr))
    assert r.ok, r


def test_compare_steps_needs_a_yardstick():
    with pytest.raises(ValueError, match="reference_step="):
        parity.compare_steps(lambda b: {}, lambda b: {}, [0])
    r = parity.compare_steps(
        lambda b: {"a": 1.0}, lambda b: {"b": 1.0}, [0], tolerance=parity.Close()
    )
    assert [(e.name, e.verdict.reason) for e in r.entries] == [
        ("step 1 a", "only on the jax side"),
        ("step 1 b", "only on the torch side"),
    ]


def test_the_readme_example_runs_and_passes():
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Verify your own port: `jaxloss.parity`", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    namespace["test_dice_port"]()  # raises ParityError on a failure
    report = parity.compare(
        namespace["dice_jax"], namespace["dice_torch"],
        [parity.normal((32, 10), scale=3.0), parity.integers(32, high=10)], trials=2,
    )  # fmt: skip
    assert report.ok and len(report.entries) == 8


def test_compare_steps_rules_by_key_prefix_exclusions_and_the_summary():
    def jax_step(b):
        return {"loss": np.float32(b), "opt/noise": np.float32(b + 1e-3), "buffer/count": 1}

    def torch_step(b):
        return {"loss": np.float32(b), "opt/noise": np.float32(b)}

    strict = parity.Close(rtol=1e-6)
    r = parity.compare_steps(jax_step, torch_step, [1.0, 2.0], tolerance=strict)
    assert [e.name for e in r.failures] == [
        "step 1 buffer/count", "step 1 opt/noise", "step 2 buffer/count", "step 2 opt/noise",
    ]  # fmt: skip
    r = parity.compare_steps(
        jax_step, torch_step, [1.0, 2.0], exclude=["buffer/"],
        tolerance={"": strict, "opt/": parity.Close(rtol=1e-2)},
    )  # fmt: skip
    assert r.ok and len(r.entries) == 4, r
    assert "all passed" in r.summary(rows=2) and "... 2 more" in r.summary(rows=2)
    with pytest.raises(ValueError, match="needs reference_step="):
        parity.compare_steps(jax_step, torch_step, [1.0], tolerance={"opt/": parity.Reference()})


def test_the_maximum_catches_one_bad_element_an_rmse_dilutes_and_max_k_none_drops_it():
    x = np.random.default_rng(0).normal(size=100_000)
    x[12345] = 1.0

    def one_off(v):  # one element in 100,000 is 1e-4 relative off
        return (v * 1.0).at[12345].multiply(1 + 1e-4)

    r = parity.compare(one_off, lambda t: t * 1.0, [x], dtypes=("float32",))
    value = r.entries[0]
    assert "max error" in value.verdict.reason and value.verdict.abs_at == (12345,)
    r = parity.compare(
        one_off, lambda t: t * 1.0, [x], dtypes=("float32",),
        tolerance=parity.Reference(max_k=None),
    )  # fmt: skip
    assert r.entries[0].passed  # the RMSE alone does not see it: why the maximum is checked
    # below the floor (32 ulps of the largest value, here |x| ~ 4.3) one element passes
    r = parity.compare(
        lambda v: (v * 1.0).at[12345].multiply(1 + 3e-6), lambda t: t * 1.0, [x],
        dtypes=("float32",),
    )  # fmt: skip
    assert r.entries[0].passed


def test_importing_the_harness_imports_neither_torch_nor_flax():
    import subprocess
    import sys

    code = "import sys, jaxloss.parity; print('torch' in sys.modules, 'flax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_layouts_for_one_and_three_spatial_dimensions():
    for w, k in ((np.zeros((8, 3, 5)), (5, 3, 8)), (np.zeros((8, 3, 2, 4, 5)), (2, 4, 5, 3, 8))):
        assert parity.layout.conv_kernel_to_flax(w).shape == k
        assert parity.layout.conv_kernel_to_torch(np.zeros(k)).shape == w.shape
    x = np.arange(2 * 3 * 4.0).reshape(2, 3, 4)  # (N, C, L)
    np.testing.assert_array_equal(parity.layout.nchw_to_nhwc(x), np.moveaxis(x, 1, -1))


def test_a_counter_the_nnx_batchnorm_lacks_is_skipped_and_a_float_loss_takes_the_param_dtype():
    tm, _ = _pair()
    fm = _NnxNet(nnx.Rngs(0), nnx.BatchNorm)
    loaded = parity.torch_to_nnx(tm.state_dict(), fm)
    assert "bn.num_batches_tracked" not in loaded and "bn.running_var" in loaded
    np.testing.assert_array_equal(np.asarray(fm.bn.var[...]), tm.bn.running_var.numpy())
    state = parity.torch_training_state(tm, loss=1.5)  # loss.item(): a Python float
    assert state["loss"].dtype == np.float32


def test_the_jax_side_runs_jitted_and_an_untraceable_function_eagerly():
    """One compiled program per shape (values and vjp). A function with Python control flow on a
    value computed from an input it is not differentiated in (here: the labels) cannot be traced;
    it runs eagerly, and an error in it still fails the comparison."""
    traced = []

    def jittable(x):
        traced.append(isinstance(x, jax.core.Tracer))
        return jnp.tanh(x)

    def untraceable(x, y, scale=1.0):
        n = int(jnp.max(y)) + 1  # concrete only outside jit
        return jaxloss.cross_entropy(x[:, :n] * scale, y)

    def torch_fn(x, y):
        return torch.nn.functional.cross_entropy(x[:, : int(y.max()) + 1], y)

    labels = np.array([0, 2, 1, 2])
    parity.assert_parity(jittable, torch.tanh, [parity.normal(4)], dtypes=("float32",))
    assert traced and all(traced)
    parity.assert_parity(untraceable, torch_fn, [parity.normal((4, 5)), parity.fixed(labels)])
    wrong = parity.compare(
        lambda x, y: untraceable(x, y, 1.0001),
        torch_fn,
        [parity.normal((4, 5)), parity.fixed(labels)],
    )
    assert not wrong.ok
