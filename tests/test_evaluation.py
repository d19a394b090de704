import numpy as np
import pytest
import torch

from fedgai.evaluation import discriminator_scores, membership_auc, roc_auc
from fedgai.models import build_gan


def test_roc_auc_hand_cases():
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert roc_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert roc_auc(np.array([1.0, 3.0]), np.array([2.0])) == 0.5
    assert roc_auc(np.array([1.0]), np.array([1.0])) == 0.5  # ties count half
    with pytest.raises(ValueError, match="at least one"):
        roc_auc(np.array([]), np.array([1.0]))


def test_membership_auc_is_chance_for_identical_sets_and_keeps_train_mode(test_cfg):
    gan = build_gan(test_cfg)
    sketches = torch.rand(6, 1, 32, 32) * 2 - 1
    gan.discriminator.train()
    assert membership_auc(gan.discriminator, gan.encoder, sketches, sketches) == 0.5
    assert gan.discriminator.training
    assert discriminator_scores(gan.discriminator, gan.encoder, sketches, batch=4).shape == (6,)


def test_membership_audit_covers_the_structure_critic(test_cfg):
    gan = build_gan(test_cfg.with_overrides({"model.structure_critic": 4}))
    photos, sketches = torch.rand(6, 3, 32, 32) * 2 - 1, torch.rand(6, 1, 32, 32) * 2 - 1
    with pytest.raises(ValueError, match="structure critic"):
        discriminator_scores(gan.discriminator, gan.encoder, sketches)
    gram_only = build_gan(test_cfg).discriminator
    gram_only.load_state_dict({k: v for k, v in gan.discriminator.state_dict().items()
                               if not k.startswith("patch.")})
    with torch.no_grad():  # the structure critic's part of the score is there and moves with its weights
        both = discriminator_scores(gan.discriminator, gan.encoder, sketches, photos)
        gan.discriminator.patch.head.bias.add_(1.0)
        shifted = discriminator_scores(gan.discriminator, gan.encoder, sketches, photos)
    np.testing.assert_allclose(shifted, both + 1.0, rtol=1e-5, atol=1e-5)
    assert not np.allclose(both, discriminator_scores(gram_only, gan.encoder, sketches))
