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
    """

    name: str
    build: Callable[..., nn.Module]
    help: str = ""

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

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.embedding_dim, num_classes)
        self.extras = nn.ModuleDict()

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
    return Classifier(backbone, num_classes)
