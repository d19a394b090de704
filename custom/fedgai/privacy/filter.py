"""NVFlare TASK_RESULT filter that applies client-level DP (clip + Gaussian noise) to a studio's weight diff.

Fail-closed by design. ``DXOFilter.process`` in nvflare 2.9 forwards content *unfiltered* when the shareable
is not a DXO, when the DXO kind is not in the filter's kinds, or when its data is empty; this class overrides
``process`` so every such case raises instead. In the client runner (``ClientRunner._process_task``) any
exception from a result filter replaces the whole reply with an empty
``make_reply(TASK_RESULT_FILTER_ERROR)``: the payload never leaves the site, and the server's controller
sees a result with that return code (the ModelController/FedAvg error policy then ignores it or panics, see
docs/privacy.md).

Budget: before noising, if one more round would push the studio's epsilon past ``target_epsilon`` the filter
raises PrivacyBudgetExceeded and logs that the studio stops contributing. The training script can avoid the
wasted round by calling ``budget_allows_next_round`` first and sending a metrics-only notice flagged
``dp_budget_exhausted``; the filter forwards that notice with its metric values removed.

Accounting: a round is charged as noise multiplier sigma/2 (``client_level_noise``): the guarantee is for
replacing the studio's data, which moves the clipped update by up to 2C.

The studio noises its own update (client_level.py, in its send path), so a job that leaves this filter out
still sends nothing un-noised; where the studio's record of its noise is in the result, this filter checks it
(at least this filter's sigma, at most its clip norm) and passes the result on unchanged: noise is applied once.

Site policy (privacy/policy.py): where the site has ``local/fedgai_privacy.json``, the filter refuses settings
weaker than it, charges the site's own ledger (the job's ``ledger_file`` is ignored) and stops at the site's
budget when the job sets no tighter target.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply

from fedgai.config import PrivacyConfig
from fedgai.privacy.accountant import (
    ACCOUNTANTS,
    CLIENT_LEVEL_SAMPLE_RATE,
    PrivacyBudgetExceeded,
    PrivacyLedger,
    client_level_noise,
)
from fedgai.privacy.client_level import dp_meta, noise_problem
from fedgai.privacy.mechanism import UnsafeUpdateError, check_parameters, clip_and_noise, validate_update
from fedgai.privacy.policy import SitePolicy, SitePolicyError, load_site_policy
from fedgai.wire import BUDGET_EXHAUSTED_KEY, DP_NOISE_META_KEY

LEDGER_FILE = "fedgai_dp_ledger.json"

logger = logging.getLogger(__name__)


def site_ledger_path(fl_ctx: FLContext, ledger_file: str = LEDGER_FILE) -> Path:
    """Relative ledger files live in the site's workspace root, which outlives jobs: the budget spans runs."""
    path = Path(ledger_file)
    if path.is_absolute():
        return path
    return Path(fl_ctx.get_workspace().get_root_dir()) / path


def budget_allows_next_round(
    ledger_path: str | Path,
    cfg: PrivacyConfig,
    accountant: str = "rdp",
    sample_rate: float = CLIENT_LEVEL_SAMPLE_RATE,
    steps: int = 1,
) -> bool:
    """True unless the next round's releases (default: one client-level round) would pass the target."""
    if cfg.dp == "none" or cfg.target_epsilon is None:
        return True
    ledger = PrivacyLedger(ledger_path, accountant=accountant)
    projected = ledger.projected_epsilon(client_level_noise(cfg.noise_multiplier), sample_rate, steps, cfg.delta)
    if projected > cfg.target_epsilon:
        logger.warning(
            "privacy budget exhausted (epsilon %.3f now, %.3f after the next round > target %s): "
            "skip training and send no update",
            ledger.epsilon(cfg.delta),
            projected,
            cfg.target_epsilon,
        )
        return False
    return True


class GaussianDPFilter(DXOFilter):
    """Clip a WEIGHT_DIFF to L2 norm clip_norm, add N(0, (noise_multiplier*clip_norm)^2), account a round."""

    def __init__(
        self,
        clip_norm: float,
        noise_multiplier: float,
        delta: float,
        target_epsilon: float | None = None,
        accountant: str = "rdp",
        ledger_file: str = LEDGER_FILE,
    ) -> None:
        super().__init__(supported_data_kinds=[DataKind.WEIGHT_DIFF], data_kinds_to_filter=[DataKind.WEIGHT_DIFF])
        check_parameters(clip_norm, noise_multiplier)
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        if target_epsilon is not None and not target_epsilon > 0:
            raise ValueError(f"target_epsilon must be > 0 or None, got {target_epsilon}")
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"unknown accountant {accountant!r}; choose one of {', '.join(ACCOUNTANTS)}")
        # Stored under the constructor's names so FedJob can export them as plain JSON values.
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.target_epsilon = target_epsilon
        self.accountant = accountant
        self.ledger_file = ledger_file

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        """Noise the update or raise; unlike DXOFilter.process, nothing passes through unfiltered."""
        rc = shareable.get_return_code()
        if rc != ReturnCode.OK:
            return make_reply(rc)  # an error reply must carry no payload
        dxo = from_shareable(shareable)  # ValueError when the result is not a DXO: blocked
        if dxo.data_kind == DataKind.METRICS and dxo.get_meta_prop(BUDGET_EXHAUSTED_KEY) is True:
            return self._budget_notice(dxo, fl_ctx).update_shareable(shareable)
        if DP_NOISE_META_KEY in dxo.meta:  # noised in the studio's own send path (client_level.py), maybe encrypted
            self._policy(fl_ctx)
            return self._studio_noised(dxo, fl_ctx).update_shareable(shareable)
        validate_update(dxo.data)  # DXOFilter._apply_filter would pass an empty DXO through
        return self._apply_filter(dxo, shareable, fl_ctx).update_shareable(shareable)

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO:
        if dxo.data_kind != DataKind.WEIGHT_DIFF:
            raise UnsafeUpdateError(
                f"{type(self).__name__} only releases WEIGHT_DIFF results, got {dxo.data_kind}; "
                "send a DIFF (params_transfer_type=DIFF) so clipping bounds the studio's contribution"
            )
        validate_update(dxo.data)
        policy = self._policy(fl_ctx)
        ledger = self._ledger(fl_ctx, policy)
        target = self._target(policy)
        noised, info = clip_and_noise(dxo.data, self.clip_norm, self.noise_multiplier)
        epsilon = self._charge(ledger, target, fl_ctx)
        self.log_info(
            fl_ctx,
            f"DP release: norm {info['norm_before']:.4g} scaled by {info['clip_factor']:.4g} "
            f"(clip {self.clip_norm}), noise std {info['noise_std']:.4g}; "
            f"epsilon now {epsilon:.3f} at delta {self.delta}",
        )
        meta = {k: v for k, v in dxo.meta.items() if k != MetaKey.FILTER_HISTORY}
        meta.update(self._dp_meta(epsilon))  # the un-noised norm stays in the site log only
        return DXO(DataKind.WEIGHT_DIFF, data=noised, meta=meta)

    def _studio_noised(self, dxo: DXO, fl_ctx: FLContext) -> DXO:
        """A checked no-op: the studio applied (and charged) the noise; refuse a record weaker than this filter's
        settings, never noise twice."""
        problem = noise_problem(dxo.meta, self.noise_multiplier, self.clip_norm)
        if problem:
            self.log_error(fl_ctx, f"{problem}. Nothing leaves this site.")
            raise UnsafeUpdateError(problem)
        self.log_info(fl_ctx, "the studio clipped and noised this update itself; passing it on unchanged")
        return dxo

    def _policy(self, fl_ctx: FLContext) -> SitePolicy | None:
        """The site's policy (None without one, or outside a site); raises SitePolicyError when this filter's
        settings are weaker than it: nothing leaves then."""
        if fl_ctx.get_engine() is None:
            return None
        try:
            policy = load_site_policy(fl_ctx.get_workspace().get_root_dir())
            if policy is not None:
                policy.enforce(PrivacyConfig(dp="client", noise_multiplier=self.noise_multiplier,
                                             clip_norm=self.clip_norm, delta=self.delta,
                                             target_epsilon=self.target_epsilon))
        except SitePolicyError as err:
            self.log_error(fl_ctx, f"{err}. Nothing leaves this site.")
            raise
        return policy

    def _target(self, policy: SitePolicy | None) -> float | None:
        """The job's target, or the site's budget when the job sets none."""
        if self.target_epsilon is None and policy is not None:
            return policy.epsilon_budget
        return self.target_epsilon

    def _ledger(self, fl_ctx: FLContext, policy: SitePolicy | None) -> PrivacyLedger:
        """Reloaded on every call: the simulator may restart the site process between rounds."""
        if policy is not None:  # the site's one ledger, which record-level jobs charge under the studio's name
            return PrivacyLedger(policy.ledger_path(fl_ctx.get_workspace().get_root_dir()), None, self.accountant)
        return PrivacyLedger(site_ledger_path(fl_ctx, self.ledger_file), fl_ctx.get_identity_name() or None,
                             self.accountant)

    def _charge(self, ledger: PrivacyLedger, target: float | None, fl_ctx: FLContext) -> float:
        """Charge one round to the ledger (locked, re-read; refused past ``target``); the epsilon after it."""
        try:
            return ledger.charge(client_level_noise(self.noise_multiplier), CLIENT_LEVEL_SAMPLE_RATE, 1, self.delta,
                                 target)
        except PrivacyBudgetExceeded as err:
            self.log_error(fl_ctx, f"{err}. This studio stops contributing: no further update leaves the site.")
            raise

    def _budget_notice(self, dxo: DXO, fl_ctx: FLContext) -> DXO:
        """Forward the flag and the spent epsilon only: metrics are data-dependent and un-noised."""
        ledger = self._ledger(fl_ctx, self._policy(fl_ctx))
        self.log_warning(
            fl_ctx,
            f"studio's privacy budget is exhausted; forwarding a notice without metrics (dropped: {sorted(dxo.data)})",
        )
        meta = {**self._dp_meta(ledger.epsilon(self.delta)), **dxo.meta}  # the studio's own (this job's) epsilon wins
        return DXO(DataKind.METRICS, data={}, meta=meta)

    def _dp_meta(self, epsilon: float) -> dict[str, float]:
        return dp_meta(epsilon, self.delta, self.noise_multiplier, self.clip_norm)
