"""The language-model loss: which tokens carry it (next_token_targets, count_trained_tokens: the one rule, used by
the loss, the training loop's gradient weighting and the held-out loss) and how it averages over them
(answer_weights: every token the same, as LLaVA, or square averaging over each answer).

    loss = causal_lm_loss(logits, labels, segment_ids, answer_weighting=0.0)     # (B, T, vocab), (B, T), (B, T)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def next_token_targets(labels, segment_ids=None):
    """(B, T) labels -> (B, T-1) targets: position t predicts labels[t + 1]. With packed rows, a prediction across a
    segment boundary (last token of one sample -> first of the next) is not a real target and becomes -100 too."""
    targets = labels[:, 1:].clone()                      # (B, T-1)
    if segment_ids is not None:
        targets[segment_ids[:, 1:] != segment_ids[:, :-1]] = IGNORE_INDEX
    return targets


def count_trained_tokens(labels, segment_ids=None) -> int:
    """How many positions carry a loss: the targets that next_token_targets keeps. The one rule for which tokens are
    trained, used by the loss, the gradient weighting of the training loop and the held-out loss."""
    return int((next_token_targets(labels, segment_ids) != IGNORE_INDEX).sum())


def answer_weights(targets: torch.Tensor, answer_weighting: float = 0.0) -> torch.Tensor:
    """(B, T-1) targets -> (B, T-1) weights: 0 where nothing is trained; on an answer of n trained tokens (a run of
    them), n ** -answer_weighting each. 0 weighs every token the same (LLaVA); 0.5 gives an answer sqrt(n) in all
    (square averaging, as InternVL 2.5 weighs samples), so a one-word answer is not drowned by descriptions of a
    hundred tokens; 1 weighs every answer the same."""
    keep = targets != IGNORE_INDEX
    if answer_weighting == 0:
        return keep.float()
    starts = keep.clone()
    starts[:, 1:] &= ~keep[:, :-1]                                        # the first token of each answer
    answer = torch.cumsum(starts.flatten().long(), 0).view_as(keep) * keep  # (B, T-1): 1, 2, ... per answer; 0 off
    lengths = torch.bincount(answer.flatten()).float()
    return lengths[answer].pow(-answer_weighting) * keep


def loss_weight(labels, segment_ids=None, answer_weighting: float = 0.0) -> float:
    """The total weight of a batch's trained tokens (their number when answer_weighting is 0): the share of the
    global batch's loss that the training loop gives a micro-batch."""
    return float(answer_weights(next_token_targets(labels, segment_ids), answer_weighting).sum())


def causal_lm_loss(logits, labels, segment_ids=None, answer_weighting: float = 0.0):
    """Next-token cross entropy over (B, T, vocab) logits; -100 is ignored; the mean over trained tokens, weighted
    by answer_weights."""
    logits = logits[:, :-1].float()                      # (B, T-1, vocab)
    targets = next_token_targets(labels, segment_ids)
    if answer_weighting == 0:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
    return weighted_mean(F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                                         reduction="none"), answer_weights(targets, answer_weighting))


def weighted_mean(ce: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum(w * ce) / sum(w): the loss of per-token cross entropies `ce` weighted by answer_weights `w`."""
    return (ce * w).sum() / w.sum()
