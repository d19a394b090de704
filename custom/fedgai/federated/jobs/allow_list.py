"""The classes the shipped jobs (plain, DP, HE) name, per side: what a hardened kit allows (kits.py) and what a
simulated site allows (job.FedgaiJob.simulator_run), enforced, so that a job can only assemble what fedgai ships.

The list is written here, below the job builders, rather than read from an export of the jobs: every job the
builders make runs in the simulator with this list, so reading it from their export would tie each job to all
three (job -> kits -> he_job -> job, the cycle issue 26 removed). tests/test_jobs.py fails when it and a fresh
export of the three jobs differ, so the list still follows the jobs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

SIDES = {"server": "config_fed_server.json", "client": "config_fed_client.json"}


def class_path(cls: type) -> str:
    """A class's path as a job config names it (``fedgai.federated.server.controller.FilteredFedAvg``)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def job_classes(side: str) -> frozenset[str]:
    """The classes the shipped jobs name on ``side`` ("server" or "client"), never one that no shipped job uses."""
    return _shipped_classes()[side]


@functools.cache
def _shipped_classes() -> dict[str, frozenset[str]]:
    """Both sides' classes; the components are imported here, when a list is first needed (the HE ones pull in
    TenSEAL)."""
    from nvflare.app_common.widgets.convert_to_fed_event import ConvertToFedEvent
    from nvflare.app_opt.he.model_serialize_filter import HEModelSerializeFilter
    from nvflare.app_opt.tracking.tb.tb_receiver import TBAnalyticsReceiver

    from fedgai.federated.he_wire import PackedCiphertextLoader
    from fedgai.federated.server.controller import FilteredFedAvg
    from fedgai.federated.server.he_server import (
        CiphertextOnlyGuard,
        DiscriminatorPersistor,
        FeatureSpaceHEAggregator,
        FedgaiHEShareableGenerator,
        ResumableScatterAndGather,
    )
    from fedgai.federated.studio.audit import OutboundAudit, OutboundEventAudit
    from fedgai.federated.studio.executor import FedgaiVersionCheck, StudioExecutor
    from fedgai.federated.studio.he_studio import PackedHEModelEncryptor, ShapedHEModelDecryptor
    from fedgai.privacy.filter import GaussianDPFilter

    server = (FedgaiVersionCheck, FilteredFedAvg, TBAnalyticsReceiver,  # plain and DP jobs
              HEModelSerializeFilter, DiscriminatorPersistor, FedgaiHEShareableGenerator, FeatureSpaceHEAggregator,
              PackedCiphertextLoader, CiphertextOnlyGuard, ResumableScatterAndGather)  # the HE job's
    client = (StudioExecutor, ConvertToFedEvent, OutboundEventAudit, OutboundAudit, GaussianDPFilter,
              ShapedHEModelDecryptor, PackedHEModelEncryptor)
    return {"server": frozenset(map(class_path, server)), "client": frozenset(map(class_path, client))}


def config_classes(config: Any) -> set[str]:
    """Every component class path (``"path"`` entries) anywhere in an NVFlare job config."""
    if isinstance(config, dict):
        found = {config["path"]} if isinstance(config.get("path"), str) else set()
        return found.union(*(config_classes(v) for v in config.values()))
    if isinstance(config, list):
        return set().union(*(config_classes(v) for v in config))
    return set()


def allow_fedgai(resources: dict, sides: Sequence[str] = tuple(SIDES)) -> dict:
    """Only the shipped jobs' classes of ``sides`` (default both, for the simulator's one shared ``local``
    folder), enforced."""
    classes = set().union(*(job_classes(side) for side in sides))
    return {**resources, "class_allow_list": sorted(classes), "class_list_enforcement_mode": "enforce"}
