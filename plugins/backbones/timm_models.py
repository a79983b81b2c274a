"""Any timm model as a backbone: ``timm:<model name>`` (random initialisation, no head).

timm's ``num_classes=0`` gives the pooled features; their width is the embedding size.
"""
from __future__ import annotations

import difflib

from torch import nn

from ssl_bench import Backbone, UserError, hookimpl


class TimmBackbone(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.embedding_dim = model.num_features

    def forward(self, x):
        return self.model(x)


def build_timm(input_shape, variant: str, drop_rate: float = 0.0) -> TimmBackbone:
    import timm

    if not timm.is_model(variant):
        close = difflib.get_close_matches(variant, timm.list_models(), n=3)
        raise UserError(f"timm has no model {variant!r}" + (f"; close: {', '.join(close)}" if close else "")
                        + ". `python -c 'import timm; print(timm.list_models())'` lists them.")
    return TimmBackbone(timm.create_model(variant, pretrained=False, num_classes=0, in_chans=input_shape[0],
                                          drop_rate=drop_rate))


@hookimpl
def ssl_bench_backbones():
    return [Backbone("timm:*", build_timm, "any timm model, e.g. timm:resnet18 (random init, features only)")]
