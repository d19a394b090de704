"""Measuring what a shared discriminator gives away: a membership-inference audit.

The attacker holds the shared D and a candidate sketch; a sketch the studio trained on tends to score as
"more real". AUC 0.5 = the attacker learns nothing; 1.0 = membership is fully exposed.
"""

from __future__ import annotations

import numpy as np
import torch

from fedgai.models import Encoder, GramDiscriminator, gram_matrix


def roc_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """Probability that a random member outscores a random non-member (ties count half): the
    Mann-Whitney form of ROC AUC, exact and dependency-free."""
    m = np.asarray(member_scores, dtype=np.float64)[:, None]
    n = np.asarray(nonmember_scores, dtype=np.float64)[None, :]
    if m.size == 0 or n.size == 0:
        raise ValueError("roc_auc needs at least one member and one non-member score")
    return float(((m > n).sum() + 0.5 * (m == n).sum()) / (m.size * n.size))


@torch.no_grad()
def discriminator_scores(discriminator: GramDiscriminator, encoder: Encoder, sketches: torch.Tensor,
                         batch: int = 16) -> np.ndarray:
    """D's realness score for each sketch (eval mode, so BN uses running statistics)."""
    was_training = discriminator.training
    discriminator.eval()
    scores = []
    for i in range(0, len(sketches), batch):
        grams = [gram_matrix(t) for t in encoder(sketches[i : i + batch])]
        scores.append(discriminator(grams)[0])
    discriminator.train(was_training)
    return torch.cat(scores).numpy()


def membership_auc(discriminator: GramDiscriminator, encoder: Encoder, members: torch.Tensor,
                   nonmembers: torch.Tensor) -> float:
    """Score-threshold membership-inference AUC of D on member vs held-out sketches of the same studio."""
    return roc_auc(discriminator_scores(discriminator, encoder, members),
                   discriminator_scores(discriminator, encoder, nonmembers))
