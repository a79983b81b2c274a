"""The LbA networks (paper §4, §4.2, §4.3) layer by layer, against tables written out by hand.

Each expected table lists (type, in channels, out channels, kernel, stride, output C x H x W)
for the paper's input; the parameter counts are the paper's layer lists done in arithmetic here,
not read back from the code under test.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ssl_bench import UserError
from ssl_bench_plugins.backbones import lba_convnet as lc

# ---- the paper's layer lists, written out for the paper's inputs ----------------------------------

MNIST_TABLE = [  # 1 x 28 x 28
    ("conv", 1, 32, 3, 1, (32, 28, 28)),
    ("conv", 32, 32, 3, 1, (32, 28, 28)),
    ("pool", 32, 32, 2, 2, (32, 14, 14)),
    ("conv", 32, 64, 3, 1, (64, 14, 14)),
    ("conv", 64, 64, 3, 1, (64, 14, 14)),
    ("pool", 64, 64, 2, 2, (64, 7, 7)),
    ("conv", 64, 128, 3, 1, (128, 7, 7)),
    ("conv", 128, 128, 3, 1, (128, 7, 7)),
    ("pool", 128, 128, 2, 2, (128, 3, 3)),      # 7 -> 3: pooling floors (TensorFlow "VALID")
    ("fc", 128 * 3 * 3, 128, None, None, (128,)),
]

SVHN_TABLE = [  # 3 x 32 x 32
    ("conv", 3, 32, 3, 1, (32, 32, 32)),
    ("conv", 32, 32, 3, 1, (32, 32, 32)),
    ("conv", 32, 32, 3, 1, (32, 32, 32)),
    ("pool", 32, 32, 2, 2, (32, 16, 16)),
    ("conv", 32, 64, 3, 1, (64, 16, 16)),
    ("conv", 64, 64, 3, 1, (64, 16, 16)),
    ("conv", 64, 64, 3, 1, (64, 16, 16)),
    ("pool", 64, 64, 2, 2, (64, 8, 8)),
    ("conv", 64, 128, 3, 1, (128, 8, 8)),
    ("conv", 128, 128, 3, 1, (128, 8, 8)),
    ("conv", 128, 128, 3, 1, (128, 8, 8)),
    ("pool", 128, 128, 2, 2, (128, 4, 4)),
    ("fc", 128 * 4 * 4, 128, None, None, (128,)),
]

STL10_TABLE = [  # 3 x 96 x 96
    ("conv", 3, 32, 3, 1, (32, 96, 96)),
    ("conv", 32, 64, 3, 2, (64, 48, 48)),      # stride 2, "same": ceil(96 / 2)
    ("pool", 64, 64, 3, 2, (64, 23, 23)),      # P(3), stride 2, no padding: (48 - 3) // 2 + 1
    ("conv", 64, 64, 3, 1, (64, 23, 23)),
    ("conv", 64, 128, 3, 1, (128, 23, 23)),
    ("pool", 128, 128, 2, 2, (128, 11, 11)),
    ("conv", 128, 128, 3, 1, (128, 11, 11)),
    ("conv", 128, 256, 3, 1, (256, 11, 11)),
    ("pool", 256, 256, 2, 2, (256, 5, 5)),
    ("fc", 256 * 5 * 5, 128, None, None, (128,)),
]

# the default digits grid: lba_convnet widths=[16, 32] on 1 x 8 x 8
DIGITS_TABLE = [
    ("conv", 1, 16, 3, 1, (16, 8, 8)),
    ("conv", 16, 16, 3, 1, (16, 8, 8)),
    ("pool", 16, 16, 2, 2, (16, 4, 4)),
    ("conv", 16, 32, 3, 1, (32, 4, 4)),
    ("conv", 32, 32, 3, 1, (32, 4, 4)),
    ("pool", 32, 32, 2, 2, (32, 2, 2)),
    ("fc", 32 * 2 * 2, 128, None, None, (128,)),
]

# Parameter counts by hand: a k x k conv from c_in to c_out has k*k*c_in*c_out weights + c_out
# biases; an FC from n to m has n*m weights + m biases; pooling and ELU have none.
MNIST_PARAMS = (3 * 3 * 1 * 32 + 32          # 320
                + 3 * 3 * 32 * 32 + 32       # 9,248
                + 3 * 3 * 32 * 64 + 64       # 18,496
                + 3 * 3 * 64 * 64 + 64       # 36,928
                + 3 * 3 * 64 * 128 + 128     # 73,856
                + 3 * 3 * 128 * 128 + 128    # 147,584
                + 128 * 3 * 3 * 128 + 128)   # 147,584 (FC on 128 x 3 x 3)
SVHN_PARAMS = (3 * 3 * 3 * 32 + 32                 # 896
               + 2 * (3 * 3 * 32 * 32 + 32)        # 18,496
               + 3 * 3 * 32 * 64 + 64              # 18,496
               + 2 * (3 * 3 * 64 * 64 + 64)        # 73,856
               + 3 * 3 * 64 * 128 + 128            # 73,856
               + 2 * (3 * 3 * 128 * 128 + 128)     # 295,168
               + 128 * 4 * 4 * 128 + 128)          # 262,272 (FC on 128 x 4 x 4)
STL10_PARAMS = (3 * 3 * 3 * 32 + 32          # 896
                + 3 * 3 * 32 * 64 + 64       # 18,496 (the strided conv)
                + 3 * 3 * 64 * 64 + 64       # 36,928
                + 3 * 3 * 64 * 128 + 128     # 73,856
                + 3 * 3 * 128 * 128 + 128    # 147,584
                + 3 * 3 * 128 * 256 + 256    # 295,168
                + 256 * 5 * 5 * 128 + 128)   # 819,328 (FC on 256 x 5 x 5)
DIGITS_PARAMS = (3 * 3 * 1 * 16 + 16 + 3 * 3 * 16 * 16 + 16 + 3 * 3 * 16 * 32 + 32 + 3 * 3 * 32 * 32 + 32
                 + 32 * 2 * 2 * 128 + 128)

NETWORKS = {
    # name: (build, input shape, expected table, parameter count)
    "lba_mnist": (lambda s: lc.lba_mnist(s), (1, 28, 28), MNIST_TABLE, MNIST_PARAMS),
    "lba_svhn": (lambda s: lc.lba_svhn(s), (3, 32, 32), SVHN_TABLE, SVHN_PARAMS),
    "lba_stl10": (lambda s: lc.lba_stl10(s), (3, 96, 96), STL10_TABLE, STL10_PARAMS),
    "lba_convnet_16_32": (lambda s: lc.lba_convnet(s, widths=[16, 32]), (1, 8, 8), DIGITS_TABLE, DIGITS_PARAMS),
}


def test_hand_counts_are_what_the_comments_say():
    assert (MNIST_PARAMS, SVHN_PARAMS, STL10_PARAMS, DIGITS_PARAMS) == (434_016, 743_040, 1_392_256, 32_880)


def _trace(net: nn.Module, input_shape) -> tuple[list[tuple], list[type]]:
    """Run one image through ``net`` module by module: the table of conv/pool/fc layers and
    the sequence of module types (to check where the ELUs are)."""
    x = torch.zeros(1, *input_shape)
    rows, kinds = [], []
    modules = list(net.features) + list(net.embedding)
    for module in modules:
        channels_in = x.shape[1]
        x = module(x)
        kinds.append(type(module))
        shape = tuple(x.shape[1:])
        if isinstance(module, nn.Conv2d):
            rows.append(("conv", module.in_channels, module.out_channels, module.kernel_size[0], module.stride[0], shape))
            assert module.kernel_size[0] == module.kernel_size[1] and module.stride[0] == module.stride[1]
        elif isinstance(module, nn.MaxPool2d):
            rows.append(("pool", channels_in, x.shape[1], module.kernel_size, module.stride, shape))
        elif isinstance(module, nn.Linear):
            rows.append(("fc", module.in_features, module.out_features, None, None, shape))
        else:
            assert isinstance(module, (nn.ELU, nn.Flatten)), f"unexpected layer {module}"
    return rows, kinds


@pytest.mark.parametrize("name", NETWORKS)
def test_layers_and_shapes(name):
    build, shape, table, _ = NETWORKS[name]
    rows, _ = _trace(build(shape), shape)
    assert rows == table


@pytest.mark.parametrize("name", NETWORKS)
def test_parameter_count(name):
    build, shape, _, count = NETWORKS[name]
    assert sum(p.numel() for p in build(shape).parameters()) == count


@pytest.mark.parametrize("name", NETWORKS)
def test_elu_after_every_conv_and_the_fc(name):
    build, shape, _, _ = NETWORKS[name]
    _, kinds = _trace(build(shape), shape)
    weighted = [i for i, k in enumerate(kinds) if k in (nn.Conv2d, nn.Linear)]
    assert weighted and all(kinds[i + 1] is nn.ELU for i in weighted)
    assert kinds.count(nn.ELU) == len(weighted)          # and nowhere else
    assert kinds[-1] is nn.ELU                           # the embedding itself is ELU-activated


@pytest.mark.parametrize("name", NETWORKS)
def test_forward_gives_batch_by_128(name):
    build, shape, _, _ = NETWORKS[name]
    net = build(shape)
    assert net.embedding_dim == 128
    out = net(torch.rand(5, *shape, generator=torch.Generator().manual_seed(0)))
    assert out.shape == (5, 128) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and (out >= -1).all()     # ELU's range
    assert not torch.allclose(out[0], out[1])                  # rows depend on their own image


@pytest.mark.parametrize("build", [lc.lba_mnist, lc.lba_svhn, lc.lba_stl10])
def test_embedding_dim_parameter(build):
    shape = {lc.lba_mnist: (1, 28, 28), lc.lba_svhn: (3, 32, 32), lc.lba_stl10: (3, 96, 96)}[build]
    net = build(shape, embedding_dim=64)
    assert net.embedding_dim == 64 and net(torch.zeros(2, *shape)).shape == (2, 64)
    with pytest.raises(UserError, match="embedding_dim"):
        build(shape, embedding_dim=0)


@pytest.mark.parametrize("build, too_small, smallest", [
    (lc.lba_mnist, (1, 7, 7), (1, 8, 8)),          # three 2x2 pools: 8 -> 4 -> 2 -> 1
    (lc.lba_svhn, (3, 32, 7), (3, 8, 8)),
    (lc.lba_stl10, (3, 16, 16), (3, 17, 17)),      # 17 -> 9 (stride-2 conv) -> 4 (P(3)) -> 2 -> 1
    (lc.lba_stl10, (3, 96, 16), (3, 17, 96)),
    (lambda s: lc.lba_convnet(s, widths=[16, 32]), (1, 3, 3), (1, 4, 4)),
])
def test_too_small_input_is_a_user_error(build, too_small, smallest):
    with pytest.raises(UserError, match="too small.*at least"):
        build(too_small)
    assert build(smallest)(torch.zeros(2, *smallest)).shape == (2, 128)


def test_family_expresses_the_paper_networks():
    """lba_mnist / lba_svhn are the lba_convnet family with 2 / 3 convs per stage: same layers,
    same parameter shapes, and the same initialisation from the same seed."""
    for paper, convs, shape in [(lc.lba_mnist, 2, (1, 28, 28)), (lc.lba_svhn, 3, (3, 32, 32))]:
        torch.manual_seed(0)
        a = paper(shape)
        torch.manual_seed(0)
        b = lc.lba_convnet(shape, widths=[32, 64, 128], convs_per_stage=convs)
        assert _trace(a, shape) == _trace(b, shape)
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_family_rejects_bad_parameters():
    with pytest.raises(UserError, match="widths must be a list of int"):  # a grid's value, validated before the factory
        specs_by_name()["lba_convnet"].params[0].check("16,x", "backbones.lba_convnet.")
    with pytest.raises(UserError, match="positive"):
        lc.lba_convnet((1, 8, 8), widths=[16, 0])
    with pytest.raises(UserError, match="positive"):
        lc.lba_convnet((1, 8, 8), convs_per_stage=0)


def test_registered_with_paper_notation():
    specs = {b.name: b for b in lc.ssl_bench_backbones()}
    assert set(specs) == {"lba_convnet", "lba_mnist", "lba_svhn", "lba_stl10"}
    assert "C(32,3)-C(64,3,stride 2)-P(3)-C(64,3)-C(128,3)-P(2)-C(128,3)-C(256,3)-P(2)-FC(128)" in specs["lba_stl10"].help
    assert [p.name for p in specs["lba_stl10"].params] == ["embedding_dim"]
    assert [p.name for p in specs["lba_convnet"].params] == ["widths", "convs_per_stage", "embedding_dim"]


def test_weight_decay_is_documented_as_the_papers_regulariser():
    doc = lc.__doc__
    assert "weight_decay = 1e-4" in doc and "§4" in doc


def specs_by_name():
    return {spec.name: spec for spec in lc.ssl_bench_backbones()}
