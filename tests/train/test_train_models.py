"""Shapes, dtypes, parameter counts and train/eval behaviour of train.models."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from train import models


def _abstract(name, num_classes, image_shape, **kw):
    return nnx.eval_shape(
        lambda: models.create_model(
            name, num_classes=num_classes, image_shape=image_shape, rngs=nnx.Rngs(0), **kw
        )
    )


def _num_params(model):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(
    "name,num_classes,image_shape,expected",
    [
        ("resnet18_cifar", 10, (32, 32, 3), 11_173_962),  # kuangliu / seed 004 ResNet18
        ("resnet34_cifar", 10, (32, 32, 3), 21_282_122),
        ("resnet18", 1000, (224, 224, 3), 11_689_512),  # torchvision.models.resnet18()
        ("resnet34", 1000, (224, 224, 3), 21_797_672),  # torchvision.models.resnet34()
        ("small_cnn", 10, (32, 32, 3), 59_430),  # seed 004 CNN: 456+12+2416+32+48120+7744+650
        ("lenet", 10, (28, 28, 1), 107_786),  # padded conv2: 16*7*7*120 FC input
    ],
)
def test_param_counts(name, num_classes, image_shape, expected):
    assert _num_params(_abstract(name, num_classes, image_shape)) == expected


@pytest.mark.parametrize(
    "name,image_shape,width",
    [
        ("resnet18_cifar", (8, 8, 1), 4),
        ("resnet34_cifar", (32, 32, 3), 4),
        ("resnet18", (64, 64, 3), 4),
        ("resnet34", (33, 33, 3), 4),
        ("small_cnn", (32, 32, 3), 6),
        ("small_cnn", (28, 28, 1), 6),
        ("lenet", (8, 8, 1), 6),
        ("lenet", (28, 28, 1), 6),
    ],
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_output_shape_and_dtypes(name, image_shape, width, dtype):
    model = _abstract(name, 7, image_shape, width=width, dtype=dtype)
    x = jnp.zeros((3, *image_shape), jnp.float32)
    out = nnx.eval_shape(lambda m, x: m(x, train=True, dropout_key=jax.random.key(0)), model, x)
    assert out.shape == (3, 7) and out.dtype == jnp.float32
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {
        jnp.dtype(jnp.float32)
    }


def test_torchvision_paths_and_batchnorm_settings():
    model = _abstract("resnet18", 1000, (224, 224, 3))
    paths = {
        ".".join(str(k) for k in path) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    # torchvision: conv1.weight, layer1.0.conv1.weight, layer2.0.downsample.0.weight,
    # layer2.0.downsample.1.weight, fc.weight / fc.bias
    for p in [
        "conv1.kernel",
        "bn1.scale",
        "bn1.bias",
        "layer1.0.conv1.kernel",
        "layer1.1.bn2.scale",
        "layer2.0.downsample.0.kernel",
        "layer2.0.downsample.1.scale",
        "layer4.1.conv2.kernel",
        "fc.kernel",
        "fc.bias",
    ]:
        assert p in paths, p
    assert not any(p.startswith("layer1.0.downsample") for p in paths)
    assert model.conv1.kernel.shape == (7, 7, 3, 64) and model.conv1.padding == ((3, 3), (3, 3))
    assert model.layer2[0].conv1.padding == ((1, 1), (1, 1))
    assert model.bn1.momentum == 0.1 and model.bn1.epsilon == 1e-5  # torch's convention
    assert model.fc.kernel.shape == (512, 1000)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        models.create_model("vgg", num_classes=10, image_shape=(8, 8, 1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="small_cnn needs images"):
        models.create_model("small_cnn", num_classes=10, image_shape=(8, 8, 1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="width"):
        models.create_model(
            "lenet", num_classes=10, image_shape=(8, 8, 1), width=0, rngs=nnx.Rngs(0)
        )


def test_train_mode_updates_batch_stats_and_dropout_uses_key():
    model = nnx.jit(
        lambda k: models.create_model(
            "small_cnn", num_classes=3, image_shape=(16, 16, 1), rngs=nnx.Rngs(k)
        )
    )(jax.random.key(0, impl="rbg"))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    x = jax.random.normal(jax.random.key(1), (4, 16, 16, 1)) * 3 + 1

    @functools.partial(jax.jit, static_argnames="train")
    def run(params, stats, x, key, train):
        m = nnx.merge(graphdef, params, stats)
        out = m(x, train=train, dropout_key=key)
        return out, nnx.state(m, nnx.BatchStat)

    out_eval, stats_eval = run(params, stats, x, jax.random.key(2), train=False)
    np.testing.assert_array_equal(stats_eval["bn1"]["mean"][...], np.zeros(6))
    out_a, stats_a = run(params, stats, x, jax.random.key(2), train=True)
    out_b, _ = run(params, stats, x, jax.random.key(3), train=True)
    # running mean moves 10% of the way to the batch mean (torch momentum 0.1)
    assert np.all(np.abs(np.asarray(stats_a["bn1"]["mean"][...])) > 0)
    assert not np.allclose(out_a, out_b)  # dropout depends on the key
    out_c, _ = run(params, stats, x, jax.random.key(2), train=True)
    np.testing.assert_array_equal(out_a, out_c)
