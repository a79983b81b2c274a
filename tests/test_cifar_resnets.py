"""ADC's ResNets (plugins/backbones/cifar_resnets.py): He et al.'s CIFAR ResNet-20/32 and the halved
ImageNet ResNet for STL-10.

Parameter counts are derived here layer by layer from the papers' layer lists (conv weights
c_in * c_out * k * k, no conv biases, two affine parameters per batch-norm channel, option-A
shortcuts free), not read back from the code, and compared with He et al.'s Table 6 (ResNet-20
0.27M, ResNet-32 0.46M, both 10-way) and, for the halved ImageNet ResNet, with torchvision's
ResNet-18 at full width.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ssl_bench import UserError
from ssl_bench.backbone import Classifier, create_model
from ssl_bench.registry import load_registry
from ssl_bench_plugins.backbones import cifar_resnets as cr

from conftest import cli


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k


def bn(c: int) -> int:
    return 2 * c


def fc(d_in: int, d_out: int) -> int:
    return d_in * d_out + d_out


def block(c_in: int, c_out: int, projection: bool) -> int:
    """A basic block: C(3)-BN-C(3)-BN, plus a 1x1 projection + BN if asked."""
    return (conv(c_in, c_out, 3) + bn(c_out) + conv(c_out, c_out, 3) + bn(c_out)
            + (conv(c_in, c_out, 1) + bn(c_out) if projection else 0))


def resnet_count(c_in: int, stem: int, widths, blocks: int, shortcut: str) -> int:
    """Stem C(stem,3)-BN, then per stage ``blocks`` basic blocks; option B projects where the width changes."""
    total = conv(c_in, stem, 3) + bn(stem)
    prev = stem
    for w in widths:
        total += block(prev, w, shortcut == "B" and prev != w) + (blocks - 1) * block(w, w, False)
        prev = w
    return total


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def registry():
    reg = load_registry()
    if "cifar_resnet20" not in reg.names("backbones"):  # not (yet) an entry point of the installed distribution
        reg = load_registry([("cifar_resnets_under_test", cr)])
    return reg


# ------------------------------------------------------------------------------------ registration
def test_registered_with_typed_defaulted_parameters(registry):
    names = [b.name for b in cr.ssl_bench_backbones()]
    assert names == ["cifar_resnet20", "cifar_resnet32", "imagenet_resnet_half"]
    params = {name: {p.name: (p.type, p.default) for p in registry.backbone(name)[0].params} for name in names}
    cifar = {"shortcut": (str, "A"), "embedding_dim": (int, 64), "dropout": (float, 0.0), "bn_momentum": (float, 0.1)}
    assert params["cifar_resnet20"] == params["cifar_resnet32"] == cifar
    assert params["imagenet_resnet_half"] == {"blocks": (int, 3), "shortcut": (str, "B"),
                                              "strides": (list[int], [1, 2, 2, 2]), "embedding_dim": (int, 64),
                                              "dropout": (float, 0.0), "bn_momentum": (float, 0.1)}


def test_listed_by_the_cli():
    listing = cli("list", "backbones")
    assert listing.returncode == 0, listing.stderr
    names = [line.split("\t")[0] for line in listing.stdout.splitlines()]
    assert {"cifar_resnet20", "cifar_resnet32", "imagenet_resnet_half"} <= set(names)


def test_create_model_and_bad_parameters(registry):
    model = create_model("cifar_resnet20", (3, 32, 32), 10, registry=registry, embedding_dim=0)
    assert n_params(model) == 269_722
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(UserError, match="shortcut"):
        create_model("cifar_resnet20", (3, 32, 32), 10, registry=registry, shortcut="C")
    with pytest.raises(UserError, match="embedding_dim"):
        create_model("cifar_resnet32", (3, 32, 32), 10, registry=registry, embedding_dim=-1)
    with pytest.raises(UserError, match="dropout"):
        create_model("cifar_resnet20", (3, 32, 32), 10, registry=registry, dropout=1.0)
    with pytest.raises(UserError, match="strides"):
        create_model("imagenet_resnet_half", (3, 64, 64), 10, registry=registry, strides=[1, 2, 2])
    with pytest.raises(UserError, match="blocks"):
        create_model("imagenet_resnet_half", (3, 64, 64), 10, registry=registry, blocks=0)
    with pytest.raises(UserError, match="2x2"):
        create_model("imagenet_resnet_half", (3, 1, 1), 10, registry=registry)


# ------------------------------------------------------------------------------------ counts
def test_resnet20_and_resnet32_parameter_counts_match_he_et_al():
    # ResNet-20 by hand (3 channels, option A): stem 432 + 32; stage 1: 3 x (2 x 2,304 + 2 x 32) = 14,016;
    # stage 2: (4,608 + 64 + 9,216 + 64) + 2 x 18,560 = 51,072; stage 3: (18,432 + 128 + 36,864 + 128)
    # + 2 x 73,984 = 203,520; total 269,072; He et al.'s 10-way FC adds 64 x 10 + 10 = 650.
    assert 432 + 32 + 14_016 + 51_072 + 203_520 == 269_072 == resnet_count(3, 16, (16, 32, 64), 3, "A")
    # ResNet-32: stage 1 5 x 4,672 = 23,360; stage 2 13,952 + 4 x 18,560 = 88,192; stage 3 55,552 + 4 x 73,984 = 351,488
    assert 432 + 32 + 23_360 + 88_192 + 351_488 == 463_504 == resnet_count(3, 16, (16, 32, 64), 5, "A")

    r20, r32 = cr.cifar_resnet20((3, 32, 32), embedding_dim=0), cr.cifar_resnet32((3, 32, 32), embedding_dim=0)
    assert (n_params(r20), n_params(r32)) == (269_072, 463_504)
    assert r20.embedding_dim == r32.embedding_dim == 64
    ten_way = (n_params(Classifier(r20, 10)), n_params(Classifier(r32, 10)))
    assert ten_way == (269_072 + fc(64, 10), 463_504 + fc(64, 10)) == (269_722, 464_154)
    assert (round(ten_way[0] / 1e6, 2), round(ten_way[1] / 1e6, 2)) == (0.27, 0.46)  # He et al. 2016, Table 6

    # the default: a linear FC(64) embedding after the pooling
    assert n_params(cr.cifar_resnet20((3, 32, 32))) == 269_072 + fc(64, 64) == 273_232
    assert n_params(cr.cifar_resnet32((3, 32, 32))) == 463_504 + fc(64, 64) == 467_664
    assert n_params(Classifier(cr.cifar_resnet20((3, 32, 32)), 10)) == 273_882
    # option B projects at the two widening blocks: 16*32 + 2*32 + 32*64 + 2*64 = 2,752 more
    assert n_params(cr.cifar_resnet20((3, 32, 32), shortcut="B", embedding_dim=0)) == 269_072 + 2_752 \
        == resnet_count(3, 16, (16, 32, 64), 3, "B")
    # MNIST: one input channel (the stem loses 2 x 16 x 9 weights)
    assert n_params(cr.cifar_resnet20((1, 28, 28), embedding_dim=0)) == resnet_count(1, 16, (16, 32, 64), 3, "A") \
        == 269_072 - 288


def test_imagenet_resnet_half_parameter_count():
    widths = (32, 64, 128, 256)
    # ResNet-18 layout (2 blocks) by hand: stem 864 + 64; stage 1 2 x 18,560 = 37,120; stage 2 57,728 + 73,984
    # = 131,712; stage 3 230,144 + 295,424 = 525,568; stage 4 919,040 + 1,180,672 = 2,099,712
    two = 864 + 64 + 37_120 + 131_712 + 525_568 + 2_099_712
    assert two == 2_795_040 == resnet_count(3, 32, widths, 2, "B")
    assert n_params(cr.imagenet_resnet_half((3, 64, 64), blocks=2, embedding_dim=0)) == two
    assert n_params(cr.imagenet_resnet_half((3, 64, 64), blocks=2)) == two + fc(256, 64) == 2_811_488
    # ADC's 3 blocks per stage: one more width-preserving block in each stage
    three = two + sum(block(w, w, False) for w in widths)
    assert three == 4_363_680 == resnet_count(3, 32, widths, 3, "B")
    model = cr.imagenet_resnet_half((3, 64, 64))
    assert n_params(model) == three + fc(256, 64) == 4_380_128
    assert n_params(Classifier(model, 10)) == 4_380_778

    # halving is what it says: torchvision's ResNet-18 (7x7 stem, 1000-way FC) has 4x the conv
    # weights and 2x the batch-norm parameters of the 2-block network's stages
    torchvision = pytest.importorskip("torchvision")
    stage_conv = sum(conv(c_in, w, 3) + conv(w, w, 3) + (conv(c_in, w, 1) if c_in != w else 0) + 2 * conv(w, w, 3)
                     for c_in, w in zip((32,) + widths[:-1], widths))
    stage_bn = two - 864 - 64 - stage_conv
    full = n_params(torchvision.models.resnet18(weights=None))
    assert full == 11_689_512 == conv(3, 64, 7) + bn(64) + 4 * stage_conv + 2 * stage_bn + fc(512, 1000)


def test_option_a_shortcuts_are_parameter_free_and_option_b_projects():
    a = cr.cifar_resnet20((3, 32, 32), shortcut="A")
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in a.modules())
    assert sum(isinstance(m, cr.ZeroPadShortcut) for m in a.modules()) == 2
    b = cr.cifar_resnet20((3, 32, 32), shortcut="B")
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in b.modules()) == 2
    half = cr.imagenet_resnet_half((3, 64, 64))
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in half.modules()) == 3  # stages 2-4


# ------------------------------------------------------------------------------------ behaviour
def test_zero_pad_shortcut_samples_every_other_pixel_and_appends_zero_channels():
    x = torch.arange(2 * 16 * 5 * 5, dtype=torch.float32).reshape(2, 16, 5, 5)
    out = cr.ZeroPadShortcut(16, 32, 2)(x)
    assert out.shape == (2, 32, 3, 3)  # ceil(5 / 2), as the strided 3x3 convolution
    assert torch.equal(out[:, :16], x[:, :, 0::2, 0::2])
    assert not out[:, 16:].any()


def test_block_is_post_activation_with_the_identity_added_before_the_last_relu():
    torch.manual_seed(0)
    blk = cr.BasicBlock(16, 32, 2, "A", 0.1).eval()
    nn.init.zeros_(blk.bn2.weight)  # silence the residual branch: out = ReLU(0 + shortcut(x))
    x = torch.randn(2, 16, 8, 8)
    expected = torch.relu(torch.cat([x[:, :, ::2, ::2], torch.zeros(2, 16, 4, 4)], dim=1))
    assert torch.equal(blk(x), expected)


@pytest.mark.parametrize("build, shape, stages", [
    (cr.cifar_resnet20, (3, 32, 32), [(16, 32), (32, 16), (64, 8)]),
    (cr.cifar_resnet32, (3, 32, 32), [(16, 32), (32, 16), (64, 8)]),
    (cr.cifar_resnet20, (1, 28, 28), [(16, 28), (32, 14), (64, 7)]),
    (cr.imagenet_resnet_half, (3, 64, 64), [(32, 32), (64, 16), (128, 8), (256, 4)]),
], ids=["resnet20", "resnet32", "resnet20-mnist", "imagenet-half"])
def test_feature_and_embedding_shapes(build, shape, stages):
    torch.manual_seed(0)
    model = build(shape)
    feats = model.named_features(torch.randn(2, *shape))
    assert list(feats) == ["stem"] + [f"stage{i}" for i in range(1, len(stages) + 1)] + ["pooled", "embedding"]
    for i, (c, s) in enumerate(stages, 1):
        assert feats[f"stage{i}"].shape == (2, c, s, s)
    assert feats["pooled"].shape == (2, stages[-1][0])
    assert feats["embedding"].shape == (2, 64) and model.embedding_dim == 64
    assert (feats["pooled"] >= 0).all()  # a mean of ReLU outputs; the linear FC makes signed embeddings
    assert (feats["embedding"] < 0).any()


def test_imagenet_resnet_half_stem_and_the_authors_strides():
    model = cr.imagenet_resnet_half((3, 64, 64), strides=[1, 1, 2, 2])
    feats = model.named_features(torch.zeros(1, 3, 64, 64))
    assert feats["stem"].shape == (1, 32, 32, 32)  # C(32,3,stride 1) then the 2x2 max-pool
    assert [feats[f"stage{i}"].shape[-1] for i in range(1, 5)] == [32, 32, 16, 8]
    stem_conv = model.stem[0]
    assert (stem_conv.kernel_size, stem_conv.stride) == ((3, 3), (1, 1))
    assert isinstance(model.stem[-1], nn.MaxPool2d) and model.stem[-1].kernel_size == 2
    assert cr.imagenet_resnet_half((3, 96, 96)).named_features(torch.zeros(1, 3, 96, 96))["stage4"].shape[-1] == 6


def test_without_embedding_fc_the_embedding_is_the_pooled_feature_and_dropout_is_training_only():
    torch.manual_seed(0)
    model = cr.cifar_resnet20((3, 32, 32), embedding_dim=0, dropout=0.5).eval()
    x = torch.randn(4, 3, 32, 32)
    feats = model.named_features(x)
    assert torch.equal(feats["embedding"], feats["pooled"]) and torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    zeroed = (model(x) == 0).float().mean().item()
    assert 0.3 < zeroed < 0.7  # about half the coordinates dropped (the pooled ReLU means are positive)


def test_initialisation_is_he_fan_out_and_seeded():
    torch.manual_seed(3)
    a = cr.cifar_resnet32((3, 32, 32))
    torch.manual_seed(3)
    b = cr.cifar_resnet32((3, 32, 32))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    last = a.stages[2][-1].conv2.weight  # 64 x 64 x 3 x 3: std sqrt(2 / (9 * 64))
    assert abs(last.std().item() - (2 / (9 * 64)) ** 0.5) < 0.01
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any()
               for m in a.modules() if isinstance(m, nn.BatchNorm2d))


def test_a_training_step_reaches_every_parameter():
    torch.manual_seed(0)
    model = Classifier(cr.imagenet_resnet_half((3, 16, 16), blocks=1), 10)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
