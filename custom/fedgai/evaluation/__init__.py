"""Measuring what fedgai produces and what it gives away: held-out splits, quality metrics, the report, and
the membership-inference audit of the shared discriminator."""

from fedgai.evaluation.membership import discriminator_scores, membership_auc, roc_auc

__all__ = ["discriminator_scores", "membership_auc", "roc_auc"]
