"""The simulated Hyper-V host: ``python -m vmbusops.sim``, a real PSRP peer over OutOfProc framing.

Theory of operation
-------------------
The simulator is a fake PowerShell server process. The process, its pipes, the OutOfProc framing
(``vmbusops.psrp.framing``) and the PSRP messages (psrpcore's ``ServerRunspacePool`` and
``ServerPipeline``) are the real thing, so any PSRP client (ours, psrpcore's, pypsrp's) talks to it
as to ``powershell.exe -ServerMode``. Behind the protocol it simulates a Hyper-V host:

- ``lab``: the lab file (VMs, credentials, latency, faults, chaos) and :func:`lab_password`;
- ``state``: persistent VM state and guest file systems under the state directory, shared by
  every simulator process through a file lock;
- ``cmdlets``: every command the simulator answers, host and guest, listed by name;
- ``hyperv``: the host that runs them (:class:`~vmbusops.sim.hyperv.HyperVHost`); ``vm_cmdlets``
  and ``hostfiles``: the host cmdlets with their real parameters and real error records
  (Get-VM, Get-VMIntegrationService, Enable-/Disable-VMIntegrationService, Copy-VMFile,
  Invoke-Command -VMName/-VMId, Start-VM, Stop-VM, Restart-VM); ``checkpoint_cmdlets`` over
  ``checkpoints``: Checkpoint-VM, Get-/Restore-/Remove-VMSnapshot, Get-VMHardDiskDrive and
  Get-Volume, checkpoints that keep the whole guest; the texts are in ``pserrors``;
- the PowerShell subset that runs inside a guest: ``guest_parse`` (the parser), ``guest`` (the
  evaluator, one session), ``guest_values``, ``guest_stage`` (what a cmdlet is), and the cmdlets:
  ``guest_cmdlets``, ``guest_files``, ``scheduled_tasks``, ``dsc`` (with ``dsc_lcm`` and
  ``dsc_resources``), ``wua`` (the patch step's scripts);
- ``server`` and ``clixml``: the PSRP server loop and the wire format of its records.

Host level
----------
The host runs structured commands, and one script: vmbusops' guest invoker
(``Invoke-VmbusOpsGuest.ps1``), recognised by the SHA-256 of its exact text, or called by name as
the function ``Invoke-VmbusOpsGuest`` a JEA role defines; ``invoker`` binds its parameters as
PowerShell's binder does and runs its guest wrapper natively (step markers, step files, exit
codes). Any other script command (``is_script``) is refused with an error saying so. Any other
command name yields PowerShell's CommandNotFoundException ("The term 'X' is not recognized as the
name of a cmdlet, ...").

Parameters bind by type as PowerShell's binder binds them (``binding``): names are [string[]],
switches [switch], ids [guid], credentials [pscredential]. ``Invoke-Command`` sent directly never
runs: no value a PSRP client can send binds to its [scriptblock] -ScriptBlock, and the simulator
refuses it with PowerShell's own error. The guest invoker reaches a guest the way its
``Invoke-Command -VMName/-VMId`` does, checking in order: the VM exists (else
``InvalidVMNameNotSingle``), it is running (``InvalidVMState``), a session opens
(``session_open_ms``), the guest has booted (else "An error has occurred which Windows PowerShell
cannot handle. A remote session might have ended."), the credential matches (else "The
credential is invalid."). Then the steps run after the VM's ``latency_ms``, and their records
stream live. A VM with ``session_drop_after_records
= N`` delivers N records and then the session breaks with the "remote session might have ended"
error; ``socket_ends_after_records = N`` ends it with the Hyper-V socket's "target process has
ended" error instead, and ``connect_fails = true`` refuses every session with "A failure occurred
while attempting to connect to the target virtual machine.". All of these are non-terminating
errors: the pipeline completes, as with the real cmdlet.

A guest's verbose, warning and debug records reach the client only if its runspace pool
declared a host with a UI (HostInfo with IsHostNull and IsHostUINull false), as with PowerShell
7.6.9, which drops them otherwise even with -Verbose or the preferences at Continue. With a UI,
each verbose, warning, debug and progress record is followed by its void host call
(WriteVerboseLine, WriteWarningLine, WriteDebugLine, WriteProgress), as pwsh sends them. As in
PowerShell, a guest cmdlet writes verbose and debug records only when asked to: its ``-Verbose`` /
``-Debug`` switch, else ``$VerbosePreference`` / ``$DebugPreference`` (default SilentlyContinue).
Output values are sent as plain primitives and objects, without the PSComputerName/RunspaceId
notes real remoting adds.

Guest PowerShell subset
-----------------------
Script blocks run through a small interpreter. Supported:

- statements separated by newlines or ``;``; comments ``#`` and ``<# #>``; line continuation with
  a trailing backtick;
- pipelines ``a | b | c``, streaming object by object;
- literals: ``'single'`` and ``"double"`` strings (the latter expand ``$var``, ``$_``,
  ``$env:NAME``, ``${name}`` and backtick escapes; like PowerShell, ``"$x.Name"`` and
  ``"$args[0]"`` expand only the variable), integers, decimals, ``1KB``-style suffixes, ranges
  ``1..N``, arrays ``a, b, c`` and ``@( ... )``, sub-expressions ``( ... )``, script blocks
  ``{ ... }``;
- variables: assignment ``$x = ...``, ``$args`` (from ``-ArgumentList``), ``$_``/``$PSItem``,
  ``$true``, ``$false``, ``$null``, ``$env:COMPUTERNAME`` (and USERNAME, TEMP, SystemRoot, ...),
  ``$PSVersionTable`` (a minimal hashtable); member access ``$x.Name`` and indexing ``$x[0]``;
- error actions: ``-ErrorAction`` and ``$ErrorActionPreference`` (``Stop`` makes a cmdlet's error
  terminating; ``SilentlyContinue`` hides it but ``$Error`` still gains it; ``Ignore`` drops it);
- verbose and debug output: a cmdlet's ``-Verbose`` / ``-Debug`` (``-Verbose:$false`` too), else
  ``$VerbosePreference`` / ``$DebugPreference``: written under ``Continue``, dropped under
  ``SilentlyContinue`` (the default) and ``Ignore``; ``Stop`` and ``Inquire`` are refused as
  unsupported. The LCM's lines follow its cmdlet's ``-Verbose``. ``-Debug`` means Continue, as in
  PowerShell 7 (Windows PowerShell 5.1 makes it Inquire, a prompt). The simulator has no advanced
  functions or scopes, so an enclosing function's ``-Verbose`` is not modelled;
- ``foreach ($x in ...) { ... }``, ``ForEach-Object { ... }`` / ``%`` / ``foreach`` (also
  ``-Begin``/``-End`` and ``% Name``), ``exit N``; ``throw`` / ``throw <value>`` (the record
  PowerShell makes: RuntimeException, the text as its id, OperationStopped); ``break`` and
  ``continue`` without a label (outside a loop they leave the script, as in PowerShell);
- the call operator ``& "C:\\path\\x.ps1" args...`` (a script file in the guest: ``exit N`` ends the
  file and sets ``$LASTEXITCODE``, the caller goes on) and ``& { ... }`` (``exit`` there ends the
  whole script, as in PowerShell); ``$global:``/``$script:`` prefixes name the one variable table
  (the simulator has no scopes); single-quoted strings also close on typographic quotes;
- cmdlets: Write-Output, Write-Verbose, Write-Warning, Write-Error, Write-Information,
  Write-Progress, Write-Debug, Start-Sleep (-Seconds/-Milliseconds, real and cancellable),
  Get-Service [-Name], Get-Process [-Name|-Id], Test-Path, Get-Content,
  Get-FileHash (SHA256 default; Algorithm, Hash, Path), Get-ChildItem, Get-HotFix,
  Set-Content (always UTF-8; ``-Encoding`` is accepted), Set-ExecutionPolicy (accepted, no effect:
  the simulated guest has no execution policy), Write-Host (an information record tagged PSHOST),
  Restart-Computer (the guest reboots; the script
  ends there, even inside a called script file), ``Get-Date -Format o`` (the guest's clock as
  round-trip text; no other form of Get-Date), ``hostname``, and one native command,
  ``cmd.exe /c`` with ``echo TEXT``, ``echo TEXT 1>&2`` and ``exit /b N`` (stderr lines become
  NativeCommandError records as Windows PowerShell 5.1's remoting makes them, terminating under
  ``$ErrorActionPreference = 'Stop'``; the exit code sets ``$LASTEXITCODE``).

Anything else (if/while/try/return, operators such as ``-eq``, method calls, hashtables, other cmdlets)
is reported as an error record saying the simulator does not support it; that includes the common
cmdlets every Windows guest has (Read-Host, Get-Item, Select-Object, ...), which are never called
unknown. Unknown commands get PowerShell's own CommandNotFoundException, as in a real guest. The
guest's file system is real files under ``<state-dir>/guests/<vm>/C/``; paths are case-insensitive
like Windows'.

Several hosts
-------------
A lab may declare a fleet: ``[[hosts]]``, some of them nodes of a failover cluster, each VM owned
by one host (``lab``). The state then says which host owns each VM now and which hosts are down.
``python -m vmbusops.sim --as HV-B`` (host spec ``sim:HV-B``) serves one host: Get-VM, every VM
cmdlet and Invoke-Command see only the VMs it owns now, any other is "not found" with Hyper-V's
own error. ``cluster`` moves VMs as a cluster does (``migrate_vm``, ``fail_host``,
``restore_host``; ``vmbusops lab``): a PowerShell Direct session open on the host a VM leaves
breaks under its running command with the Hyper-V socket's "target process has ended" error
(``hyperv``), and a failed host's process exits. Without ``--as`` a process serves every VM.

Python API
----------
``load_lab(path | None)`` reads a lab (the built-in default when None); ``lab_password(lab, vm)``
and ``Lab.credential(vm)`` give a guest's credentials (``lab_admin_password(lab)`` is the one
password every guest without its own ``password`` accepts); ``default_state_dir()`` is where the CLI
keeps state (``$VMBUSOPS_SIM_STATE``, else ``$VMBUSOPS_HOME/sim``). The default lab has web01, web02, db01 (running), legacy01
(off) and app01 (running, Guest Service Interface disabled), all with user ``Administrator``.
"""

import os
from pathlib import Path

from vmbusops.home import home_dir
from vmbusops.sim.lab import Lab, VMSpec, VMState, lab_password, load_lab

__all__ = ["Lab", "VMSpec", "VMState", "default_state_dir", "lab_password", "load_lab"]


#: A state directory every simulator process uses instead of $VMBUSOPS_HOME/sim: how the agents of
#: a simulated fleet, each with its own home, share one lab's state.
ENV_STATE = "VMBUSOPS_SIM_STATE"


def default_state_dir() -> Path:
    """Where ``python -m vmbusops.sim`` keeps state without --state-dir: $VMBUSOPS_SIM_STATE, else
    ``$VMBUSOPS_HOME/sim``."""
    explicit = os.environ.get(ENV_STATE)
    return Path(explicit) if explicit else home_dir() / "sim"
