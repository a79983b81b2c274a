"""Any torchvision classification model as a backbone: ``torchvision:<model name>`` (random
initialisation; the model's last linear layer is removed, so its input width is the embedding
size). ``torchvision.models.list_models(module=torchvision.models)`` lists the names.

Grey images (one channel) are repeated to three channels, since torchvision's models expect RGB.
Pretrained weights come, as for every backbone, from a local file (``pretrained = "PATH"``).
"""
from __future__ import annotations

import difflib

from torch import nn

from ssl_bench import Backbone, UserError, hookimpl


class TorchvisionBackbone(nn.Module):
    def __init__(self, model: nn.Module, embedding_dim: int, channels: int):
        super().__init__()
        self.model = model
        self.embedding_dim = embedding_dim
        self.repeat = 3 if channels == 1 else 1

    def forward(self, x):
        return self.model(x.repeat(1, self.repeat, 1, 1) if self.repeat > 1 else x)


def _drop_last_linear(model: nn.Module, variant: str) -> int:
    """Replace the model's last ``nn.Linear`` (its classifier) by the identity; its input width."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"torchvision model {variant!r} has no linear classifier to remove; use a classification model")
    name, last = linears[-1]
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Identity())
    return last.in_features


def build_torchvision(input_shape, variant: str) -> TorchvisionBackbone:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if variant not in names:
        close = difflib.get_close_matches(variant, names, n=3)
        raise UserError(f"torchvision has no classification model {variant!r}"
                        + (f"; close: {', '.join(close)}" if close else ""))
    channels = input_shape[0]
    if channels not in (1, 3):
        raise UserError(f"torchvision:{variant} takes 1- or 3-channel images, got {channels} channels")
    model = torchvision.models.get_model(variant, weights=None)
    return TorchvisionBackbone(model, _drop_last_linear(model, variant), channels)


@hookimpl
def ssl_bench_backbones():
    return [Backbone("torchvision:*", build_torchvision,
                     "any torchvision classification model, e.g. torchvision:resnet18 (random init, classifier removed)")]
