"""What a config-only job names at the sites: the studio trainer and the server's version check.

FedGAI jobs carry no code (no ``app/custom``): server and studios run the fedgai package installed at the
site, pinned to the version the job was exported with. The job names these classes by path; a studio
allows them by name in its ``local/resources.json`` class allow-list (kits.py: the shipped jobs' classes).

- ``StudioExecutor``: NVFlare's in-process Client-API executor running the installed
  ``fedgai/federated/client.py`` (the same script the simulator runs). A relative script path would be
  searched for in the job's custom folder only, so the path is resolved here, at the site.
- ``FedgaiVersionCheck``: a server component that stops the job when the server's fedgai differs.

Both check the version when the job starts (START_RUN) and stop the job with a clear reason
(``system_panic``) instead of training with another version's code.
"""

from __future__ import annotations

import shlex
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor, ExecutionMode
from nvflare.client.config import ExchangeFormat

from fedgai.federated import client
from fedgai.safe_paths import relative_only

DISTRIBUTION = "fedgai"
CLIENT_SCRIPT = str(Path(client.__file__).resolve())
OUTPUT_ROOT_OPTION = "--output-root"


def installed_version() -> str | None:
    """The installed fedgai distribution's version (None when fedgai runs from a source tree only)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return None


def check_script_args(task_script_args: str) -> None:
    """Raise UnsafePathError when the job names an absolute (or '..') --output-root: a job must not choose
    where on the studio's disk it writes. The studio's own $FEDGAI_OUTPUT_ROOT may be anywhere.

    Read token by token, as client.py's argparse reads them (``--output-root X``, ``--output-root=X`` and any
    unambiguous prefix such as ``--output``), without parsing the rest, which the script checks itself.
    """
    tokens = shlex.split(task_script_args)
    for i, token in enumerate(tokens):
        name, eq, value = token.partition("=")
        if name.startswith("--o") and OUTPUT_ROOT_OPTION.startswith(name):  # no other option starts with --o
            named = value if eq else (tokens[i + 1] if i + 1 < len(tokens) else "")
            relative_only(named, "--output-root in the job's task_script_args")


def version_problem(required: str, site: str) -> str | None:
    """Why this site must not run a job that needs fedgai ``required``, or None."""
    installed = installed_version()
    if installed == required:
        return None
    have = f"fedgai {installed}" if installed else "no installed fedgai distribution"
    return (f"{site} has {have}, but this job needs fedgai {required}: install that version "
            f"(pip install fedgai-{required}-py3-none-any.whl, see docs/deployment.md) or export the job "
            f"again with the installed version (fedgai job export)")


class StudioExecutor(ClientAPIExecutor):
    """The studio trainer (federated/client.py, in process) from the installed package, version-checked.

    Args:
        fedgai_version: the fedgai version the job was exported with; any other version refuses to run.
        task_script_args: arguments for client.py (``--studio``/``--output-root``; empty for portable jobs).
    """

    def __init__(self, fedgai_version: str, task_script_args: str = ""):
        check_script_args(task_script_args)
        super().__init__(execution_mode=ExecutionMode.IN_PROCESS, task_script_path=CLIENT_SCRIPT,
                         task_script_args=task_script_args, params_exchange_format=ExchangeFormat.PYTORCH)
        self.fedgai_version = fedgai_version

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            problem = version_problem(self.fedgai_version, f"studio {fl_ctx.get_identity_name()}")
            if problem:  # never start the trainer; the panic stops this site's part of the job
                self.log_error(fl_ctx, problem)
                self.system_panic(problem, fl_ctx)
                return
        super().handle_event(event_type, fl_ctx)


class FedgaiVersionCheck(FLComponent):
    """Server component: the job stops at once, with the reason, if the server's fedgai is another version."""

    def __init__(self, fedgai_version: str):
        super().__init__()
        self.fedgai_version = fedgai_version

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            problem = version_problem(self.fedgai_version, "the server")
            if problem:
                self.log_error(fl_ctx, problem)
                self.system_panic(problem, fl_ctx)
