"""The studio's training objective: which loss terms G and D minimise and with what weights, batched (the
ordinary step) or per pair (record-level DP, where every pair needs its own gradient).

The terms themselves are plain functions in losses.py; the trainer owns networks, data and the loop. What the
losses need from the real pairs goes through ``RealFeatures``, so that a cache (pair_features.py) can stand in
for the frozen encoder without changing a single term.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from torch import nn
from torch.profiler import record_function

from fedgai.augment import diff_augment, no_augment
from fedgai.config import FedgaiConfig, LossConfig
from fedgai.losses import (
    content_loss,
    feature_matching_loss,
    feddecorr_loss,
    gram_loss,
    hinge_d_loss,
    hinge_g_loss,
    statistics_consistency,
)
from fedgai.models import Encoder, GramDiscriminator, ProjectionCritic, gram_matrix, style_vector


@dataclass
class RealFeatures:
    """What the losses use of a batch of real pairs, all from the frozen encoder (no gradient): the photos'
    taps (G's input), the real sketches' deepest tap (content term) and their Gram matrices (style terms)."""

    photo_taps: list[torch.Tensor]
    sketch_deep: torch.Tensor
    sketch_grams: list[torch.Tensor]

    def row(self, i: int) -> RealFeatures:
        """Pair ``i``'s features, copied so that keeping one row does not keep the whole batch alive."""
        return RealFeatures([t[i].clone() for t in self.photo_taps], self.sketch_deep[i].clone(),
                            [g[i].clone() for g in self.sketch_grams])

    @staticmethod
    def stack(rows: list[RealFeatures]) -> RealFeatures:
        """One batch from per-pair rows (the inverse of ``row``)."""
        return RealFeatures(
            [torch.stack(taps) for taps in zip(*(r.photo_taps for r in rows), strict=True)],
            torch.stack([r.sketch_deep for r in rows]),
            [torch.stack(grams) for grams in zip(*(r.sketch_grams for r in rows), strict=True)],
        )

    @staticmethod
    def cat(first: RealFeatures, second: RealFeatures) -> RealFeatures:
        """Two batches' features as one batch, ``first``'s rows first."""
        return RealFeatures([torch.cat(pair) for pair in zip(first.photo_taps, second.photo_taps, strict=True)],
                            torch.cat([first.sketch_deep, second.sketch_deep]),
                            [torch.cat(pair) for pair in zip(first.sketch_grams, second.sketch_grams, strict=True)])


@dataclass
class Unpaired:
    """A batch of unpaired photos and G's sketches of them: the critics judge these (adversarial terms), no
    paired term can (there is no real sketch)."""

    photo: torch.Tensor
    fake: torch.Tensor
    fake_grams: list[torch.Tensor]

    def detached(self) -> Unpaired:
        return Unpaired(self.photo, self.fake.detach(), [g.detach() for g in self.fake_grams])


@dataclass
class PairBatch:
    """One batch of real pairs on the trainer's device: the images and the encoder's view of them."""

    photo: torch.Tensor
    sketch: torch.Tensor
    real: RealFeatures


@dataclass
class Fakes:
    """G's sketches of a batch and what the losses read of them: the encoder's taps and their Gram matrices
    (computed once, shared by D's and G's losses)."""

    image: torch.Tensor
    taps: list[torch.Tensor]
    grams: list[torch.Tensor]

    @staticmethod
    def of(image: torch.Tensor, taps: list[torch.Tensor]) -> Fakes:
        return Fakes(image, taps, [gram_matrix(t) for t in taps])

    def detached(self) -> Fakes:
        return Fakes(self.image.detach(), [t.detach() for t in self.taps], [g.detach() for g in self.grams])


@dataclass
class GanInputs:
    """What both losses of one GAN step read: the real pairs, G's sketches of them and, optionally, G's sketches
    of unpaired photos. D's loss takes ``detached()`` (its step must not reach G), G's loss the graph."""

    batch: PairBatch
    fakes: Fakes
    unpaired: Unpaired | None = None
    # The AdaIN_SD statistics G drew the batch in, per tap (1 or N rows): what the styled renderer's terms judge
    # the sketches against. None where no term reads them (the paper's generator).
    stats: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def detached(self) -> GanInputs:
        unpaired = None if self.unpaired is None else self.unpaired.detached()
        return GanInputs(self.batch, self.fakes.detached(), unpaired, self.stats)


@dataclass
class CriticPairs:
    """Record-level DP's D sample, one row per pair. RecordLevelDP maps the per-pair loss over batch-first
    positional inputs, so ``columns()`` gives them in ``discriminator_pair_loss``'s parameter order."""

    sketch_grams: list[torch.Tensor]
    fake_grams: list[torch.Tensor]
    photo: torch.Tensor
    sketch: torch.Tensor
    fake: torch.Tensor

    def columns(self) -> list:
        return [getattr(self, f.name) for f in fields(self)]


@dataclass
class GeneratorPairs:
    """Record-level DP's G sample, one row per pair, in ``generator_pair_loss``'s parameter order."""

    photo_taps: list[torch.Tensor]
    sketch_deep: torch.Tensor
    sketch_grams: list[torch.Tensor]
    sketch: torch.Tensor
    photo: torch.Tensor

    @staticmethod
    def of(batch: PairBatch) -> GeneratorPairs:
        real = batch.real
        return GeneratorPairs(real.photo_taps, real.sketch_deep, real.sketch_grams, batch.sketch, batch.photo)

    def columns(self) -> list:
        return [getattr(self, f.name) for f in fields(self)]


def _with_unpaired(paired: list[torch.Tensor], unpaired: Unpaired | None) -> list[torch.Tensor]:
    """Gram matrices of the paired fakes, followed by those of the unpaired fakes (if any)."""
    if unpaired is None:
        return paired
    return [torch.cat([p, u]) for p, u in zip(paired, unpaired.fake_grams, strict=True)]


class Objective:
    """G's and D's losses on one studio's batches. Holds references (not copies) to the networks, so a D
    loaded from the federation is the D the next loss sees."""

    def __init__(self, weights: LossConfig, encoder: Encoder, discriminator: GramDiscriminator,
                 clip: nn.Module | None = None):
        self.weights = weights
        self.encoder = encoder
        self.discriminator = discriminator
        self.clip = clip

    @torch.no_grad()
    def real_features(self, photo: torch.Tensor, sketch: torch.Tensor) -> RealFeatures:
        """The encoder's view of real pairs: what the cache stores, computed here when it does not."""
        with record_function("encoder: real sketch"):
            sketch_taps = self.encoder(sketch)
        with record_function("encoder: photo"):
            photo_taps = self.encoder(photo)
        return RealFeatures(photo_taps, sketch_taps[-1], [gram_matrix(t) for t in sketch_taps])

    # ------------------------------------------------------------------ batched
    def generator_loss_terms(self, x: GanInputs) -> dict[str, torch.Tensor]:
        """G's unweighted terms for generated sketches against their real pairs, through the current D (the
        structure critic, where it is on, also sees the photos). Unpaired fakes join the critics' adversarial
        terms only (their means run over paired and unpaired fakes alike)."""
        d, fm, n = self.discriminator, self.weights.feature_matching > 0, x.fakes.image.shape[0]
        photo, sketch, fake, unpaired = x.batch.photo, x.batch.sketch, x.fakes.image, x.unpaired
        critic = d.features(_with_unpaired(x.fakes.grams, unpaired))
        terms = {
            "gram": gram_loss(x.batch.real.sketch_grams, x.fakes.grams),
            "adversarial": hinge_g_loss(d.score(critic)),
            "content": content_loss(x.batch.real.sketch_deep, x.fakes.taps[-1]),
            "pixel_l1": (fake - sketch).abs().mean(),
        }
        if fm:
            with torch.no_grad():
                real_critic = d.features(x.batch.real.sketch_grams)
            terms["feature_matching"] = feature_matching_loss(real_critic, critic[:n])
        if d.patch is not None:
            photos, fakes = (photo, fake) if unpaired is None else (torch.cat([photo, unpaired.photo]),
                                                                    torch.cat([fake, unpaired.fake]))
            patch = d.patch.features(photos, fakes)
            terms["structure"] = hinge_g_loss(d.patch.score(patch))
            if fm:
                with torch.no_grad():
                    real_patch = d.patch.features(photo, sketch)
                terms["feature_matching"] = terms["feature_matching"] + feature_matching_loss(real_patch, patch[:n])
        if self.clip is not None:
            terms["clip"] = self.clip(sketch, fake)
        return terms

    def generator_terms(self, fake: torch.Tensor, fake_taps: list[torch.Tensor], sketch: torch.Tensor,
                        sketch_deep: torch.Tensor, sketch_grams: list[torch.Tensor], photo: torch.Tensor,
                        unpaired: Unpaired | None = None) -> dict[str, torch.Tensor]:
        """``generator_loss_terms`` from loose tensors: for analyses that build a batch by hand (the photos' taps
        are G's input, which no loss term reads, so none are needed here)."""
        batch = PairBatch(photo, sketch, RealFeatures([], sketch_deep, sketch_grams))
        return self.generator_loss_terms(GanInputs(batch, Fakes.of(fake, fake_taps), unpaired))

    def weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """G's loss: each term times its weight in config.LossConfig."""
        return sum(getattr(self.weights, name) * value for name, value in terms.items())

    def discriminator_loss(self, x: GanInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Hinge + FedDecorr on the real features (real and fake share one BatchNorm batch), plus the structure
        critic's hinge on (photo, sketch) pairs where it is on; unpaired fakes join the fake side. ``x`` is
        detached by the caller. Returns (loss, FedDecorr term)."""
        real_grams, photo, sketch, fake = x.batch.real.sketch_grams, x.batch.photo, x.batch.sketch, x.fakes.image
        n = real_grams[0].shape[0]
        fakes = _with_unpaired(x.fakes.grams, x.unpaired)
        logits, feats = self.discriminator([torch.cat([r, f]) for r, f in zip(real_grams, fakes, strict=True)])
        decorr = feddecorr_loss(feats[:n])
        loss = hinge_d_loss(logits[:n], logits[n:]) + self.weights.feddecorr * decorr
        patch = self.discriminator.patch
        if patch is not None:
            photos, sketches = [photo, photo], [sketch, fake]
            if x.unpaired is not None:
                photos, sketches = [*photos, x.unpaired.photo], [*sketches, x.unpaired.fake]
            scores = patch.score(patch.features(torch.cat(photos), torch.cat(sketches)))
            loss = loss + hinge_d_loss(scores[:n], scores[n:])
        return loss, decorr

    # ------------------------------------------------------------------ per pair (record-level DP)
    def discriminator_pair_loss(self, critic: Callable, sketch_grams: list[torch.Tensor],
                                fake_grams: list[torch.Tensor], photo: torch.Tensor, sketch: torch.Tensor,
                                fake: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One pair's D loss (the inputs are ``CriticPairs.columns()``): hinge(D(real)) + hinge(D(G(photo)));
        FedDecorr couples pairs, so it has no place."""
        loss = hinge_d_loss(critic(sketch_grams)[0], critic(fake_grams)[0])
        if self.discriminator.patch is not None:
            loss = loss + hinge_d_loss(critic(photo, sketch, submodule="patch"),
                                       critic(photo, fake, submodule="patch"))
        return loss, {"loss_d": loss}

    def generator_pair_loss(self, generate: Callable, photo_taps: list[torch.Tensor], sketch_deep: torch.Tensor,
                            sketch_grams: list[torch.Tensor], sketch: torch.Tensor, photo: torch.Tensor
                            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One pair's weighted G loss (the inputs are ``GeneratorPairs.columns()``)."""
        fake = generate(photo_taps)
        batch = PairBatch(photo, sketch, RealFeatures(photo_taps, sketch_deep, sketch_grams))
        terms = self.generator_loss_terms(GanInputs(batch, Fakes.of(fake, self.encoder(fake))))
        loss = self.weighted(terms)
        return loss, {**terms, "loss_g": loss}


class RendererObjective(Objective):
    """The styled renderer's losses (model.generator styled, issue 27): its projection critic judges (photo,
    sketch) pairs in the style they were drawn in (hinge), G minimises L1 to the paired sketch, AdaIN's statistics
    consistency (so it draws in the statistics it was given) and the critic's score. Every critic input passes
    through DiffAugment under train.diff_augment. The batch's style comes from ``GanInputs.stats``."""

    def __init__(self, weights: LossConfig, encoder: Encoder, critic: ProjectionCritic, augment: bool):
        super().__init__(weights, encoder, critic)
        self.augment = diff_augment if augment else no_augment

    def _score(self, photo: torch.Tensor, sketch: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.discriminator(*self.augment(photo, sketch), style)

    def generator_loss_terms(self, x: GanInputs) -> dict[str, torch.Tensor]:
        photo, sketch, fake = x.batch.photo, x.batch.sketch, x.fakes.image
        return {
            "pixel_l1": (fake - sketch).abs().mean(),
            "statistics": statistics_consistency(x.fakes.taps, x.stats),
            "adversarial": -self._score(photo, fake, style_vector(x.stats)).mean(),
        }

    def discriminator_loss(self, x: GanInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Hinge on real and generated pairs of the same photos, both judged in the batch's style; no FedDecorr
        (the critic has no feature batch to decorrelate), so its term is 0."""
        photo, style = x.batch.photo, style_vector(x.stats)
        loss = hinge_d_loss(self._score(photo, x.batch.sketch, style), self._score(photo, x.fakes.image, style))
        return loss, loss.new_zeros(())


def build_objective(cfg: FedgaiConfig, encoder: Encoder, discriminator: nn.Module, clip: nn.Module | None
                    ) -> Objective:
    """The objective of cfg.model.generator's networks."""
    if cfg.model.generator == "styled":
        return RendererObjective(cfg.loss, encoder, discriminator, cfg.train.diff_augment)
    return Objective(cfg.loss, encoder, discriminator, clip)
