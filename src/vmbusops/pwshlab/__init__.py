"""The ``pwsh-lab`` host: the whole product on real PowerShell 7, over the simulator's lab.

Theory of operation
-------------------
``--host pwsh-lab`` starts a real PowerShell 7 PSRP server (``pwsh -NoLogo -NoProfile -s``) with
the session configuration file ``powershell/VmbusOpsLab.pssc``, which PowerShell applies to every
runspace of the pool it serves. It imports the module ``VmbusOpsLab``: the Hyper-V cmdlets the
agent sends (Get-VM, Get-VMGroup, Get-VMIntegrationService, Enable-VMIntegrationService,
Copy-VMFile, Invoke-Command -VMName/-VMId, Start-VM, Stop-VM, Restart-VM, and for checkpoints
Checkpoint-VM, Get-/Restore-/Remove-VMSnapshot, Get-VMHardDiskDrive and Storage's Get-Volume) as
functions with the real parameter sets and types, so PowerShell's own binder, serializer and remoting judge what the
agent sends and what comes back.

What a cmdlet does to the lab is decided by :mod:`vmbusops.pwshlab.labctl`, run with the agent's
own interpreter, over the simulator's lab file and state directory: a VM started through
``pwsh-lab`` is running for ``--host sim`` too, and a file copied in lands in the same
``guests/<vm>/C/`` folder. Guest script blocks run in real PowerShell, one child ``pwsh`` per
guest session (the process boundary PowerShell Direct has), with the guest's folder as its ``C:``
drive. What this lane cannot show: Hyper-V itself, Windows PowerShell 5.1 in the guest (native
stderr handling, execution policy and the FileSystem provider differ on Linux), DSC's LCM and
Windows Update; those stay with the simulator and a real host.

DSC in a guest: each guest session imports ``guest/VmbusOpsLabGuest.psm1`` (kept off the host's
PSModulePath), whose DSC cmdlets (PSDesiredStateConfiguration's parameter sets) hand each call
to labctl's ``dsc`` operation (:mod:`vmbusops.pwshlab.labdsc`). There the simulator's LCM runs
over the same lab state and guest files and streams its records as JSON lines, which the guest
function writes as they come: the LCM itself is simulated, but every one of its lines crosses
the guest's remote session, the lab's PSRP server and the agent's client live. The same module
gives ``Get-FileHash`` the guest's own ``C:`` paths, as on Windows.

Where the lab knowingly differs from a Hyper-V host:

- a VM group's members are written as objects (a PSCustomObject crosses remoting whole), where a
  Hyper-V host's VMGroup objects would send them past the serialization depth as their string
  form, which the simulator sends: the agent reads both;
- errors written by the lab's functions carry PowerShell's ``,<function name>`` suffix on their
  FullyQualifiedErrorId; messages, categories and exception types are the simulator's;
- Invoke-Command's ``-ScriptBlock`` is untyped in the function and bound by the real cmdlet, so a
  string is refused with the cmdlet's own message (a typed function parameter would say
  "Cannot process argument transformation");
- guest output carries ``PSComputerName`` ``localhost`` and information records the machine's
  user and computer name, not the guest's;
- DSC's verbose lines show only under ``-Verbose``, as in PowerShell (the simulator writes them
  whatever the preference); cmdlets and parameters the simulator's LCM does not model are refused
  with its "does not support" error;
- the guest is not a sandbox: its script runs as the agent's user on this machine, with ``C:``
  as a drive over the guest's lab folder; ``Restart-Computer`` restarts the lab VM and
  ``Stop-Computer`` is refused, shadowing PowerShell 7's own;
- modelled lab settings: ``session_open_ms``, ``latency_ms``, ``boot_seconds``, the faults
  ``connect_fails``, ``hang_on_restart`` and ``corrupt_copies``; not modelled: the faults that
  break a session after N records, ``crash_on``/``garbage_on``/``malformed_on``, ``-AsJob``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

#: Environment the lab module reads: the interpreter that runs labctl, the state, the lab file.
ENV_PYTHON = "VMBUSOPS_PWSHLAB_PYTHON"
ENV_STATE = "VMBUSOPS_PWSHLAB_STATE"
ENV_LAB = "VMBUSOPS_PWSHLAB_LAB"


def module_folder() -> Path:
    """The folder holding the ``VmbusOpsLab`` module and its session configuration file."""
    return Path(str(resources.files("vmbusops.pwshlab").joinpath("powershell")))


def configuration_file() -> Path:
    return module_folder() / "VmbusOpsLab.pssc"


def lab_argv(pwsh: str) -> tuple[str, ...]:
    """The command line of the lab's PowerShell server."""
    return (pwsh, "-NoLogo", "-NoProfile", "-s", "-ConfigurationFile", str(configuration_file()))


def lab_environment(
    *, python: str, state_dir: Path, lab: str | None, inherited: Mapping[str, str]
) -> dict[str, str]:
    """What the lab's PowerShell server needs on top of the agent's environment.

    The module folder goes first on ``PSModulePath`` so that the configuration file's
    ``ModulesToImport`` finds ``VmbusOpsLab`` by name, ahead of any other module of that name.
    """
    module_path = str(module_folder())
    existing = inherited.get("PSModulePath")
    return {
        ENV_PYTHON: python,
        ENV_STATE: str(state_dir),
        ENV_LAB: str(Path(lab).resolve()) if lab else "",
        "PSModulePath": f"{module_path}{os.pathsep}{existing}" if existing else module_path,
    }
