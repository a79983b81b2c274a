"""Backbones (images -> embeddings) and the classifier that puts a linear head on one.

The split follows timm: the backbone produces features (``embedding_dim`` wide) and the
classification head is separate, because LbA, CCLP and clustering act on the embedding.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .params import Param, params_of_function


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A backbone plugin: ``build(input_shape, **kwargs)`` returns an ``nn.Module`` mapping
    N x C x H x W float images to N x ``embedding_dim`` embeddings (attribute ``embedding_dim``).

    Keyword arguments of ``build`` (typed, defaulted) are the backbone's parameters, given in a
    grid under ``[base.backbones.NAME]``. A family (name ending in ``*``) gets ``variant``.

    Feature maps (optional): a module with ``feature_points`` (names of its stages, shallow to
    deep), ``forward_to(x, point)`` (images -> the N x C x h x w map at ``point``) and
    ``forward_from(map, point)`` (that map -> the embedding) lets methods put their own layers
    between the two (TAC-CCL's attention, SAN's spatial assembly). A module with
    ``load_pretrained_state(state)`` decides itself how a weights file fits it (e.g. an
    ImageNet classifier's file into the trunk only).

    ``pretrained_hint``: when set, a run of this backbone without ``pretrained`` gets a note
    that its weights are random (the papers that use it start from pretrained weights).
    """

    name: str
    build: Callable[..., nn.Module]
    help: str = ""
    pretrained_hint: str = ""

    @property
    def is_family(self) -> bool:
        return self.name.endswith("*")

    @property
    def params(self) -> list[Param]:
        return params_of_function(self.build, skip=("input_shape", "variant"))


class Classifier(nn.Module):
    """A backbone plus a linear head: ``embed(x)`` gives embeddings, ``head(z)`` logits,
    ``forward(x)`` both composed; ``features(x)`` the backbone's named intermediate features
    (a backbone that defines ``named_features(x) -> dict`` gives its own, ending with
    ``"embedding"``; otherwise only ``"embedding"``). ``extras`` holds the method's own modules (``Method.build_modules``);
    empty, it adds nothing to the state dict."""

    def __init__(self, backbone: nn.Module, num_classes: int, input_shape: tuple[int, int, int] | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embedding_dim, num_classes)
        self.extras = nn.ModuleDict()
        self.input_shape = input_shape

    @property
    def embedding_dim(self) -> int:
        return self.backbone.embedding_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if hasattr(self.backbone, "named_features"):
            return self.backbone.named_features(x)
        return {"embedding": self.backbone(x)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    # ------------------------------------------------------------ feature maps (see Backbone)
    @property
    def feature_points(self) -> tuple[str, ...]:
        """The backbone's stages a method can act on, shallow to deep (empty: none)."""
        return tuple(getattr(self.backbone, "feature_points", ()))

    def feature_point(self, point: str = "") -> str:
        """``point`` checked against the backbone's stages ("": the deepest)."""
        from .errors import UserError

        points = self.feature_points
        if not points:
            raise UserError(f"backbone {type(self.backbone).__name__} exposes no feature maps (feature_points, "
                            f"forward_to, forward_from), which this method acts on; use one that does, e.g. "
                            f"lba_convnet, cifar_resnet20, googlenet or resnet18")
        if not point:
            return points[-1]
        if point not in points:
            raise UserError(f"feature map {point!r} is not a stage of backbone {type(self.backbone).__name__}; "
                            f"its stages: {', '.join(points)}")
        return point

    def feature_map(self, x: torch.Tensor, point: str = "") -> torch.Tensor:
        """The N x C x h x w feature map at ``point`` ("": the deepest stage)."""
        point = self.feature_point(point)  # first: a backbone without feature maps is a UserError
        return self.backbone.forward_to(x, point)

    def embed_map(self, feature_map: torch.Tensor, point: str = "") -> torch.Tensor:
        """The rest of the backbone: a (changed) feature map at ``point`` -> the embedding."""
        point = self.feature_point(point)
        return self.backbone.forward_from(feature_map, point)

    @torch.no_grad()
    def feature_shape(self, point: str = "") -> tuple[int, int, int]:
        """(C, h, w) of the feature map at ``point`` for this network's input shape (one zero image
        through the network in eval mode: no batch-norm statistics change)."""
        if self.input_shape is None:
            raise ValueError("feature_shape needs the network's input_shape (models from create_model have it)")
        mode = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            return tuple(self.feature_map(torch.zeros(1, *self.input_shape, device=device), point).shape[1:])
        finally:
            self.train(mode)


def l2_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of squared weights of conv and linear layers, halved (TensorFlow's ``l2_loss``, the
    form the LbA paper's "L2 weight regulariser" takes); biases are not penalised."""
    terms = [m.weight.pow(2).sum() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return 0.5 * torch.stack(terms).sum()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_pretrained(backbone: nn.Module, path: str | Path) -> None:
    """Load a backbone's weights from a local file (a state_dict saved by ``torch.save``, or a
    dict holding one under ``"state_dict"``); every key must match (UserError otherwise)."""
    from .errors import UserError

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"pretrained = {str(path)!r}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"pretrained = {str(path)!r} is not a readable torch state_dict: {type(exc).__name__}: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if hasattr(backbone, "load_pretrained_state"):  # the backbone knows which of the file's weights it takes
        backbone.load_pretrained_state(state, where=f"pretrained = {str(path)!r}")
        return
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"pretrained = {str(path)!r} does not fit the backbone: {first}") from None


def create_model(name: str, input_shape: tuple[int, int, int], num_classes: int, *, registry=None,
                 pretrained: str | Path | None = None, **kwargs) -> Classifier:
    """A backbone plugin by name with a linear head (the one factory every run uses; ``timm:*``
    and ``torchvision:*`` names reach those libraries' models)::

        model = ssl_bench.create_model("lba_convnet", (1, 8, 8), 10, widths=[16, 32])

    ``kwargs`` are the backbone's parameters (validated as in a grid); ``pretrained`` a local
    weights file for the backbone."""
    from .params import validate
    from .registry import registry as installed

    spec, variant = (registry or installed()).backbone(name)
    args = validate(spec.params, kwargs, where=f"backbones.{name}.")
    if variant is not None:
        args["variant"] = variant
    backbone = spec.build(tuple(input_shape), **args)
    if pretrained:
        load_pretrained(backbone, pretrained)
    return Classifier(backbone, num_classes, tuple(input_shape))
