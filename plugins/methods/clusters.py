"""Embeddings of a whole image set and k-means on them, written once for the methods that
cluster or search their own embeddings while training: ADC's centroid initialisation, the
k-means pseudo-labels of TAC-CCL's baseline (and TAC-CCL, SAN), Snowball's and LMCS's sample
discovery and LMCS's J_D centres.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

#: k-means restarts (k-means++ initialisations) of :func:`kmeans_centres`
KMEANS_INIT = 3


@torch.no_grad()
def embed_images(net: nn.Module, images: torch.Tensor, normalise: Callable[[torch.Tensor], torch.Tensor],
                 embed: Callable[[torch.Tensor], torch.Tensor] | None = None, chunk: int = 1000) -> torch.Tensor:
    """float32 embeddings of uint8 ``images`` by ``embed`` (default ``net.embed``) of each
    normalised chunk, with ``net`` in eval mode (its BatchNorm statistics and dropout are not
    touched); ``net``'s mode is restored afterwards, also on an error."""
    embed = net.embed if embed is None else embed
    was_training = net.training
    net.eval()
    try:
        return torch.cat([embed(normalise(part)).float() for part in images.split(chunk)])
    finally:
        net.train(was_training)


def kmeans_centres(embeddings: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means centres (k x D) of the embeddings: scikit-learn, k-means++, KMEANS_INIT restarts, seeded."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=KMEANS_INIT, random_state=seed).fit(embeddings).cluster_centers_


__all__ = ["KMEANS_INIT", "embed_images", "kmeans_centres"]
