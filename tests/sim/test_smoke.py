from __future__ import annotations

from sim_testclient import PSRPTestClient, admin

from vmbusops.sim.lab import Lab


async def test_get_vm_and_invoke(client: PSRPTestClient, lab: Lab) -> None:
    res = await client.run("Get-VM")
    print(res.events)
    assert [str(o.Name) for o in res.output] == ["web01", "db01", "legacy01", "app01", "flaky01"]
    res = await client.run(
        "Invoke-Command",
        VMName="web01",
        Credential=admin(lab, "web01"),
        ScriptBlock="Write-Verbose 'hi'; 1..3 | % { \"n=$_\" }; $env:COMPUTERNAME",
    )
    print(res.events)
    assert res.verbose == ["hi"]
    assert res.output == ["n=1", "n=2", "n=3", "WEB01"]


async def test_child_process(lab_file, tmp_path) -> None:
    from sim_testclient import sim_process

    from vmbusops.sim.lab import load_lab

    lab = load_lab(lab_file)
    async with sim_process(lab_file, tmp_path / "st") as sim:
        res = await sim.client.run(
            "Invoke-Command", VMName="web01", Credential=admin(lab, "web01"), ScriptBlock="Write-Output 7"
        )
        assert res.output == [7]
        await sim.client.close()
    assert sim.process.returncode == 0
    assert bytes(sim.stderr) == b""
