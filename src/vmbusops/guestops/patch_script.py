"""The guest scripts of the ``patch`` step: Windows Update through the Windows Update Agent COM API.

Why two scripts
---------------
Microsoft documents that ``IUpdateSession::CreateUpdateDownloader`` and ``CreateUpdateInstaller``
are not available to a remote session: ``Download()`` and ``Install()`` fail with E_ACCESSDENIED
(0x80070005). PowerShell Direct is a remote session. Searching is allowed. So:

- :data:`PATCH_SCRIPT` runs in the PowerShell Direct session. In ``check`` mode it searches and
  lists what would be installed. In ``install`` mode it writes :data:`INSTALL_SCRIPT` and a small
  request (categories, KB ids) to ``C:\\ProgramData\\vmbusops\\wua\\<id>``, registers a scheduled task
  that runs it as ``NT AUTHORITY\\SYSTEM`` (a local, non-remote logon), starts it, and polls the
  task's result file, relaying each line as it appears; it removes the task and the folder when
  it ends, whatever happened. It gives up waiting after ``TimeoutSeconds`` (exit 1), leaving a task
  that is still running registered, so that nothing kills an install half way.
- :data:`INSTALL_SCRIPT` runs as that task: search, download and install, one update at a time,
  writing one JSON line per event to ``results.jsonl``.

Arguments of :data:`PATCH_SCRIPT`: mode (``check`` | ``install``), categories and KB ids (comma
separated, empty for all), the timeout in seconds, and the text of :data:`INSTALL_SCRIPT` (passed
rather than embedded, so the guest writes exactly the text the agent ships). Its output, per
update, a progress record and one object, then one summary object::

    KB, Title, Categories, Result (Pending | Succeeded | SucceededWithErrors | Failed | Aborted),
    RebootRequired
    vmbusopsPatchSummary = $true, Found, Installed, Failed, RebootRequired

It exits 0 when it has a summary, 1 otherwise. Neither script sets ``$ErrorActionPreference =
'Stop'`` for itself: the calls that must not fail say ``-ErrorAction Stop`` or sit in ``try``. The
guest invoker counts what ``$Error`` gains as the step's errors (caught ones included), so the
script's successful path records none: it reads only whole result lines instead of catching a
half-written one, and cleans up with ``-ErrorAction Ignore`` and a check.

Both are package data (``powershell/*.ps1``), so the real-PowerShell lane's Windows PowerShell
5.1 check reads them as it reads the guest invoker. The simulated guest has no COM: it recognises
both texts by their SHA-256
(``vmbusops.sim.wua``), runs :data:`PATCH_SCRIPT` as a simulated equivalent, and runs a scheduled
task whose ``-File`` holds exactly :data:`INSTALL_SCRIPT` as SYSTEM; run in the remote session,
that script's Download is refused with E_ACCESSDENIED, as on Windows. A test pins the hashes, so
changing a script without the simulator fails loudly.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Final

_FOLDER = resources.files("vmbusops.guestops").joinpath("powershell")
#: The remote session's part, ``powershell/Invoke-VmbusOpsPatch.ps1``.
PATCH_SCRIPT: Final = _FOLDER.joinpath("Invoke-VmbusOpsPatch.ps1").read_text(encoding="utf-8")
#: The SYSTEM task's part, ``powershell/Install-VmbusOpsUpdate.ps1``.
INSTALL_SCRIPT: Final = _FOLDER.joinpath("Install-VmbusOpsUpdate.ps1").read_text(encoding="utf-8")

INSTALL_SCRIPT_SHA256: Final = hashlib.sha256(INSTALL_SCRIPT.encode("utf-8")).hexdigest()
PATCH_SCRIPT_SHA256: Final = hashlib.sha256(PATCH_SCRIPT.encode("utf-8")).hexdigest()
