"""`trust add` of a key already trusted changes nothing unless asked to rename it."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from vmbusops.bundle.keys import write_keypair
from vmbusops.bundle.paths import trust_policy_path
from vmbusops.cli.exitcodes import OK, USAGE
from vmbusops.cli.main import cli


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_adding_a_trusted_key_again_says_so_and_changes_nothing(tmp_path: Path, vmbusops_home: Path) -> None:
    _, pub, _ = write_keypair(tmp_path, "alice", passphrase=None)
    assert run("trust", "add", str(pub), "--vms", "web*")[0] == OK
    before = trust_policy_path().read_text()

    code, out, _ = run("trust", "add", str(pub), "--vms", "web*")
    assert code == OK and "already trusted as alice with this scope; nothing changed" in out

    code, _, err = run("trust", "add", str(pub), "--name", "mallory")
    assert code == USAGE
    assert "is already trusted as alice" in err and "nothing changed" in err and "Traceback" not in err
    code, _, err = run("trust", "add", str(pub), "--vms", "*")
    assert code == USAGE and "already trusted as alice" in err
    assert trust_policy_path().read_text() == before

    code, out, _ = run("trust", "add", str(pub), "--name", "alice-2024", "--rename")
    assert code == OK and "renamed alice" in out
    code, out, _ = run("trust", "list")
    assert "alice-2024" in out and "web*" in out and out.count("vms ") == 1


def test_rename_needs_a_trusted_key_and_no_scope_options(tmp_path: Path, vmbusops_home: Path) -> None:
    _, pub, _ = write_keypair(tmp_path, "bob", passphrase=None)
    code, _, err = run("trust", "add", str(pub), "--rename")
    assert code == USAGE and "not trusted, so there is nothing to rename" in err
    assert run("trust", "add", str(pub))[0] == OK
    code, _, err = run("trust", "add", str(pub), "--name", "b", "--rename", "--vms", "x*")
    assert code == USAGE and "--rename changes only the name" in err


def test_a_name_says_which_key_signed_so_two_keys_never_share_one(tmp_path: Path, vmbusops_home: Path) -> None:
    _, bob, _ = write_keypair(tmp_path, "bob", passphrase=None)
    _, carol, _ = write_keypair(tmp_path, "carol", passphrase=None)
    _, dave, _ = write_keypair(tmp_path, "dave", passphrase=None)
    assert run("trust", "add", str(bob))[0] == OK
    assert run("trust", "add", str(carol))[0] == OK
    before = trust_policy_path().read_text()
    for pub, args in ((dave, ["--name", "bob"]), (carol, ["--name", "bob", "--rename"])):
        code, _, err = run("trust", "add", str(pub), *args)
        assert code == USAGE and "is already trusted as bob; nothing changed" in err, (args, err)
    assert trust_policy_path().read_text() == before


def test_the_same_scope_in_another_order_is_the_same_scope(tmp_path: Path, vmbusops_home: Path) -> None:
    _, pub, _ = write_keypair(tmp_path, "alice", passphrase=None)
    assert run("trust", "add", str(pub), "--vms", "db01", "--vms", "web*", "--credential", "a", "--credential", "b")[0] == OK
    code, out, _ = run("trust", "add", str(pub), "--vms", "web*", "--vms", "db01", "--credential", "b", "--credential", "a")
    assert code == OK and "with this scope; nothing changed" in out
    code, _, err = run("trust", "add", str(pub), "--vms", "*")
    assert code == USAGE and "with another scope; nothing changed" in err
    code, out, _ = run("trust", "add", str(pub), "--name", "alice", "--rename")
    assert code == OK and "already trusted as alice; nothing changed" in out


def test_trust_remove_takes_the_name_trust_list_shows(tmp_path: Path, vmbusops_home: Path) -> None:
    _, pub, _ = write_keypair(tmp_path, "alice", passphrase=None)
    assert run("trust", "add", str(pub))[0] == OK
    code, out, _ = run("trust", "remove", "alice")
    assert code == OK and out.startswith("removed alice (")
    code, _, err = run("trust", "remove", "alice")
    assert code == USAGE and "'alice' matches 0 trusted keys" in err


def test_a_policy_changed_in_place_is_read_again(tmp_path: Path, vmbusops_home: Path) -> None:
    """The parsed policy is reused only while the file's text is the same: an edit made in place
    (same inode and size, a scope narrowed by hand) and a rewrite are both seen at once."""
    from vmbusops.bundle.policy import load_trust_policy

    _, pub, _ = write_keypair(tmp_path, "alice", passphrase=None)
    assert run("trust", "add", str(pub), "--vms", "web1")[0] == OK
    path = trust_policy_path()
    first = load_trust_policy(path)
    assert load_trust_policy(path) is first and first.scopes[0].vms == ("web1",)

    text = path.read_text()
    with path.open("r+") as f:  # the same file, the same size: only the content changes
        f.write(text.replace('"web1"', '"db-1"'))
    assert load_trust_policy(path).scopes[0].vms == ("db-1",)

    assert run("trust", "remove", "alice")[0] == OK
    assert not load_trust_policy(path).scopes
