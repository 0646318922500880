"""The JEA endpoint in host_agent/ allows exactly what the agent sends, no more and no less.

Both sides are read from source, not restated here: the role capability (.psrc) and session
configuration (.pssc) through the PowerShell grammar (tree-sitter), and the agent's commands from
the Python syntax tree of every ``Command("...", {...})`` the package builds. A new cmdlet or
parameter in the code without the endpoint (or the reverse) fails. The role's guest invoker
function is the agent's invoker script, byte for byte. (tests/powershell/JeaEndpoint.Tests.ps1
loads the same files into a real JEA runspace of PowerShell 7.)
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from psd1 import DataFileError, ScriptBlock, load_data_file

import vmbusops
from vmbusops.guestops import invoker
from vmbusops.guestops.checkpoints import CHECKPOINT_NAME
from vmbusops.guestops.host import HOST_CMDLETS
from vmbusops.guestops.invoker import INVOKER_FUNCTION, INVOKER_SCRIPT
from vmbusops.guestops.remote import DEFAULT_STAGING_ROOT
from vmbusops.guestops.staging import (
    STAGING_CMDLETS,
    STAGING_FUNCTIONS,
    StageFile,
    _folder_name,
    host_path_join,
)

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "host_agent"
PACKAGE = Path(vmbusops.__file__).parent
#: What every JEA (RestrictedRemoteServer) session offers besides the role; ``vmbusops hosts``
#: uses Get-Command to list what a host allows.
JEA_DEFAULTS = frozenset(
    {"Clear-Host", "Exit-PSSession", "Get-Command", "Get-FormatData", "Get-Help", "Measure-Object",
     "Out-Default", "Select-Object"}
)


def _role_file() -> dict[str, Any]:
    data = load_data_file(
        (AGENT / "VmbusOpsHost" / "RoleCapabilities" / "VmbusOpsHost.psrc").read_bytes(), script_blocks=True
    )
    assert isinstance(data, dict)
    return data


def _functions() -> dict[str, dict[str, dict[str, str]]]:
    """Function -> its parameters (name -> attribute -> argument), from FunctionDefinitions."""
    data = _role_file()
    defined: dict[str, dict[str, dict[str, str]]] = {}
    for entry in data["FunctionDefinitions"]:
        body = entry["ScriptBlock"]
        assert isinstance(body, ScriptBlock)
        defined[str(entry["Name"])] = body.parameters
    visible = data["VisibleFunctions"]
    named = [v for v in (visible if isinstance(visible, list) else [visible]) if isinstance(v, str)]
    assert set(named) == set(defined), "visible by name = defined"
    return defined


def _module_functions() -> dict[str, dict[str, dict[str, object]]]:
    """VisibleFunctions entries restricted as cmdlets are (a module's function, e.g. Storage's
    CDXML Get-Volume): function -> its allowed parameters."""
    visible = _role_file()["VisibleFunctions"]
    allowed: dict[str, dict[str, dict[str, object]]] = {}
    for entry in visible if isinstance(visible, list) else [visible]:
        if isinstance(entry, dict):
            params = entry["Parameters"]
            params = params if isinstance(params, list) else [params]
            allowed[str(entry["Name"])] = {str(p["Name"]): p for p in params}
    return allowed


def _role() -> dict[str, dict[str, dict[str, object]]]:
    data = _role_file()
    allowed: dict[str, dict[str, dict[str, object]]] = {}
    for entry in data["VisibleCmdlets"]:
        assert isinstance(entry, dict), "every visible cmdlet names its parameters"
        name = str(entry["Name"])
        # JEA names the proxy of an entry with Parameters exactly as written: 'Hyper-V\Get-VM'
        # would answer only to that name, never to the Get-VM the agent sends.
        assert "\\" not in name, f"{name}: a module-qualified name is unreachable by its plain name"
        params = entry["Parameters"]
        params = params if isinstance(params, list) else [params]
        allowed[name] = {str(p["Name"]): p for p in params}
    assert set(data) <= {
        "GUID", "Author", "Description", "ModulesToImport", "VisibleCmdlets", "VisibleFunctions", "FunctionDefinitions"
    }, "the role grants something besides cmdlets and its own functions (providers, scripts, aliases...)"
    return allowed


def _sent() -> dict[str, set[str]]:
    """Cmdlet -> parameters, from every Command(...) the package builds.

    The simulator (the other side) and the PSRP client (which only re-encodes the commands it is
    handed) are not senders; every other layer is.
    """
    sent: dict[str, set[str]] = defaultdict(set)
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] in ("sim", "psrp"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            # Keys written into any dict variable of the function: params["Force"] = True
            variables: dict[str, set[str]] = defaultdict(set)
            for node in ast.walk(func):
                if isinstance(node, ast.Assign) and len(node.targets) == 1:
                    target = node.targets[0]
                    if isinstance(target, ast.Name):
                        variables[target.id] |= _dict_keys(node.value)
                    elif (
                        isinstance(target, ast.Subscript)
                        and isinstance(target.value, ast.Name)
                        and isinstance(target.slice, ast.Constant)
                        and isinstance(target.slice.value, str)
                    ):
                        variables[target.value.id].add(target.slice.value)
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
                    variables[node.target.id] |= _dict_keys(node.value)
            for node in ast.walk(func):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Command"):
                    continue
                where = f"{path.relative_to(PACKAGE)}:{node.lineno}"
                if any(k.arg == "is_script" for k in node.keywords):
                    # The one script command: on a JEA endpoint the role's function of the same body.
                    assert node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == "INVOKER_SCRIPT", (
                        f"{where}: the agent sends no script but the guest invoker"
                    )
                    continue
                assert node.args and isinstance(node.args[0], ast.Constant | ast.Name), (
                    f"{where}: a command name must be a literal, so the endpoint contract can see it"
                )
                first = node.args[0]
                if isinstance(first, ast.Name):
                    assert first.id in _NAMED_COMMANDS, f"{where}: command name {first.id} is not a known constant"
                    name = _NAMED_COMMANDS[first.id]
                else:
                    name = str(first.value)
                sent[name]  # a command with no parameters is still sent
                params = node.args[1] if len(node.args) > 1 else None
                if params is None:
                    continue
                if isinstance(params, ast.Name):
                    assert params.id in variables, f"{where}: parameters of {name} come from an unknown place"
                    sent[name] |= variables[params.id]
                else:
                    keys = _dict_keys(params, strict=True)
                    assert keys or (isinstance(params, ast.IfExp)), f"{where}: parameters must be dict literals"
                    sent[name] |= keys
    if INVOKER_FUNCTION in sent:
        # What the agent sends through the invoker is the invoker's own calls on the host.
        for cmdlet, params in _called_by_the_invoker().items():
            sent[cmdlet] |= params
    return dict(sent)


def _called_by_the_invoker() -> dict[str, set[str]]:
    """Cmdlet -> parameters that the guest invoker's own body calls on the host.

    The invoker builds its target as ``$target['VMName'] = ...`` / ``$target['VMId'] = ...`` and
    splats it into one ``Invoke-Command`` call (tests/powershell/JeaEndpoint.Tests.ps1 shows what
    that call binds, with PowerShell's binder).
    """
    host_part = INVOKER_SCRIPT.split("\n'@\n", 1)[1]  # after the guest script's here-string
    lines = host_part.splitlines()
    calls = [i for i, line in enumerate(lines) if line.startswith("Invoke-Command ")]
    assert len(calls) == 1, "the invoker calls Invoke-Command once on the host"
    index = calls[0]
    text = lines[index]
    while text.rstrip().endswith("`"):  # a line continued with a backtick
        index += 1
        text = text.rstrip()[:-1] + " " + lines[index].strip()
    params = set(re.findall(r"(?<![\w$])-([A-Za-z]+)", text))
    if "@target" in text:
        params |= set(re.findall(r"\$target\['([A-Za-z]+)'\]", host_part))
    return {"Invoke-Command": params}


#: Command names the package gives as constants rather than literals.
_NAMED_COMMANDS = {"INVOKER_FUNCTION": INVOKER_FUNCTION}


def _dict_keys(node: ast.expr, *, strict: bool = False) -> set[str]:
    if isinstance(node, ast.Dict):
        keys = set()
        for key in node.keys:
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                keys.add(key.value)
            elif strict:
                raise AssertionError(f"line {node.lineno}: parameter names must be literals")
        return keys
    if isinstance(node, ast.IfExp):
        return _dict_keys(node.body, strict=strict) | _dict_keys(node.orelse, strict=strict)
    return set()


@pytest.mark.slow
def test_the_role_allows_exactly_the_cmdlets_the_agent_sends() -> None:
    allowed = _role()
    sent = _sent()
    functions = _functions()
    modular = _module_functions()
    assert set(allowed) | set(modular) == set(HOST_CMDLETS | STAGING_CMDLETS)
    assert set(functions) == set(STAGING_FUNCTIONS) | {INVOKER_FUNCTION}
    assert set(sent) - JEA_DEFAULTS == set(allowed) | set(functions) | set(modular)


#: Parameters the role must allow though the agent never sends them. Invoke-Command -VMId runs
#: ``Get-VM -Id $args[0]`` inside the session (PowerShell's
#: PSRemotingCmdlet.CreateHelpersForSpecifiedVMSession), through the role's Get-VM proxy;
#: tests/powershell/JeaEndpoint.Tests.ps1 shows the call in a JEA runspace.
USED_INSIDE_THE_ENDPOINT = {"Get-VM": {"Id"}}


@pytest.mark.slow
def test_the_role_allows_exactly_the_parameters_the_agent_sends() -> None:
    allowed = _role()
    sent = _sent()
    assert "VMId" in sent["Invoke-Command"] or "VMId" in sent[INVOKER_FUNCTION]
    for cmdlet, params in (allowed | _module_functions()).items():
        # -Confirm is a common parameter: a JEA proxy keeps it whatever the role lists.
        assert set(params) == sent[cmdlet] - {"Confirm"} | USED_INSIDE_THE_ENDPOINT.get(cmdlet, set()), cmdlet
    for function, fparams in _functions().items():
        assert set(fparams) == sent[function], function


def test_the_staging_functions_write_and_remove_only_job_folders() -> None:
    functions = _functions()
    pattern = str(_role()["Copy-VMFile"]["SourcePath"]["ValidatePattern"])
    write = functions["Write-VmbusOpsStagedFile"]
    assert write["Path"]["ValidatePattern"] == pattern
    assert "Mandatory" in write["Offset"]["Parameter"] and write["Offset"]["ValidateRange"].startswith("0,")
    assert "[byte[]]" in write["Data"]
    folder_pattern = functions["Remove-VmbusOpsStagingFolder"]["Path"]["ValidatePattern"]
    folder = host_path_join(DEFAULT_STAGING_ROOT, _folder_name("nightly patch #7"))
    assert re.match(folder_pattern, folder)
    for path in (DEFAULT_STAGING_ROOT, DEFAULT_STAGING_ROOT + "\\other", "C:\\Windows", folder + "\\a.txt",
                 DEFAULT_STAGING_ROOT + "\\job-1\\..\\..\\x"):
        assert not re.match(folder_pattern, path), path


def test_the_role_runs_guests_through_the_agents_own_invoker() -> None:
    data = _role_file()
    [entry] = [e for e in data["FunctionDefinitions"] if e["Name"] == INVOKER_FUNCTION]
    text = entry["ScriptBlock"].text
    assert text.startswith("{") and text.endswith("}")
    body = text[1:-1]
    shipped = INVOKER_SCRIPT
    # Only line endings may differ (a checkout with CRLF): every other byte is the agent's script.
    assert body.replace("\r\n", "\n") == shipped.replace("\r\n", "\n"), (
        "the role's Invoke-VmbusOpsGuest differs from guestops/powershell/Invoke-VmbusOpsGuest.ps1: "
        "paste the file between the braces again"
    )
    assert invoker.INVOKER_FUNCTION == "Invoke-VmbusOpsGuest"


def test_the_scan_sees_the_commands_it_must() -> None:
    sent = _sent()
    assert {"Name", "SourcePath", "DestinationPath", "FileSource", "CreateFullPath", "Force"} == sent["Copy-VMFile"]
    assert {"Name", "Force", "TurnOff"} == sent["Stop-VM"]
    assert {"Credential", "ScriptBlock", "VMName", "VMId", "ArgumentList"} == sent["Invoke-Command"]
    assert {"VMName", "VMId", "Credential", "Script", "StepIndex", "RunId", "ArgumentList"} == sent[INVOKER_FUNCTION]


def test_checkpoint_names_fit_the_endpoint_pattern_and_wildcards_do_not() -> None:
    allowed = _role()
    patterns = {
        str(allowed[cmdlet][param]["ValidatePattern"])
        for cmdlet, param in (("Checkpoint-VM", "SnapshotName"), ("Get-VMSnapshot", "Name"),
                              ("Restore-VMSnapshot", "Name"), ("Remove-VMSnapshot", "Name"))
    }
    assert patterns == {CHECKPOINT_NAME.pattern}, "one name rule, the agent's"
    assert "IncludeAllChildSnapshots" not in allowed["Remove-VMSnapshot"]
    for name in ("vmbusops-job-7-step-2", "a", "x.y_z-1"):
        assert re.fullmatch("^(" + CHECKPOINT_NAME.pattern + ")$", name), name
    for name in ("*", "vmbusops-*", "a[1]", "?", "", "-x", "a b", "x" * 101):
        assert not re.fullmatch("^(" + CHECKPOINT_NAME.pattern + ")$", name), name


def test_staging_paths_fit_the_endpoint_patterns_and_nothing_else_does() -> None:
    allowed = _role()
    pattern = str(allowed["Copy-VMFile"]["SourcePath"]["ValidatePattern"])
    assert pattern == allowed["Get-FileHash"]["LiteralPath"]["ValidatePattern"]
    folder = host_path_join(DEFAULT_STAGING_ROOT, _folder_name("nightly patch #7"))
    for name in ("DSC.zip", "KB5034441.msu", "_x", "settings.ini"):
        assert re.match(pattern, host_path_join(folder, StageFile(Path(name)).staged_name)), name
    for path in (
        "C:\\Windows\\System32\\config\\SAM",
        DEFAULT_STAGING_ROOT + "\\job-1\\..",
        DEFAULT_STAGING_ROOT + "\\job-1\\a\\b.txt",
        DEFAULT_STAGING_ROOT + "\\other\\a.txt",
        "\\\\server\\share\\a.txt",
    ):
        assert not re.match(pattern, path), path
    assert allowed["Copy-VMFile"]["FileSource"]["ValidateSet"] == "Host"
    assert allowed["Get-FileHash"]["Algorithm"]["ValidateSet"] == "SHA256"


def test_the_session_is_restricted_and_maps_only_the_role() -> None:
    data = load_data_file((AGENT / "VmbusOps.pssc").read_bytes())
    assert data["SessionType"] == "RestrictedRemoteServer"
    assert data["RunAsVirtualAccount"] is True
    assert data["RunAsVirtualAccountGroups"] == ["Hyper-V Administrators", "vmbusops-staging"]
    assert "Administrators" not in str(data["RunAsVirtualAccountGroups"]).replace("Hyper-V Administrators", "")
    roles = {role["RoleCapabilities"] for role in data["RoleDefinitions"].values()}
    assert roles == {"VmbusOpsHost"}
    for forbidden in ("VisibleFunctions", "VisibleExternalCommands", "VisibleProviders", "ScriptsToProcess",
                      "LanguageMode", "ExecutionPolicy", "FunctionDefinitions", "VisibleCmdlets"):
        assert forbidden not in data, forbidden


def test_the_data_file_reader_refuses_code() -> None:
    assert load_data_file(b"@{ A = 'it''s'; B = 1, 2; C = @(); D = $false }") == {
        "A": "it's", "B": [1, 2], "C": [], "D": False,
    }
    for code in (b"@{ A = $(Remove-Item C:\\x) }", b"@{ A = \"$env:USERNAME\" }", b"@{ A = Get-Date }",
                 b"@{ A = $env:PATH }", b"@{ A = 'x'; a = 'y' }"):
        with pytest.raises(DataFileError):
            load_data_file(code)
