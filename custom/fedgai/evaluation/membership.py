"""Measuring what a shared discriminator gives away: a membership-inference audit.

The attacker holds the shared D and a candidate sketch; a sketch the studio trained on tends to score as
"more real". AUC 0.5 = the attacker learns nothing; 1.0 = membership is fully exposed.
"""

from __future__ import annotations

import math

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
                         photos: torch.Tensor | None = None, batch: int = 16) -> np.ndarray:
    """D's realness score for each sketch (eval mode, so BN uses running statistics).

    With a structure critic, the shared D also scores (photo, sketch) pairs, and an attacker holding D uses
    both: the scores are then the sum of the two critics', and the photos are required (an audit of the
    Gram critic alone would understate what the shared D gives away).
    """
    if discriminator.patch is not None and photos is None:
        raise ValueError("this D has a structure critic: pass the sketches' photos so that it is audited too")
    was_training = discriminator.training
    discriminator.eval()
    scores = []
    for i in range(0, len(sketches), batch):
        chunk = sketches[i : i + batch]
        score = discriminator([gram_matrix(t) for t in encoder(chunk)])[0]
        if discriminator.patch is not None:
            score = score + discriminator.patch(photos[i : i + batch], chunk)
        scores.append(score)
    discriminator.train(was_training)
    return torch.cat(scores).numpy()


def hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUC (Hanley & McNeil 1982): with a few dozen pairs per side it is about 0.08, so an
    AUC must be read against it before it says anything."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def membership_auc(discriminator: GramDiscriminator, encoder: Encoder, members: torch.Tensor,
                   nonmembers: torch.Tensor, member_photos: torch.Tensor | None = None,
                   nonmember_photos: torch.Tensor | None = None) -> float:
    """Score-threshold membership-inference AUC of D on member vs held-out sketches of the same studio
    (their photos too where D has a structure critic)."""
    return roc_auc(discriminator_scores(discriminator, encoder, members, member_photos),
                   discriminator_scores(discriminator, encoder, nonmembers, nonmember_photos))
