"""What a config-only job names at the sites: the studio trainer and the server's version check.

FedGAI jobs carry no code (no ``app/custom``): server and studios run the fedgai package installed at the
site, pinned to the version the job was exported with. The job names these classes by path; a studio
allows them by name in its ``local/resources.json`` class allow-list (jobs/allow_list.py: the shipped jobs' classes).

- ``StudioExecutor``: NVFlare's in-process Client-API executor running the installed
  ``fedgai/federated/studio/client.py`` (the same script the simulator runs). A relative script path would be
  searched for in the job's custom folder only, so the path is resolved here, at the site.
- ``FedgaiVersionCheck``: a server component that stops the job when the server's fedgai differs.

Both check the version when the job starts (START_RUN) and stop the job with a clear reason
(``system_panic``) instead of training with another version's code.

``StudioExecutor`` is also where the studio encrypts its update when the job's config says privacy.he
(issue 24): result filters are the job's to install, leave out or bind to another task, while this class is
the site's (its class allow-list admits no other executor), so privacy.he holds only because the studio
produced the ciphertexts itself. The job's encryptor filter then finds nothing left to do.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import tenseal as ts
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor, ExecutionMode
from nvflare.app_opt.he.homomorphic_encrypt import load_tenseal_context_from_workspace
from nvflare.client.config import ExchangeFormat

from fedgai.federated.he_keys import CLIENT_CONTEXT
from fedgai.federated.studio import client
from fedgai.federated.studio.he_studio import seal, seal_job
from fedgai.privacy.mechanism import UnsafeUpdateError
from fedgai.wire import CONFIG_META_KEY

DISTRIBUTION = "fedgai"
CLIENT_SCRIPT = str(Path(client.__file__).resolve())
DEVICE_OPTION = "--device"
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


class UnsafeScriptArgs(ValueError):
    """A job's script arguments try to pass the studio more than a device: a folder, an option, a secret."""


def installed_version() -> str | None:
    """The installed fedgai distribution's version (None when fedgai runs from a source tree only)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return None


def check_script_args(task_script_args: str) -> None:
    """Raise UnsafeScriptArgs unless the job's arguments for client.py are at most ``--device D``.

    Folders (studio data, outputs, ledgers) are the site's to choose (client.SitePaths), so a job names none.
    The check is an allow-list on the raw string, before NVFlare splits it on whitespace and expands
    ``${secret:...}`` references from the site's environment: quotes, spaces inside a value, secret references,
    '..' and absolute paths are all refused because nothing but a device name is accepted.
    """
    tokens = task_script_args.split()
    if not tokens:
        return
    if len(tokens) == 1 and tokens[0].startswith(f"{DEVICE_OPTION}="):
        tokens = [DEVICE_OPTION, tokens[0].partition("=")[2]]
    if len(tokens) != 2 or tokens[0] != DEVICE_OPTION or not DEVICE_PATTERN.fullmatch(tokens[1]):
        raise UnsafeScriptArgs(
            f"the job's task_script_args {task_script_args!r} are refused: a job may pass only "
            f"'{DEVICE_OPTION} auto|cpu|cuda|cuda:N' to a studio; its data folder, output root and ledgers are "
            f"the site's ($FEDGAI_DATA_ROOT, $FEDGAI_OUTPUT_ROOT, local/fedgai_privacy.json)")


def job_requires_he(task: Shareable) -> bool:
    """Whether the job's config (in the task's meta) says privacy.he: then the studio encrypts what it sends."""
    config = from_shareable(task).get_meta_prop(CONFIG_META_KEY) or {}
    return isinstance(config, dict) and (config.get("privacy") or {}).get("he") is True


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
    """The studio trainer (federated/studio/client.py, in process) from the installed package, version-checked.

    Args:
        fedgai_version: the fedgai version the job was exported with; any other version refuses to run.
        task_script_args: arguments for client.py: empty, or ``--device D`` (check_script_args).
    """

    def __init__(self, fedgai_version: str, task_script_args: str = ""):
        check_script_args(task_script_args)
        super().__init__(execution_mode=ExecutionMode.IN_PROCESS, task_script_path=CLIENT_SCRIPT,
                         task_script_args=task_script_args, params_exchange_format=ExchangeFormat.PYTORCH)
        self.fedgai_version = fedgai_version
        self._he_context: ts.Context | None = None
        self._encrypt = False

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        """Run the studio's round; when the job's config says privacy.he, encrypt the result here, so that the
        studio itself produces the ciphertexts whatever result filters the job installs (or leaves out)."""
        # Once a task said privacy.he, every later result is encrypted too: a server cannot switch it off mid-job.
        self._encrypt = self._encrypt or job_requires_he(shareable)
        result = super().execute(task_name, shareable, fl_ctx, abort_signal)
        if not self._encrypt or result.get_return_code() != ReturnCode.OK:
            return result
        return self._sealed(result, fl_ctx)

    def _sealed(self, result: Shareable, fl_ctx: FLContext) -> Shareable:
        """The result with every entry encrypted under the site's own client context (its startup kit)."""
        dxo = from_shareable(result)
        if dxo.data_kind not in (DataKind.WEIGHT_DIFF, DataKind.WEIGHTS):
            if dxo.data:  # a budget notice carries no data; anything else would leave in clear
                raise UnsafeUpdateError(f"under HE the studio sends only encrypted updates, got {dxo.data_kind}")
            return result
        if self._he_context is None:
            self._he_context = load_tenseal_context_from_workspace(CLIENT_CONTEXT, fl_ctx)
        sealed = seal(dxo, self._he_context)
        self.log_info(fl_ctx, f"the studio encrypted its {len(sealed.data)} entries itself")
        return sealed.update_shareable(result)

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            problem = version_problem(self.fedgai_version, f"studio {fl_ctx.get_identity_name()}")
            if problem:  # never start the trainer; the panic stops this site's part of the job
                self.log_error(fl_ctx, problem)
                self.system_panic(problem, fl_ctx)
                return
            seal_job(fl_ctx.get_job_id())  # before the script starts: it runs an HE job only if this is set
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
