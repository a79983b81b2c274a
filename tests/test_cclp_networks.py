"""The CCLP paper's networks (Kamnitsas et al. 2018, §5 "Models"; layer lists of the authors'
reference code, see plugins/backbones/cclp_networks.py) layer by layer, against tables written out here.

Each expected table lists, module by module for the paper's input, (kind, in channels, out
channels, output C x H x W) for convolutions and pools, and the kind alone for the
noise / dropout / batch-norm / ELU modules, so a missing, extra or misplaced layer fails. The
parameter counts are the layer lists done in arithmetic here, not read back from the code.
"""
from __future__ import annotations

import math
import tomllib

import pytest
import torch
from torch import nn

from ssl_bench import UserError
from ssl_bench.engine import train_run
from ssl_bench.grid import expand, parse_grid
from ssl_bench.registry import load_registry
from ssl_bench_plugins.backbones import cclp_networks as cn
from ssl_bench_plugins.datasets.digits import load_digits


def conv_block(c_in, c_out, hw):
    """C(c_out,3) with "same" padding, then batch norm and ELU."""
    return [("conv", c_in, c_out, (c_out, hw, hw)), "bn", "elu"]


MNIST_TABLE = [  # 1 x 28 x 28
    "noise",
    *conv_block(1, 32, 28), *conv_block(32, 32, 28),
    ("pool", 32, 32, (32, 14, 14)),
    *conv_block(32, 64, 14), *conv_block(64, 64, 14),
    ("pool", 64, 64, (64, 7, 7)),
    *conv_block(64, 128, 7),
    "dropout2d",                                  # D2(0.1): one conv before the embedding, not right before it
    *conv_block(128, 128, 7),
    ("gap", 128, 128, (128,)),                    # 7 x 7 -> 1: the embedding
]

SVHN_TABLE = [  # 3 x 32 x 32
    "noise", "dropout2d",                         # N(0.05), D2(0.1) on the input channels
    *conv_block(3, 64, 32), *conv_block(64, 64, 32), *conv_block(64, 64, 32),
    ("pool", 64, 64, (64, 16, 16)), "dropout",
    *conv_block(64, 128, 16), *conv_block(128, 128, 16), *conv_block(128, 128, 16),
    ("pool", 128, 128, (128, 8, 8)), "dropout",
    *conv_block(128, 128, 8), *conv_block(128, 128, 8), *conv_block(128, 128, 8),
    ("gap", 128, 128, (128,)),
]

CIFAR_TABLE = [  # 3 x 32 x 32
    "noise",                                      # N(0.03), no input dropout
    *conv_block(3, 96, 32), *conv_block(96, 96, 32), *conv_block(96, 96, 32),
    ("pool", 96, 96, (96, 16, 16)), "dropout",
    *conv_block(96, 192, 16), *conv_block(192, 192, 16), *conv_block(192, 192, 16),
    ("pool", 192, 192, (192, 8, 8)), "dropout",
    *conv_block(192, 192, 8), *conv_block(192, 192, 8), *conv_block(192, 128, 8),
    ("gap", 128, 128, (128,)),
]

# Parameter counts by hand: a 3x3 conv from c_in to c_out has 9*c_in*c_out weights and no bias
# (batch norm follows; its shift is the bias); batch norm has a scale and a shift per channel
# (2*c_out); pooling, ELU, noise and dropout have none. Without batch norm: 9*c_in*c_out + c_out.
def conv_bn(c_in, c_out):
    return 9 * c_in * c_out + 2 * c_out


MNIST_PARAMS = (conv_bn(1, 32)            # 288 + 64
                + conv_bn(32, 32)         # 9,216 + 64
                + conv_bn(32, 64)         # 18,432 + 128
                + conv_bn(64, 64)         # 36,864 + 128
                + conv_bn(64, 128)        # 73,728 + 256
                + conv_bn(128, 128))      # 147,456 + 256 (the embedding conv)
SVHN_PARAMS = (conv_bn(3, 64) + 2 * conv_bn(64, 64)              # 1,856 + 2 * 36,992
               + conv_bn(64, 128) + 2 * conv_bn(128, 128)        # 73,984 + 2 * 147,712
               + 3 * conv_bn(128, 128))                          # 3 * 147,712 (the last one: the embedding)
CIFAR_PARAMS = (conv_bn(3, 96) + 2 * conv_bn(96, 96)             # 2,784 + 2 * 83,136
                + conv_bn(96, 192) + 2 * conv_bn(192, 192)       # 166,272 + 2 * 332,160
                + 2 * conv_bn(192, 192) + conv_bn(192, 128))     # 2 * 332,160 + 221,440
# without batch norm: minus one shift-and-scale pair per channel, plus one bias per channel
MNIST_PARAMS_NO_BN = MNIST_PARAMS - (32 + 32 + 64 + 64 + 128 + 128)
CIFAR_PARAMS_NO_BN = CIFAR_PARAMS - (3 * 96 + 5 * 192 + 128)

NETWORKS = {
    # name: (build, input shape, expected table, parameter count)
    "cclp_mnist": (cn.cclp_mnist, (1, 28, 28), MNIST_TABLE, MNIST_PARAMS),
    "cclp_svhn": (cn.cclp_svhn, (3, 32, 32), SVHN_TABLE, SVHN_PARAMS),
    "cclp_cifar10": (cn.cclp_cifar10, (3, 32, 32), CIFAR_TABLE, CIFAR_PARAMS),
}


def test_hand_counts_are_what_the_docstring_says():
    assert (MNIST_PARAMS, SVHN_PARAMS, CIFAR_PARAMS) == (286_880, 888_384, 1_885_408)
    assert (MNIST_PARAMS_NO_BN, CIFAR_PARAMS_NO_BN) == (286_432, 1_884_032)


KINDS = {cn.GaussianNoise: "noise", nn.Dropout2d: "dropout2d", nn.Dropout: "dropout", nn.BatchNorm2d: "bn",
         nn.ELU: "elu"}


def trace(net: cn.CCLPConvNet, input_shape) -> list:
    """Run one image through ``net`` module by module (in eval mode) and tabulate it."""
    net.eval()
    x = torch.zeros(1, *input_shape)
    rows = []
    modules = list(net.net)
    i = 0
    while i < len(modules):
        module, c_in = modules[i], x.shape[1]
        x = module(x)
        if isinstance(module, nn.Conv2d):
            assert module.kernel_size == (3, 3) and module.stride == (1, 1) and module.padding == (1, 1)
            rows.append(("conv", module.in_channels, module.out_channels, tuple(x.shape[1:])))
        elif isinstance(module, nn.MaxPool2d):
            assert module.kernel_size == 2 and module.stride == 2 and module.padding == 0
            rows.append(("pool", c_in, x.shape[1], tuple(x.shape[1:])))
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            assert isinstance(modules[i + 1], nn.Flatten)
            i += 1
            x = modules[i](x)
            rows.append(("gap", c_in, x.shape[1], tuple(x.shape[1:])))
        else:
            rows.append(KINDS[type(module)])
        i += 1
    return rows


@pytest.mark.parametrize("name", NETWORKS)
def test_layers_and_shapes(name):
    build, shape, table, _ = NETWORKS[name]
    assert trace(build(shape), shape) == table


@pytest.mark.parametrize("name", NETWORKS)
def test_parameter_count(name):
    build, shape, _, count = NETWORKS[name]
    assert sum(p.numel() for p in build(shape).parameters()) == count


def test_parameter_count_without_batch_norm():
    for build, shape, count in [(cn.cclp_mnist, (1, 28, 28), MNIST_PARAMS_NO_BN),
                                (cn.cclp_cifar10, (3, 32, 32), CIFAR_PARAMS_NO_BN)]:
        net = build(shape, batch_norm=False)
        assert sum(p.numel() for p in net.parameters()) == count
        assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
        assert all(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", NETWORKS)
def test_batch_norm_settings_and_no_redundant_bias(name):
    build, shape, _, _ = NETWORKS[name]
    net = build(shape)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(norms) == len(convs) and all(c.bias is None for c in convs)
    assert all(m.momentum == 0.01 and m.eps == 1e-3 and m.affine for m in norms)  # TensorFlow decay 0.99, eps 1e-3


def test_layer_lists_in_the_papers_notation():
    assert cn.describe(cn.mnist_layers()) == "N(0.3)-C(32,3)x2-P(2)-C(64,3)x2-P(2)-C(128,3)-D2(0.1)-C(128,3)-GAP"
    assert cn.describe(cn.salimans_layers()) == ("N(0.03)-C(96,3)x3-P(2)-D(0.5)-C(192,3)x3-P(2)-D(0.5)-C(192,3)x2-"
                                                 "C(128,3)-GAP")
    assert cn.describe(cn.salimans_layers((64, 128), 128, 0.05, 0.1)) == (
        "N(0.05)-D2(0.1)-C(64,3)x3-P(2)-D(0.5)-C(128,3)x3-P(2)-D(0.5)-C(128,3)x3-GAP")
    assert cn.cclp_svhn((3, 32, 32)).layers == cn.salimans_layers((64, 128), 128, 0.05, 0.1)


@pytest.mark.parametrize("name", NETWORKS)
def test_embedding_is_the_global_average_of_the_last_elu(name):
    """The embedding CCLP acts on is the last hidden layer: GAP of the last conv's ELU output
    (bounded below by -1), with no dropout after the last convolution."""
    build, shape, _, _ = NETWORKS[name]
    torch.manual_seed(0)
    net = build(shape).eval()
    assert net.embedding_dim == 128
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
    z = net(x)
    feature_maps = net.net[:-2](x)
    assert isinstance(net.net[-3], nn.ELU) and isinstance(net.net[-5], nn.Conv2d)
    torch.testing.assert_close(z, feature_maps.mean(dim=(2, 3)))
    assert z.shape == (3, 128) and (z >= -1).all() and not torch.allclose(z[0], z[1])
    assert not any(isinstance(m, (nn.Dropout, nn.Dropout2d)) for m in list(net.net)[-5:])


@pytest.mark.parametrize("name", NETWORKS)
def test_noise_and_dropout_act_in_training_mode_only(name):
    build, shape, _, _ = NETWORKS[name]
    torch.manual_seed(0)
    net = build(shape)
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(2))
    net.eval()
    torch.testing.assert_close(net(x), net(x))
    net.train()
    assert not torch.allclose(net(x), net(x))
    # the randomness comes from torch's seeded generator: same seed, same noise
    torch.manual_seed(5)
    a = net(x)
    torch.manual_seed(5)
    torch.testing.assert_close(net(x), a)


def test_without_noise_and_dropout_training_mode_is_deterministic():
    torch.manual_seed(0)
    net = cn.cclp_svhn((3, 32, 32), input_noise=0.0, input_channel_dropout=0.0, dropout=0.0).train()
    assert not any(isinstance(m, (cn.GaussianNoise, nn.Dropout, nn.Dropout2d)) for m in net.modules())
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(net(x), net(x))


def test_gaussian_noise_has_the_requested_std():
    noise = cn.GaussianNoise(0.3).train()
    torch.manual_seed(0)
    out = noise(torch.zeros(200_000))
    assert abs(out.std().item() - 0.3) < 0.003 and abs(out.mean().item()) < 0.003


@pytest.mark.parametrize("build, shape, gain", [(cn.cclp_mnist, (1, 28, 28), "he"),
                                                (cn.cclp_cifar10, (3, 32, 32), "glorot")])
def test_initialisation_follows_the_reference(build, shape, gain):
    """Uniform weights in +-sqrt(6 / fan_in) (He, mnist) or +-sqrt(6 / (fan_in + fan_out)) (Glorot)."""
    torch.manual_seed(0)
    for conv in [m for m in build(shape).modules() if isinstance(m, nn.Conv2d)]:
        fan_in, fan_out = conv.in_channels * 9, conv.out_channels * 9
        bound = math.sqrt(6 / fan_in) if gain == "he" else math.sqrt(6 / (fan_in + fan_out))
        w = conv.weight.detach()
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound


def test_widths_and_embedding_dim_parameters():
    net = cn.cclp_mnist((1, 28, 28), widths=[4, 8, 16], embedding_dim=6)
    assert net.embedding_dim == 6 and net.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 6)
    assert [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)] == [4, 4, 8, 8, 16, 6]
    net = cn.cclp_cifar10((3, 32, 32), widths=[8, 16], embedding_dim=5)
    assert [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)] == [8, 8, 8, 16, 16, 16, 16, 16, 5]


@pytest.mark.parametrize("build, kwargs, words", [
    (cn.cclp_mnist, {"widths": [32, 64]}, "3 positive ints"),
    (cn.cclp_mnist, {"widths": [32, 64, -1]}, "widths"),
    (cn.cclp_cifar10, {"widths": [96, 0]}, "2 positive ints"),
    (cn.cclp_cifar10, {"embedding_dim": 0}, "embedding_dim"),
    (cn.cclp_svhn, {"dropout": 1.0}, "dropout"),
    (cn.cclp_svhn, {"input_channel_dropout": -0.1}, "input_channel_dropout"),
    (cn.cclp_mnist, {"input_noise": -1.0}, "input_noise"),
    (cn.cclp_mnist, {"channel_dropout": 1.5}, "channel_dropout"),
])
def test_bad_parameters_are_user_errors(build, kwargs, words):
    shape = (1, 28, 28) if build is cn.cclp_mnist else (3, 32, 32)
    with pytest.raises(UserError, match=words):
        build(shape, **kwargs)


@pytest.mark.parametrize("build, too_small, smallest", [
    (cn.cclp_mnist, (1, 3, 28), (1, 4, 4)),       # two 2x2 pools: 4 -> 2 -> 1
    (cn.cclp_cifar10, (3, 32, 3), (3, 4, 4)),
])
def test_too_small_input_is_a_user_error(build, too_small, smallest):
    with pytest.raises(UserError, match="too small.*at least 4x4"):
        build(too_small)
    assert build(smallest).eval()(torch.zeros(2, *smallest)).shape == (2, 128)


def test_registered_with_their_parameters():
    registry = load_registry()
    for name in NETWORKS:
        spec, variant = registry.backbone(name)
        assert variant is None and registry.providers["backbones"][name].distribution == "ssl-bench"
    params = {p.name: p.default for p in registry.backbone("cclp_svhn")[0].params}
    assert params == {"embedding_dim": 128, "widths": [64, 128], "input_noise": 0.05, "input_channel_dropout": 0.1,
                      "dropout": 0.5, "batch_norm": True}
    assert {p.name: p.default for p in registry.backbone("cclp_mnist")[0].params} == {
        "embedding_dim": 128, "widths": [32, 64, 128], "input_noise": 0.3, "channel_dropout": 0.1, "batch_norm": True}


RUN_GRID = """
[base]
dataset = "digits"
backbone = "cclp_mnist"
method = "cclp"
steps = 4
eval_every = 2
labeled_per_class = 2
n_labeled = 50
n_unlabeled = 100
unlabeled_batch = 20
[base.backbones.cclp_mnist]
widths = "4,4,8"
embedding_dim = 8
[axes]
method = ["cclp", "lba", "supervised"]
"""


def test_short_runs_through_the_engine_on_8x8_digits():
    """The MNIST network on 8x8 images (8 -> 4 -> 2) with CCLP, LbA and supervised training."""
    torch.set_num_threads(1)
    registry = load_registry()
    dataset = load_digits(None)
    for run in expand(parse_grid(tomllib.loads(RUN_GRID)), registry):
        outcome = train_run(run.config, registry, dataset, torch.device("cpu"))
        assert outcome.status == "ok", outcome.error
        assert [c["step"] for c in outcome.curves] == [2, 4] and 0 <= outcome.metrics["test_error"] <= 100
        assert all(math.isfinite(c["loss"]) for c in outcome.curves)
