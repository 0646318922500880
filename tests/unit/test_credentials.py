"""The credential store: sealed at rest, bound to its name, and never showing a password."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from vmbusops.config import Config
from vmbusops.credentials import (
    CredentialStore,
    GuestCredential,
    Secret,
    credential_resolver,
    resolve_credential,
)
from vmbusops.errors import CredentialStoreError

PASSWORD = "Pa55w0rd!-not-in-files"


def test_round_trip_and_nothing_in_clear_on_disk(vmbusops_home: Path) -> None:
    store = CredentialStore()
    store.set("tenant-a", "Administrator", Secret(PASSWORD))
    cred = store.get("tenant-a")
    assert cred.username == "Administrator"
    assert cred.password.reveal() == PASSWORD
    for path in vmbusops_home.iterdir():
        assert PASSWORD.encode() not in path.read_bytes()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_secret_and_credential_never_print_the_password() -> None:
    cred = GuestCredential("admin", Secret(PASSWORD), reference="x")
    for text in (str(cred.password), repr(cred.password), repr(cred), f"{cred}", f"{cred.password!r}"):
        assert PASSWORD not in text


def test_entry_moved_to_another_name_is_refused(vmbusops_home: Path) -> None:
    store = CredentialStore()
    store.set("a", "alice", Secret(PASSWORD))
    path = vmbusops_home / "credentials.json"
    data = json.loads(path.read_text())
    data["entries"]["b"] = data["entries"]["a"]
    path.write_text(json.dumps(data))
    with pytest.raises(CredentialStoreError, match="cannot be decrypted"):
        store.get("b")


def test_passphrase_mode(monkeypatch: pytest.MonkeyPatch, vmbusops_home: Path) -> None:
    monkeypatch.setenv("VMBUSOPS_CREDENTIAL_PASSPHRASE", "correct horse")
    CredentialStore().set("p", "bob", Secret(PASSWORD))
    assert not (vmbusops_home / "credentials.key").exists()
    assert CredentialStore().get("p").password.reveal() == PASSWORD
    monkeypatch.setenv("VMBUSOPS_CREDENTIAL_PASSPHRASE", "zebra-9")
    with pytest.raises(CredentialStoreError, match="cannot be decrypted") as info:
        CredentialStore().get("p")
    assert "zebra-9" not in str(info.value)
    monkeypatch.delenv("VMBUSOPS_CREDENTIAL_PASSPHRASE")
    with pytest.raises(CredentialStoreError, match="sealed with a passphrase"):
        CredentialStore().get("p")


def test_missing_and_bad_names_say_what_to_do() -> None:
    with pytest.raises(CredentialStoreError, match="vmbusops cred set nope"):
        CredentialStore().get("nope")
    with pytest.raises(CredentialStoreError, match="not a valid credential reference"):
        CredentialStore().set("../x", "u", Secret("p"))
    assert CredentialStore().remove("nope") is False


def test_a_reference_resolves_from_the_store_once_per_resolver(vmbusops_home: Path) -> None:
    store = CredentialStore()
    store.set("tenant-a", "Administrator", Secret(PASSWORD))
    credential_for = credential_resolver(Config(host="local"), None)
    assert credential_for("tenant-a").username == "Administrator"
    store.set("tenant-a", "Operator", Secret(PASSWORD))
    assert credential_for("tenant-a").username == "Administrator"  # remembered, not re-read
    assert resolve_credential("tenant-a", Config(host="local"), None).username == "Operator"


def test_only_the_lab_host_kinds_have_a_default_credential(vmbusops_home: Path) -> None:
    with pytest.raises(CredentialStoreError, match="no guest credential given"):
        resolve_credential(None, Config(host="local"), None)
    lab = resolve_credential(None, Config(host="local"), "sim")
    assert lab.reference == "lab-admin"
    CredentialStore().set("lab-admin", "someone-else", Secret(PASSWORD))
    assert resolve_credential(None, Config(), None).username == "someone-else"  # the store comes first


def test_an_unknown_reference_says_where_it_looked(vmbusops_home: Path) -> None:
    with pytest.raises(CredentialStoreError, match="vmbusops cred set nope") as local:
        credential_resolver(Config(host="local"), None)("nope")
    assert "simulator" not in local.value.message
    with pytest.raises(CredentialStoreError, match="nor in the simulator's lab"):
        credential_resolver(Config(host="local"), "pwsh-lab")("nope")


def test_sealing_key_can_live_outside_the_home(tmp_path: Path, vmbusops_home: Path) -> None:
    keys = tmp_path / "etc-vmbusops"
    keys.mkdir()
    (vmbusops_home / "config.toml").write_text(f'[credentials]\nkey_file = "{keys / "credentials.key"}"\n')
    CredentialStore().set("tenant-a", "Administrator", Secret(PASSWORD))
    assert stat.S_IMODE((keys / "credentials.key").stat().st_mode) == 0o600
    assert sorted(p.name for p in vmbusops_home.iterdir()) == ["config.toml", "credentials.json"]
    assert CredentialStore().get("tenant-a").password.reveal() == PASSWORD
    # Whoever has only the home (a backup, a copied disk) has nothing that opens the store.
    (vmbusops_home / "config.toml").unlink()
    with pytest.raises(CredentialStoreError, match=r"credentials\.key is missing"):
        CredentialStore().get("tenant-a")


def test_sealing_key_from_systemds_credentials_directory(
    tmp_path: Path, vmbusops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "run-credentials"
    creds.mkdir()
    (creds / "vmbusops-credentials.key").write_bytes(bytes(range(32)))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    CredentialStore().set("tenant-a", "Administrator", Secret(PASSWORD))
    assert not (vmbusops_home / "credentials.key").exists()
    assert CredentialStore().get("tenant-a").password.reveal() == PASSWORD
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(CredentialStoreError, match="is missing"):
        CredentialStore().get("tenant-a")
    # A unit that passes no such credential falls back to the home; systemd's folder is never written.
    empty = tmp_path / "no-credential"
    empty.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(empty))
    CredentialStore().set("tenant-b", "Administrator", Secret(PASSWORD))
    assert list(empty.iterdir()) == [] and (vmbusops_home / "credentials.key").exists()


def test_key_file_setting_must_be_absolute(vmbusops_home: Path) -> None:
    from vmbusops.config import load_config
    from vmbusops.errors import ConfigError

    (vmbusops_home / "config.toml").write_text('[credentials]\nkey_file = "credentials.key"\n')
    with pytest.raises(ConfigError, match=r"\[credentials\] key_file must be an absolute path"):
        load_config()
