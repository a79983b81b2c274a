"""The backbones of deep metric learning (seed 003 ch. 4 §4.4.2, ch. 5 §5.4.2-5.4.3): torchvision's
GoogLeNet (Szegedy et al. 2015) and ResNet-18 (He et al. 2016), each cut before its classifier,
globally average-pooled and followed by "a fully connected layer ... as the embedding layer"
(§4.4.2; 512-d supervised, 128-d unsupervised in ch. 5).

- ``googlenet``: the trunk up to ``inception_5b`` (1024 channels; 7 x 7 at 224 x 224), the one
  TAC-CCL puts its CBAM attention after (§4.4.2). Stages a method can act on: ``inception_3b``,
  ``inception_4e``, ``inception_5b``. Auxiliary classifiers off; dropout off (the embedding is the
  FC of the pooled trunk).
- ``resnet18``: torchvision's ResNet-18 (7 x 7 stem, 4 stages of 2 basic blocks), the network of
  TAC-CCL's Table 4.3 and SAN's Table 5.3 "without pre-trained parameters". Stages ``layer1`` ..
  ``layer4``.

Weights: random unless the run names a local file (``pretrained = "PATH"``, its sha256 stored in
the row). The file may be torchvision's ImageNet state dict of the same model
(``googlenet-1378be20.pth``, ``resnet18-f37072fd.pth``): its classifier (``fc.*``) and
GoogLeNet's auxiliary classifiers (``aux1.*``, ``aux2.*``) are dropped and every trunk weight
must be present; or a state dict of this backbone itself (trunk and embedding). A run without
one gets a note that its weights are random: the papers start GoogLeNet from ImageNet.
BN-Inception (the MS paper's network) is in neither torchvision nor timm and is not provided.

Grey images are repeated to three channels. Inputs are the data set's own normalisation (not
ImageNet's: a pretrained file then sees differently scaled inputs; ``transform_input`` off).
"""
from __future__ import annotations

import torch
from torch import nn

from ssl_bench import Backbone, UserError, hookimpl

GOOGLENET_STAGES = {"inception_3b": "inception3b", "inception_4e": "inception4e", "inception_5b": "inception5b"}
RESNET18_STAGES = {"layer1": "layer1", "layer2": "layer2", "layer3": "layer3", "layer4": "layer4"}


class TrunkEmbedding(nn.Module):
    """A torchvision classifier's trunk (its children up to ``last``), global average pooling and
    an embedding FC; ``stages`` maps our feature-point names to the trunk's child names."""

    def __init__(self, model: nn.Module, last: str, stages: dict[str, str], channels: int, in_channels: int,
                 embedding_dim: int):
        super().__init__()
        names = [n for n, _ in model.named_children()]
        self.trunk = nn.Sequential()
        for name in names[:names.index(last) + 1]:
            self.trunk.add_module(name, getattr(model, name))
        self.embedding = nn.Linear(channels, embedding_dim)
        self.embedding_dim = embedding_dim
        self.repeat = 3 if in_channels == 1 else 1
        trunk_names = [n for n, _ in self.trunk.named_children()]
        self._stage_end = {point: trunk_names.index(child) + 1 for point, child in stages.items()}
        self.feature_points = tuple(stages)

    def forward_to(self, x: torch.Tensor, point: str) -> torch.Tensor:
        x = x.repeat(1, self.repeat, 1, 1) if self.repeat > 1 else x
        return self.trunk[:self._stage_end[point]](x)

    def forward_from(self, feature_map: torch.Tensor, point: str) -> torch.Tensor:
        x = self.trunk[self._stage_end[point]:](feature_map)
        return self.embedding(x.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.forward_to(x, self.feature_points[-1]), self.feature_points[-1])

    def load_pretrained_state(self, state: dict, where: str) -> None:
        """torchvision's ImageNet file of the model (classifier and auxiliary heads dropped; the
        embedding stays as initialised) or a state dict of this backbone."""
        if any(k.startswith("trunk.") for k in state):
            missing, unexpected = self.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise UserError(f"{where} does not fit the backbone: missing {missing[:3]}, unexpected {unexpected[:3]}")
            return
        drop = ("fc.", "aux1.", "aux2.")
        trunk_state = {k: v for k, v in state.items() if not k.startswith(drop)}
        own = self.trunk.state_dict()
        missing = [k for k in own if k not in trunk_state]
        unexpected = [k for k in trunk_state if k not in own]
        if missing or unexpected:
            raise UserError(f"{where} does not fit the backbone's trunk: missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]} (expected torchvision's ImageNet file of this model)")
        try:
            self.trunk.load_state_dict(trunk_state, strict=True)
        except RuntimeError as exc:
            raise UserError(f"{where} does not fit the backbone's trunk: {str(exc).strip().splitlines()[0]}") from None


def _channels(input_shape) -> int:
    channels = input_shape[0]
    if channels not in (1, 3):
        raise UserError(f"takes 1- or 3-channel images, got {channels} channels")
    return channels


def googlenet(input_shape, embedding_dim: int = 512) -> TrunkEmbedding:
    """GoogLeNet to inception_5b, average pooling, FC(``embedding_dim``) (512: §4.4.2, §5.4.2)."""
    from torchvision.models import googlenet as tv_googlenet

    if embedding_dim < 1:
        raise UserError(f"backbones.googlenet.embedding_dim must be positive, got {embedding_dim}")
    model = tv_googlenet(weights=None, aux_logits=False, init_weights=True, transform_input=False)
    return TrunkEmbedding(model, "inception5b", GOOGLENET_STAGES, 1024, _channels(input_shape), embedding_dim)


def resnet18(input_shape, embedding_dim: int = 128) -> TrunkEmbedding:
    """ResNet-18 to layer4, average pooling, FC(``embedding_dim``) (128: §5.4.3's unsupervised runs)."""
    from torchvision.models import resnet18 as tv_resnet18

    if embedding_dim < 1:
        raise UserError(f"backbones.resnet18.embedding_dim must be positive, got {embedding_dim}")
    return TrunkEmbedding(tv_resnet18(weights=None), "layer4", RESNET18_STAGES, 512, _channels(input_shape),
                          embedding_dim)


@hookimpl
def ssl_bench_backbones():
    return [
        Backbone("googlenet", googlenet, "GoogLeNet (torchvision) to inception_5b + FC embedding: TAC-CCL / SAN's "
                 "network; ImageNet weights from a local file (pretrained)",
                 pretrained_hint="TAC-CCL and SAN start GoogLeNet from ImageNet weights: set pretrained to "
                                 "torchvision's googlenet-1378be20.pth"),
        Backbone("resnet18", resnet18, "ResNet-18 (torchvision) + FC embedding: TAC-CCL Table 4.3 / SAN Table 5.3, "
                 "from scratch"),
    ]
