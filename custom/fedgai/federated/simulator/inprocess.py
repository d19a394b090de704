"""One federation in one process: N studios' trainers for fed.rounds rounds, with the product's round and nothing
of NVFlare. The benchmarks run it (benchmarks/federation_value.py, style_following.py, dp_curve.py), so what they
measure is the product's round, not a copy of it.

What each side does is what the studio script (client.py) and the servers (controller.py, he_server.py) do:
- a studio loads the global with its own check and style guard (``client.accept_global``), trains with
  ``round.studio_update``, and releases its DIFF as ``client.releasable`` decides: under ``privacy.dp = "client"``
  clipped and noised by its own ``StudioClientDP`` (charged to its ledger, in the studio's scratch folder), under
  DP with the equal weight ``wire.DP_WEIGHT`` (round.aggregation_weight); a studio whose budget cannot pay for a
  round sends nothing;
- plain server: ``validation.contribution_problem`` screens each update (the controller's norm bound and floor),
  then ``round.server_step`` (capped weights, median-norm clip, fed.aggregator);
- under ``privacy.he`` the job's config (``he_job.he_job_config``), the studio's own encryption in the compact
  format under the product's CKKS parameters (``he_keys.make_contexts``, ``he_studio.encrypt_entries``), and the
  HE server's sum (``he_server.he_weights``, ``weighted_sum``, ``he_wire.add_to_plain_global``) into a global that
  stays encrypted; each studio decrypts it (``he_wire.decrypt_packed``, ``he_keys.restore_layout``).
The transport follows the config alone. Left out, since one process holds one feature space and no hostile
studio: the feature-space fingerprints, the HE guard's ciphertext checks and the round summaries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nvflare.app_common.abstract.fl_model import FLModel

from fedgai.config import FedgaiConfig
from fedgai.federated.round import Received, aggregation_weight, initial_global, server_step, studio_update
from fedgai.federated.server.server_state import Federation
from fedgai.federated.server.validation import contribution_problem, update_norm_bound, update_norm_floor
from fedgai.federated.studio.client import accept_global, can_afford_round
from fedgai.federated.studio.global_check import GlobalCheck
from fedgai.modes import mode
from fedgai.privacy import LEDGER_FILE, PrivacyBudgetExceeded
from fedgai.privacy.client_level import StudioClientDP
from fedgai.trainer import StudioTrainer

Params = dict[str, np.ndarray]


class FederationStopped(RuntimeError):
    """Fewer usable updates than fed.min_clients in a round: the product's server stops the job there too."""


@dataclass
class FederationRun:
    """What a benchmark reads of one run. ``trainers`` are still open: evaluate or save them, then ``close()``.

    rounds: per round, per studio ``trainer.quality()`` after it loaded that round's new global;
    took_shared_stages: per studio, its style guard's decision at the start of each round (None: no guard);
    dropped: per round, the studios whose update was not aggregated and why; global_params: the last global as
    a studio loaded it (decrypted under HE; empty in the local mode)."""

    cfg: FedgaiConfig
    trainers: dict[str, StudioTrainer]
    rounds: list[dict[str, dict[str, float]]]
    took_shared_stages: dict[str, list[bool | None]]
    bytes_up_per_studio_round: float
    seconds: float
    dropped: list[dict[str, str]] = field(default_factory=list)
    global_params: Params = field(default_factory=dict)

    def close(self) -> None:
        for trainer in self.trainers.values():
            trainer.close()


@dataclass
class Studio:
    """A studio's side in the process: its trainer, its check of every global, its own DP release and ledger."""

    trainer: StudioTrainer
    check: GlobalCheck
    ledger: Path
    client_dp: StudioClientDP | None
    guard: bool = True
    spent: bool = False  # its privacy budget is exhausted: it sends nothing from then on

    def receive(self, params: Params) -> Received:
        """Load a global as client.py does (its check, then its style guard); ``guard`` False loads every entry
        the check allows (the benchmarks' no-guard ablation, not a product setting)."""
        if self.guard:
            return accept_global(self.trainer, FLModel(params=params, meta={}), self.check)
        if self.check.review(params) is not None:
            return Received(self.trainer.shared_state())
        received = {key: torch.as_tensor(value).clone() for key, value in params.items()}
        self.trainer.load_shared(received)
        return Received(received)

    def update(self, baseline: Mapping[str, torch.Tensor] | None, tag: str) -> Params | None:
        """Train one round (round.studio_update) and return what leaves the studio: the DIFF, clipped and noised
        under client-level DP; None when its privacy budget cannot pay for the round (client.local_round)."""
        cfg = self.trainer.cfg
        if self.spent or (cfg.privacy.dp != "none" and not can_afford_round(self.trainer, self.ledger)):
            self.spent = True
            return None
        try:
            diff = studio_update(self.trainer, baseline, tag).diff
            if baseline is None:
                return {}
            if self.client_dp is not None:
                diff = self.client_dp.release(diff)[0]
        except PrivacyBudgetExceeded:
            self.spent = True
            return None
        return {key: value.detach().cpu().numpy() for key, value in diff.items()}

    def weight(self) -> int:
        """The count it sends (round.aggregation_weight: equal weights under DP and in the styled modes)."""
        return aggregation_weight(self.trainer.cfg, self.trainer.num_samples)


class EncryptedSum:
    """The HE job's round: studios encrypt their pre-weighted DIFFs with the client context, the server sums the
    ciphertexts with the capped weights and adds them to the global, which stays encrypted from round 1 on."""

    def __init__(self, cfg: FedgaiConfig, reference: Params):
        import tenseal as ts

        from fedgai.federated.he_keys import layout_of, make_contexts

        server, client = make_contexts()
        self.server, self.client = ts.context_from(server), ts.context_from(client)
        self.cfg, self.federation = cfg, Federation()
        self.layout = layout_of(reference)
        self.global_params: dict[str, Any] = dict(reference)

    def seal(self, diff: Params, count: int) -> dict[str, bytes]:
        """The studio's encryption (he_studio.seal): every entry times its count, in the compact format."""
        from fedgai.federated.studio.he_studio import encrypt_entries

        return encrypt_entries(self.client, diff, float(count))

    def step(self, sealed: Mapping[str, dict[str, bytes]], counts: Mapping[str, int]) -> None:
        """FeatureSpaceHEAggregator's sum, then the shareable generator's addition to the global."""
        import tenseal as ts

        from fedgai.federated.he_wire import add_to_plain_global
        from fedgai.federated.server.he_server import he_weights, weighted_sum

        for site, count in counts.items():
            self.federation.first_counts.setdefault(site, count)
        vectors = {site: {key: ts.ckks_vector_from(self.server, data) for key, data in entries.items()}
                   for site, entries in sealed.items()}
        weights = he_weights(counts, self.cfg, self.federation)
        total = sum(w.value for w in weights.values())
        factors = {site: weights[site].value / (counts[site] * total) for site in vectors}
        summed = weighted_sum(vectors, factors)
        if not add_to_plain_global(self.global_params, summed, self.server):
            self.global_params = {key: value + summed[key] if key in summed else value
                                  for key, value in self.global_params.items()}

    def decrypted(self) -> Params:
        """The global as a studio decrypts it (ShapedHEModelDecryptor)."""
        from fedgai.federated.he_keys import restore_layout
        from fedgai.federated.he_wire import decrypt_packed

        values = {key: value if isinstance(value, np.ndarray) else
                  decrypt_packed(self.client, value.serialize(), int(np.prod(self.layout[key]["shape"])))
                  for key, value in self.global_params.items()}
        return restore_layout(values, self.layout)


def job_config(cfg: FedgaiConfig) -> FedgaiConfig:
    """The config the job sends: under HE without the norm bounds an HE server cannot apply (he_job_config)."""
    if not cfg.privacy.he:
        return cfg
    from fedgai.federated.jobs.he_job import he_job_config

    return he_job_config(cfg)


def plain_step(cfg: FedgaiConfig, global_params: Params, reference: Params, updates: Mapping[str, Params],
               counts: Mapping[str, int], first_counts: dict[str, int], dropped: dict[str, str]) -> Params:
    """The plain server's round (FilteredFedAvg): screen each update (refusals into ``dropped``), then
    round.server_step on the usable ones; ``first_counts`` is updated in place."""
    bound = update_norm_bound(cfg, sum(v.size for v in reference.values()))
    dp = cfg.privacy.dp != "none"
    for site, params in updates.items():
        problem = contribution_problem(params, "DIFF", counts[site], reference, bound, count_required=not dp,
                                       min_update_norm=update_norm_floor(cfg, reference))
        if problem is not None:
            dropped[site] = problem
    usable = {site: params for site, params in updates.items() if site not in dropped}
    if not usable:
        return global_params
    step = server_step(global_params, usable, None if dp else {s: counts[s] for s in usable}, cfg, first_counts,
                       update_norm_floor(cfg, global_params))
    first_counts.update(step.first_counts)
    return step.params


def run_federation(cfg: FedgaiConfig, studios: list[Path], scratch: Path, *, device: str = "cpu", tag: str = "",
                   after_round: Callable[[int, dict[str, StudioTrainer]], None] | None = None,
                   after_train: Callable[[int, dict[str, StudioTrainer]], None] | None = None,
                   guard: bool = True) -> FederationRun:
    """Every studio in ``studios`` trains for cfg.fed.rounds rounds (each in ``scratch/<studio>``), federated as
    cfg.fed.mode and cfg.privacy say; after the last round each studio loads the last global. ``after_round(r,
    trainers)`` runs after each round's receive, ``after_train`` after its local work (each studio's own renderer
    before the average: a personalised model, as FedAvg with local fine-tuning scores it). ``guard`` False: every
    studio loads every received entry (an ablation of the style guard, for benchmarks only)."""
    started = time.perf_counter()
    cfg = job_config(cfg)
    studio_of = {s.name: Studio(StudioTrainer(cfg, s, scratch / s.name, device=device), GlobalCheck(),
                                scratch / s.name / LEDGER_FILE, None, guard) for s in studios}
    for site, studio in studio_of.items():
        if cfg.privacy.dp == "client":
            studio.client_dp = StudioClientDP(cfg.privacy, studio.ledger, site)
    trainers = {site: s.trainer for site, s in studio_of.items()}
    federated = mode(cfg.fed.mode).federated
    reference = initial_global(cfg) if federated else {}
    he = EncryptedSum(cfg, reference) if federated and cfg.privacy.he else None
    global_params, first_counts = dict(reference), {}
    received = {site: s.receive(global_params) for site, s in studio_of.items()} if federated else {}
    run = FederationRun(cfg, trainers, [], {site: [] for site in studio_of}, 0.0, 0.0)
    bytes_up = 0
    for rnd in range(cfg.fed.rounds):
        updates: dict[str, Params] = {}
        for site, studio in studio_of.items():
            if federated:
                run.took_shared_stages[site].append(received[site].took_shared_stages)
            update = studio.update(received[site].baseline if federated else None, f"{tag} r{rnd}")
            if update is not None and federated:
                updates[site] = update
        if after_train is not None:
            after_train(rnd, trainers)
        dropped = {site: "privacy budget exhausted" for site, s in studio_of.items() if s.spent}
        # As the controller: a round whose studios' budgets leave fewer than fed.min_clients able ends the run
        # normally; otherwise too few usable updates stop it.
        finished = sum(not s.spent for s in studio_of.values()) < cfg.fed.min_clients
        if federated:
            counts = {site: studio_of[site].weight() for site in updates}
            if he is None:
                bytes_up += sum(v.nbytes for u in updates.values() for v in u.values())
                global_params = plain_step(cfg, global_params, reference, updates, counts, first_counts, dropped)
            else:
                sealed = {site: he.seal(update, counts[site]) for site, update in updates.items()}
                bytes_up += sum(len(b) for entries in sealed.values() for b in entries.values())
                he.step(sealed, counts)
                global_params = he.decrypted()
            usable = len(set(updates) - set(dropped))
            if usable < cfg.fed.min_clients and not finished:
                raise FederationStopped(f"round {rnd}: only {usable} usable update(s), fed.min_clients is "
                                        f"{cfg.fed.min_clients}; dropped: {dropped}")
            received = {site: s.receive(global_params) for site, s in studio_of.items()}
        run.dropped.append(dropped)
        run.rounds.append({site: trainer.quality() for site, trainer in trainers.items()})
        if after_round is not None:
            after_round(rnd, trainers)
        if finished:
            break
    run.bytes_up_per_studio_round = bytes_up / max(1, len(run.rounds) * len(studio_of))
    run.global_params = global_params
    run.seconds = time.perf_counter() - started
    return run
