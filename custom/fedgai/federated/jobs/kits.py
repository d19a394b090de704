"""Site-local policies for FedGAI startup kits: no custom code anywhere, studios run only the admin's jobs,
and the server keeps its jobs in its own kit.

    python -m fedgai.federated.jobs.kits KIT [KIT ...]      (at each site, once the kit is where it will run)

NVFlare reads ``local/authorization.json`` and ``local/resources.json`` (when present) instead of the
``.default`` files that provisioning writes; the ``local`` folder belongs to the site. Written here:

- every kit: ``class_allow_list`` = exactly the classes the shipped jobs name on that side (allow_list.py,
  checked against a fresh export of them, so the list follows the jobs), in ``enforce`` mode: a job can only
  assemble what fedgai ships (no other executor, no filter that re-adds what the release gate removed);
- studios: ``allow_log_streaming`` false (NVFlare would otherwise stream the site's job log to the server,
  past every result filter), and the studio's privacy policy ``local/fedgai_privacy.json``
  (privacy/policy.py), written once: the studio edits it, hardening again keeps its edits;
- every kit: an authorization policy without the ``byoc`` right for anyone: jobs that bring code
  (``app/custom``) are refused ("BYOC not permitted");
- studios: only a ``project_admin`` may run jobs there (``submit_job``, checked by the studio when the
  server deploys a job): a ``lead`` or ``org_admin`` of any org, another studio's included, is refused;
- the server: job store and snapshot storage under ``<kit>/storage`` instead of NVFlare's machine-wide
  ``/tmp/nvflare/{jobs,snapshot}-storage``, which every deployment on a host would otherwise share.

Storage paths are absolute (NVFlare requires it), so harden a kit where it runs, and again if it moves.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedgai.federated.jobs.allow_list import allow_fedgai
from fedgai.privacy.policy import SitePolicy, policy_path, write_site_policy

STORAGE_DIR = "storage"
JOB_STORE = "jobs"
SNAPSHOTS = "snapshots"
_JOB_RIGHTS = ("submit_job", "clone_job", "manage_job", "download_job")
# NVFlare 2.9's rights (authorization.json.default), with byoc and predeployed Flower apps never granted.
_NEVER = {"byoc": "none", "server-predeployed-flwr": "none"}
PROJECT_ADMIN = {**dict.fromkeys(_JOB_RIGHTS, "any"), "view": "any", "operate": "any", "shell_commands": "any",
                 **_NEVER}
SERVER_POLICY: dict[str, Any] = {
    "format_version": "1.0",
    "permissions": {
        "project_admin": PROJECT_ADMIN,
        "org_admin": {"submit_job": "none", "clone_job": "none", "manage_job": "o:submitter",
                      "download_job": "o:submitter", "view": "any", "operate": "o:site", "shell_commands": "o:site",
                      **_NEVER},
        "lead": {"submit_job": "any", "clone_job": "n:submitter", "manage_job": "n:submitter",
                 "download_job": "n:submitter", "view": "any", "operate": "o:site", "shell_commands": "o:site",
                 **_NEVER},
        "member": {"view": "any"},
    },
}
STUDIO_POLICY: dict[str, Any] = {
    "format_version": "1.0",
    "permissions": {
        # The studio runs the project's jobs; it has no use for an admin's shell at the studio.
        "project_admin": {**PROJECT_ADMIN, "shell_commands": "none"},
        # Its own org's admin may look and stop/restart this site, never deploy a job here.
        "org_admin": {**dict.fromkeys(_JOB_RIGHTS, "none"), "view": "any", "operate": "o:site",
                      "shell_commands": "none", **_NEVER},
        "lead": {**dict.fromkeys(_JOB_RIGHTS, "none"), "view": "any", "operate": "none", "shell_commands": "none",
                 **_NEVER},
        "member": {"view": "any"},
    },
}


class KitError(ValueError):
    """A folder is not a provisioned NVFlare server or client kit."""


def kit_kind(kit: Path) -> str:
    """The kit's kind, "server" or "client", from its startup file."""
    for kind in ("server", "client"):
        if (kit / "startup" / f"fed_{kind}.json").is_file():
            return kind
    raise KitError(f"{kit} is not a server or client startup kit (no startup/fed_server.json or fed_client.json)")


def kit_storage(resources: dict, kit: Path) -> dict:
    """The server's job store and snapshots under ``<kit>/storage`` (absolute, as NVFlare requires)."""
    out = copy.deepcopy(resources)
    root = kit.resolve() / STORAGE_DIR
    snapshot = out["snapshot_persistor"]["args"]["storage"]["args"]
    snapshot["root_dir"] = str(root / SNAPSHOTS)
    managers = [c for c in out["components"] if c.get("id") == "job_manager"]
    if len(managers) != 1:
        raise KitError(f"{kit}: expected one job_manager component in local/resources.json.default")
    managers[0]["args"]["uri_root"] = str(root / JOB_STORE)
    return out


def harden_kit(kit: Path) -> Path:
    """Write the kit's local/resources.json and local/authorization.json; returns the kit."""
    kind = kit_kind(kit)
    local = kit / "local"
    resources = json.loads((local / "resources.json.default").read_text())
    if kind == "server":
        resources = kit_storage(allow_fedgai(resources, ["server"]), kit)
    else:
        resources = {**allow_fedgai(resources, ["client"]), "allow_log_streaming": False}
        if not policy_path(kit).is_file():
            write_site_policy(kit, SitePolicy())
    policy = SERVER_POLICY if kind == "server" else STUDIO_POLICY
    (local / "resources.json").write_text(json.dumps(resources, indent=2) + "\n")
    (local / "authorization.json").write_text(json.dumps(policy, indent=2) + "\n")
    return kit


def harden_kits(prod_dir: Path) -> list[Path]:
    """Harden every server and client kit in a provisioned ``prod_NN`` folder (admin kits need nothing)."""
    kits = [p for p in sorted(Path(prod_dir).iterdir())
            if (p / "startup" / "fed_server.json").is_file() or (p / "startup" / "fed_client.json").is_file()]
    if not kits:
        raise KitError(f"no server or client kits in {prod_dir}")
    return [harden_kit(kit) for kit in kits]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write FedGAI's site-local policies into NVFlare startup kits")
    p.add_argument("kits", nargs="+", type=Path, help="server or studio kit folders (the folder holding startup/)")
    args = p.parse_args(argv)
    try:
        for kit in args.kits:
            harden_kit(kit)
            extra = ", local/fedgai_privacy.json (the studio's to edit)" if kit_kind(kit) == "client" else ""
            print(f"{kit}: {kit_kind(kit)} kit hardened (local/resources.json, local/authorization.json{extra})")
    except KitError as err:
        p.error(str(err))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
