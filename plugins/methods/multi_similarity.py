"""Multi-Similarity loss with a cross-batch memory: supervised deep metric learning (``ms_supervised``),
the upper reference of the metric-learning tables and the loss every method of seed 003 ch. 4-5
builds on.

- MS loss (Wang et al., "Multi-Similarity Loss with General Pair Weighting", CVPR 2019; the
  dissertation's eq. 5.9): for each anchor k of the batch, with cosine similarities S,

      L = 1/N_B sum_k { 1/alpha log[1 + sum_{p in P_k} exp(-alpha (S_kp - base))]
                      + 1/beta  log[1 + sum_{q in N_k} exp( beta (S_kq - base))] },

  P_k / N_k the positive / negative pairs the MS miner keeps (a negative is kept if it is more
  similar than the least similar positive minus ``epsilon``; a positive if it is less similar than
  the most similar negative plus ``epsilon``). pytorch-metric-learning's ``MultiSimilarityLoss``
  (alpha = lambda_P, beta = lambda_N, base = delta) and ``MultiSimilarityMiner``.
- Cross-batch memory (XBM; Wang et al., CVPR 2020; "memory bank", §4.3.2): a FIFO of the last
  ``memory_size`` embeddings and their labels; from step ``memory_start`` on, each batch's
  anchors are compared with the whole memory ("the current mini-batch has access to the whole
  training set", §4.3.2). pytorch-metric-learning's ``CrossBatchMemory``. ``memory_size = 0``:
  the plain in-batch MS loss.

Batches are the labeled sampler's: the P x K sampler (``sampler = "p_k"``, ``labeled_per_class`` =
K = 5 images of ``classes_per_batch`` = P classes: "we follow the data sampling strategy in
multi-similarity loss to sample 5 images per class", §4.4.2). The labels are the task's (this
method) or the method's own (``ms_baseline``: k-means pseudo-labels). Defaults: alpha 2, beta 50,
base 0.5, epsilon 0.1 (the MS paper's and pytorch-metric-learning's; the dissertation "follow[s]
[70] for the setting of these hyper-parameters").

Subclasses change the embedding path (:meth:`embed`: attention, spatial assembly) and add loss
terms; the metric term is always :meth:`metric_loss` on the method's embeddings.
"""
from __future__ import annotations

import torch

from ssl_bench import Method, hookimpl
from ssl_bench.params import hyperparameter


class MultiSimilarity(Method):
    """MS loss (eq. 5.9) on the labeled batch's embeddings, against a cross-batch memory."""

    name = "ms_supervised"
    uses_unlabeled = False

    alpha: float = hyperparameter(2.0, gt=0, help="MS loss lambda_P, the positive pairs' scale (eq. 5.9; MS paper: 2)")
    beta: float = hyperparameter(50.0, gt=0, help="MS loss lambda_N, the negative pairs' scale (eq. 5.9; MS paper: 50)")
    base: float = hyperparameter(0.5, help="MS loss margin delta of the similarities (eq. 5.9; MS paper: 0.5)")
    epsilon: float = hyperparameter(0.1, ge=0, help="MS miner margin (0: no mining, every pair counts; MS paper: 0.1)")
    memory_size: int = hyperparameter(0, ge=0, help="cross-batch memory: embeddings kept (0: none, in-batch MS loss)")
    memory_start: int = hyperparameter(0, ge=0, help="steps before the memory is used (XBM paper: after a warm-up)")

    def on_train_start(self, model, ctx):
        from pytorch_metric_learning import losses, miners

        self.ms = losses.MultiSimilarityLoss(alpha=self.alpha, beta=self.beta, base=self.base)
        self.miner = miners.MultiSimilarityMiner(epsilon=self.epsilon) if self.epsilon > 0 else None
        self.memory = None
        if self.memory_size:
            self.memory = losses.CrossBatchMemory(self.ms, model.embedding_dim, memory_size=self.memory_size,
                                                  miner=self.miner).to(ctx.device)

    def metric_loss(self, z: torch.Tensor, labels: torch.Tensor, ctx) -> torch.Tensor:
        """The MS loss of the batch's embeddings ``z`` (normalised inside: cosine similarity)."""
        if self.memory is not None and ctx.step >= self.memory_start:
            return self.memory(z, labels)
        return self.ms(z, labels, self.miner(z, labels) if self.miner is not None else None)

    def forget(self) -> None:
        """Empty the memory (its labels are stale after the labels change: re-clustering)."""
        if self.memory is not None:
            self.memory.reset_queue()

    def loss_terms(self, batch, model, ctx):
        return {"multi_similarity": self.metric_loss(self.embed(model, batch.x_labeled), batch.y_labeled, ctx)}


@hookimpl
def ssl_bench_methods():
    return [MultiSimilarity]
