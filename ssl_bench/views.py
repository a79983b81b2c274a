"""Views: the augmented copies of a batch a method asks for, built by named augmentation
pipelines on the training device.

An augmentation pipeline plugin (hook ``ssl_bench_augmentations``) is an
:class:`Augmentation`: a name and ``apply(x, generator) -> x`` mapping a float batch
N x C x H x W in [0, 1] on the training device to a batch of the same shape, drawing all its
randomness from ``generator`` (per sample, batched: no per-sample Python). Two names are
always there: ``"none"`` (the batch as is) and ``"standard"`` (the data set's own
augmentation, ``ImageDataset.augment``; the identity for a data set that defines none). A data
set may define its own version of any view name (``ImageDataset.pipelines``: digits and SVHN
have a "weak" without the horizontal flip, which would turn their symbols into others).

A method declares the views of each batch it needs as a class attribute, e.g. FixMatch::

    views = {"unlabeled": ("weak", "strong")}

and finds them in ``batch.views["unlabeled"]`` (a list, in that order); the plain
``batch.x_labeled`` / ``batch.x_unlabeled`` are the ``protocol`` view (the data set's
standard augmentation when ``augment = true``, else none). Names are pipeline names, or the
aliases of :data:`ALIASES`. Every view is drawn from the same sampled images (the same
``batch.idx_*``), each with its own random draws.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

#: view names that stand for other pipelines: weak = flip + translate (FixMatch's weak
#: augmentation), strong = RandAugment + Cutout (FixMatch's strong augmentation)
ALIASES = {"weak": "flip_translate", "strong": "randaugment_cutout"}
ROLES = ("labeled", "unlabeled")


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """An augmentation pipeline plugin: ``apply(x, generator)``, see the module docstring."""

    name: str
    apply: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    help: str = ""


def identity(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return x


def view_pipeline(name: str, registry, domain=None) -> Callable | None:
    """The pipeline a view name stands for on a domain (a data set on the device, or None when
    only checking the name): the data set's own pipeline of that name if it has one (e.g. its
    "weak"), else None for ``"none"``, the data set's standard augmentation for ``"standard"``,
    else the registered pipeline (aliases ``weak``/``strong`` resolved first; an unknown name is
    a UserError listing the installed ones)."""
    own = getattr(domain, "pipelines", None) or {}
    if name in own:
        return own[name]
    name = ALIASES.get(name, name)
    if name in own:
        return own[name]
    if name == "none":
        return None
    if name == "standard":
        return getattr(domain, "standard_augment", None)
    return registry.augmentation(name).apply
