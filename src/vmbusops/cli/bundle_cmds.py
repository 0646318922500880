"""``vmbusops keys``, ``vmbusops bundle`` and ``vmbusops trust``: author, sign, trust, verify."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from vmbusops.bundle.build import build_bundle, sign_bundle
from vmbusops.bundle.crypto import PrivateKey
from vmbusops.bundle.dsse import verified_signers
from vmbusops.bundle.errors import BadSignatureError, BundleSourceError, KeyFileError, TrustPolicyError
from vmbusops.bundle.keys import load_public_key, read_private_key_file, write_keypair
from vmbusops.bundle.manifest import Manifest, Step, StepKind, format_time
from vmbusops.bundle.paths import keys_dir, trust_policy_path
from vmbusops.bundle.policy import Scope, TrustedKey, TrustPolicy, load_trust_policy, save_trust_policy
from vmbusops.bundle.scaffold import EXAMPLE_FILES, write_example
from vmbusops.bundle.verify import read_unverified, verify_bundle
from vmbusops.cli.exitcodes import exit_code_for
from vmbusops.errors import BundleError, ConfigError

PASSPHRASE_ENV = "VMBUSOPS_KEY_PASSPHRASE"  # noqa: S105 (the variable name, not a secret)

_trust_option = click.option(
    "--trust",
    "trust_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Trust policy file (default: $VMBUSOPS_HOME/trust.toml).",
)


def _read_passphrase(*, confirm: bool) -> bytes:
    """From $VMBUSOPS_KEY_PASSPHRASE, else one line of piped stdin, else a prompt without echo."""
    value = os.environ.get(PASSPHRASE_ENV)
    if value is None and not sys.stdin.isatty():
        value = sys.stdin.readline().rstrip("\r\n")
    if value is None:
        value = click.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm, err=True)
    if not value:
        raise KeyFileError("the passphrase is empty")
    return value.encode("utf-8")


def _load_signing_key(spec: str) -> PrivateKey:
    path = Path(spec)
    if not path.exists() and os.sep not in spec and "/" not in spec:
        path = keys_dir() / (spec if spec.endswith(".key") else f"{spec}.key")
    data = read_private_key_file(path)
    passphrase = _read_passphrase(confirm=False) if PrivateKey.is_encrypted_pem(data) else None
    return PrivateKey.from_pem(data, passphrase=passphrase, source=str(path))


def _policy(trust_path: Path | None) -> TrustPolicy:
    return load_trust_policy(trust_path or trust_policy_path())


def _parse_until(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--until {text!r} is not an ISO 8601 date-time (e.g. 2027-01-01T00:00:00Z)"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _describe_step(step: Step) -> str:
    what = step.describe()
    extras = []
    if step.timeout_seconds is not None:
        extras.append(f"timeout {step.timeout_seconds:g}s")
    if step.retry.attempts > 1:
        extras.append(f"{step.retry.attempts} attempts, backoff {step.retry.backoff_seconds:g}s")
    if step.idempotent:
        extras.append("idempotent")
    if step.guard is not None:
        extras.append(f"guarded by a {step.guard.value}")
    return f"{step.name} [{step.kind.value}]: {what}" + (f" ({', '.join(extras)})" if extras else "")


def describe_targets(m: Manifest) -> str:
    """The targets in one line: VM names and globs, then the groups and tags that narrow them."""
    text = ", ".join(m.targets.vms) or "every VM of the host"
    if m.targets.groups:
        text += f"  (only groups: {', '.join(m.targets.groups)})"
    if m.targets.tags:
        text += f"  (only tags: {', '.join(m.targets.tags)})"
    return text


def _print_manifest(m: Manifest) -> None:
    click.echo(f"bundle      {m.name} v{m.version}  id {m.id}")
    click.echo(f"issued      {format_time(m.issued)}   expires {format_time(m.expires)}")
    click.echo(f"targets     {describe_targets(m)}")
    click.echo(f"credential  {m.credential}")
    e = m.execution
    click.echo(
        f"execution   concurrency {e.max_concurrency.to_json()}, max errors {e.max_errors.to_json()},"
        f" per-target timeout {e.target_timeout_seconds:g}s,"
        f" delivery timeout {e.delivery_timeout_seconds:g}s,"
        f" resume {e.resume.value}"
    )
    if m.schedule is not None:
        s = m.schedule
        click.echo(
            f"schedule    cron '{s.cron}' ({s.timezone}), window {s.window_seconds:g}s,"
            f" cut-off {s.cutoff_seconds:g}s,"
            f" jitter {s.jitter_seconds:g}s, missed runs: {s.missed.value}"
        )
    if m.guard is not None:
        g = m.guard
        spans = ", ".join(f"{m.steps[s.first].name}..{m.steps[s.last].name}" for s in m.guarded_spans())
        click.echo(
            f"guard       {g.checkpoint.value} checkpoint, {g.min_free_gb:g} GiB free first,"
            f" health: {g.health.describe()}; spans: {spans}"
        )
    click.echo("steps")
    for i, step in enumerate(m.steps, 1):
        click.echo(f"  {i}. {_describe_step(step)}")
    click.echo(f"files       {len(m.files)} ({m.total_size} bytes)")
    for f in m.files:
        click.echo(f"  {f.sha256[:16]}  {f.size:>10}  {f.path}")


# --- keys -----------------------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """Ed25519 signing keys for job bundles."""


@keys.command("new")
@click.argument("name")
@click.option(
    "--passphrase/--no-passphrase",
    default=False,
    help=f"Encrypt the private key; the passphrase comes from ${PASSPHRASE_ENV}, piped stdin, or a prompt.",
)
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for NAME.key and NAME.pub (default: $VMBUSOPS_HOME/keys).",
)
def keys_new(name: str, passphrase: bool, output_dir: Path | None) -> None:
    """Create a key pair: NAME.key (private, owner-only) and NAME.pub (give this to host owners)."""
    secret = _read_passphrase(confirm=True) if passphrase else None
    private, public, key = write_keypair(output_dir or keys_dir(), name, passphrase=secret)
    click.echo(
        f"private key  {private}"
        + ("  (encrypted)" if secret else "  (NOT encrypted; --passphrase encrypts)")
    )
    click.echo(f"public key   {public}")
    click.echo(f"key id       {key.keyid}")


@keys.command("list")
@click.option(
    "-d", "--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Where the key pairs are (default: $VMBUSOPS_HOME/keys).",
)  # fmt: skip
@_trust_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per key (kind signing or trusted).")
def keys_list(directory: Path | None, trust_path: Path | None, as_json: bool) -> None:
    """Signing keys under $VMBUSOPS_HOME/keys and the keys this host's trust policy trusts, with key ids."""
    from vmbusops.cli.bundle_json import signing_keys, trusted_keys

    policy = _policy(trust_path)
    where = directory or keys_dir()
    mine, trusted = signing_keys(where, policy), trusted_keys(policy)
    if as_json:
        for item in [*mine, *trusted]:
            click.echo(json.dumps(item))
        return
    click.echo(f"signing keys ({where})")
    if not mine:
        click.echo("  (none; make one with: vmbusops keys new NAME)")
    for k in mine:
        what = "private+public" if k["private"] and k["public"] else "private only" if k["private"] else "public only"
        notes = [what + (", encrypted" if k["encrypted"] else "")]
        if k["trusted_as"]:
            notes.append(f"trusted here as {k['trusted_as']}")
        if k["problem"]:
            notes.append(f"unreadable: {k['problem']}")
        click.echo(f"  {k['keyid'] or '(key id needs the passphrase or NAME.pub)':<64}  {k['name']}  ({'; '.join(notes)})")
    click.echo(f"trusted keys ({trust_path or trust_policy_path()})")
    if not trusted:
        click.echo("  (none; trust a key with: vmbusops trust add NAME.pub)")
    for t in trusted:
        scopes = ", ".join(str(i) for i in t["scopes"]) or "none"
        click.echo(f"  {t['keyid']}  {t['name']}  (scopes {scopes}: vmbusops trust list)")


# --- bundle ---------------------------------------------------------------------------------------


@click.group()
def bundle() -> None:
    """Author, sign, inspect and verify signed job bundles (.vmb)."""


@bundle.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Write the example's files over those of a folder that is not empty.")
def bundle_init(directory: Path, force: bool) -> None:
    """Write an example bundle source: copy a file, run a script, apply a DSC configuration.

    A folder that already holds the example, unchanged, is left as it is (so the quick start can
    run again where it ran); any other folder that is not empty is refused unless --force.
    """
    nonempty = directory.is_dir() and any(directory.iterdir())
    if nonempty and _holds_example(directory):
        click.echo(f"{directory} already holds the example bundle source, unchanged; nothing written")
    elif nonempty and not force:
        raise BundleSourceError(
            f"{directory} is not empty and does not hold the example unchanged",
            hint=f"give a new folder, or write the example's files over it with: vmbusops bundle init --force {directory}",
        )
    else:
        written = write_example(directory) if not nonempty else _overwrite_example(directory)
        for path in written:
            click.echo(f"wrote {path}")
    click.echo(f"next: vmbusops bundle build {directory} -o lab-demo.vmb")


def _holds_example(directory: Path) -> bool:
    try:
        return all(
            directory.joinpath(*rel.split("/")).read_bytes() == text.encode("utf-8") for rel, text in EXAMPLE_FILES.items()
        )
    except OSError:
        return False


def _overwrite_example(directory: Path) -> list[Path]:
    """``bundle init --force``: the example's files, written over what is there (nothing else is touched)."""
    written = []
    for rel, text in EXAMPLE_FILES.items():
        path = directory.joinpath(*rel.split("/"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode("utf-8"))
        except OSError as exc:
            raise BundleSourceError(f"cannot write {path}: {exc.strerror}") from None
        written.append(path)
    return written


@bundle.command("build")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def bundle_build(directory: Path, output: Path) -> None:
    """Build an unsigned bundle from DIRECTORY/bundle.toml and the files it names."""
    m = build_bundle(directory, output)
    click.echo(
        f"built {output}: {m.name} v{m.version}, {len(m.steps)} steps, {len(m.files)} files, id {m.id}"
    )
    click.echo(f"next: vmbusops bundle sign {output} --key KEY")


@bundle.command("sign")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--key", "key_spec", required=True, help="Private key file, or a key name under $VMBUSOPS_HOME/keys."
)
def bundle_sign(file: Path, key_spec: str) -> None:
    """Check every file in the bundle, then add a signature (run once per signer)."""
    key = _load_signing_key(key_spec)
    envelope = sign_bundle(file, key)
    click.echo(f"signed {file} with key {key.keyid[:16]} ({len(envelope.signatures)} signature(s) now)")


@bundle.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_trust_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object: the manifest and its signatures.")
def bundle_inspect(file: Path, trust_path: Path | None, as_json: bool) -> None:
    """Show what a bundle will do, where, and who signed it (without verifying its files)."""
    envelope, manifest = read_unverified(file)
    try:
        policy = _policy(trust_path)
    except TrustPolicyError:
        policy = TrustPolicy()
    signatures: list[dict[str, Any]] = []
    for sig in envelope.signatures:
        known = policy.keys.get(sig.keyid)
        valid: bool | None = None
        if known is not None:
            try:
                valid = bool(verified_signers(envelope, {sig.keyid: known.public}))
            except BadSignatureError:
                valid = False
        signatures.append({"keyid": sig.keyid, "trusted_as": known.name if known else None, "valid": valid})
    if as_json:
        from vmbusops.cli.bundle_json import manifest_json

        click.echo(json.dumps({"file": str(file), **manifest_json(manifest), "signatures": signatures, "verified": False}))
        return
    _print_manifest(manifest)
    click.echo("signatures")
    if not signatures:
        click.echo("  (none)")
    for s in signatures:
        if s["trusted_as"] is None:
            state = "unknown key (not in the trust policy)"
        else:
            state = f"trusted key {s['trusted_as']}: " + ("signature valid" if s["valid"] else "SIGNATURE INVALID")
        click.echo(f"  {s['keyid'][:16]}  {state}")
    click.echo("(inspect does not check files, expiry or scopes; run `vmbusops bundle verify`)")


@bundle.command("verify")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@_trust_option
@click.option("--json", "as_json", is_flag=True, help='One JSON object: {"ok": true, ...} or {"ok": false, "reason", "error"} (exit 4).')
def bundle_verify(file: Path, trust_path: Path | None, as_json: bool) -> None:
    """Run every check a host runs before accepting the bundle; records nothing."""
    from vmbusops.engine.acceptance import reading_replay

    policy = _policy(trust_path)
    try:
        with reading_replay() as replay:
            verified = verify_bundle(file, policy=policy, replay=replay)
    except BundleError as exc:
        if not as_json:
            raise
        from vmbusops.cli.bundle_json import rejected_json

        click.echo(json.dumps(rejected_json(file, exc)))
        sys.exit(exit_code_for(exc))
    m = verified.manifest
    if as_json:
        from vmbusops.cli.bundle_json import manifest_json

        signers = [{"name": k.name, "keyid": k.keyid} for k in verified.signers]
        click.echo(json.dumps({"ok": True, "file": str(file), **manifest_json(m), "signers": signers}))
        return
    who = ", ".join(f"{k.name} ({k.keyid[:12]})" for k in verified.signers)
    click.echo(
        f"OK {file}: {m.name} v{m.version}, {len(m.steps)} steps on {describe_targets(m)}"
        f" as {m.credential}; {len(m.files)} files ({m.total_size} bytes) verified; signed by {who}"
    )


# --- trust ----------------------------------------------------------------------------------------


@click.group()
def trust() -> None:
    """The trust policy: which keys may sign bundles, and for what."""


@trust.command("add")
@click.argument("pubkey", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--name", default=None, help="A name for the key holder (default: the file's stem).")
@click.option(
    "--vm", "vms", multiple=True, metavar="GLOB", help="VM name or glob the key may target (repeatable; default '*')."
)
@click.option("--vms", "vms_alias", multiple=True, hidden=True)  # the option's earlier name, still accepted
@click.option(
    "--credential", multiple=True, help="Credential reference the key may use (repeatable; default any)."
)
@click.option("--steps", default=None, help="Comma-separated step kinds allowed (default: all).")
@click.option("--until", default=None, help="When this trust ends (ISO 8601, UTC if no zone).")
@click.option("--threshold", type=click.IntRange(1, 32), default=1, help="Signers needed from this scope.")
@click.option(
    "--checkpoints", is_flag=True, help="The key may guard steps with checkpoints (take, restore, remove them)."
)
@click.option(
    "--rename", is_flag=True, help="The key is trusted already: only give it the name --name (scopes unchanged)."
)
@_trust_option
def trust_add(
    pubkey: Path,
    name: str | None,
    vms: tuple[str, ...],
    vms_alias: tuple[str, ...],
    credential: tuple[str, ...],
    steps: str | None,
    until: str | None,
    threshold: int,
    checkpoints: bool,
    rename: bool,
    trust_path: Path | None,
) -> None:
    """Trust PUBKEY to sign bundles within a scope. Keys added with the same scope share it
    (so --threshold 2 on two keys means both must sign).

    A key trusted already is left as it is: the same name and scope again is a no-op (exit 0);
    anything else is refused (exit 2), but --rename gives it a new name. To change what a key
    may do, remove it and add it again."""
    vms = vms + vms_alias
    path = trust_path or trust_policy_path()
    try:
        policy = load_trust_policy(path)
    except TrustPolicyError:
        if path.exists():
            raise
        policy = TrustPolicy()
    try:
        kinds = frozenset(StepKind(s.strip()) for s in steps.split(",")) if steps else frozenset(StepKind)
    except ValueError:
        raise ConfigError(
            f"--steps {steps!r}: known step kinds are {', '.join(k.value for k in StepKind)}"
        ) from None
    public = load_public_key(pubkey)
    key = TrustedKey(name=name or pubkey.stem, public=public)
    scope = Scope(
        keys=(),
        vms=vms or ("*",),
        credentials=credential or ("*",),
        steps=kinds,
        until=_parse_until(until),
        threshold=threshold,
        checkpoints=checkpoints,
    )
    known = policy.keys.get(key.keyid)
    namesake = next((k for k in policy.keys.values() if k.name == key.name and k.keyid != key.keyid), None)
    if namesake is not None and (known is None or rename):
        # "signed by NAME" must say which key signed.
        raise TrustPolicyError(
            f"another key ({namesake.keyid[:16]}) is already trusted as {key.name}; nothing changed",
            hint="choose another name with --name",
        )
    if rename:
        _rename_key(policy, path, key, known, scoped=bool(vms or credential or steps or until or threshold != 1))
        return
    if known is not None:
        same_scope = policy.has_scope(key.keyid, scope)
        if known.name == key.name and same_scope:
            click.echo(f"{key.keyid[:16]} is already trusted as {known.name} with this scope; nothing changed")
            return
        differs = " with another scope" if known.name == key.name else ""
        raise TrustPolicyError(
            f"{pubkey} is already trusted as {known.name} ({key.keyid[:16]}){differs}; nothing changed",
            hint=f"to rename it: vmbusops trust add {pubkey} --name NEW --rename; to change what it may do:"
            f" vmbusops trust remove {key.keyid[:16]}, then add it again",
        )
    policy = policy.with_key(key, scope)
    save_trust_policy(policy, path)
    click.echo(f"trusted {key.name} ({key.keyid}) in {path}")


def _rename_key(policy: TrustPolicy, path: Path, key: TrustedKey, known: TrustedKey | None, *, scoped: bool) -> None:
    if known is None:
        raise TrustPolicyError(
            f"{key.keyid[:16]} is not trusted, so there is nothing to rename",
            hint="trust it with: vmbusops trust add PUBKEY (without --rename)",
        )
    if known.name == key.name:
        click.echo(f"{key.keyid[:16]} is already trusted as {key.name}; nothing changed")
        return
    if scoped:
        raise TrustPolicyError(
            "--rename changes only the name; it takes no scope options",
            hint=f"to change what the key may do: vmbusops trust remove {key.keyid[:16]}, then add it again",
        )
    save_trust_policy(policy.renamed(key.keyid, key.name), path)
    click.echo(f"renamed {known.name} ({key.keyid}) to {key.name} in {path}")


@trust.command("list")
@_trust_option
def trust_list(trust_path: Path | None) -> None:
    """Show trusted keys and their scopes."""
    policy = _policy(trust_path)
    click.echo("keys")
    for k in policy.keys.values():
        click.echo(f"  {k.keyid}  {k.name}")
    click.echo("scopes")
    for i, s in enumerate(policy.scopes, 1):
        names = ", ".join(policy.keys[k].name for k in s.keys)
        until = format_time(s.until) if s.until else "no end"
        click.echo(
            f"  {i}. keys {names}; threshold {s.threshold}; vms {', '.join(s.vms)};"
            f" credentials {', '.join(s.credentials)};"
            f" steps {', '.join(sorted(k.value for k in s.steps))}; {until}"
        )


@trust.command("remove")
@click.argument("keyid")
@_trust_option
def trust_remove(keyid: str, trust_path: Path | None) -> None:
    """Stop trusting a key: its name, its full key id, or 8 or more leading hex digits of it."""
    path = trust_path or trust_policy_path()
    policy = load_trust_policy(path)
    full = policy.resolve_keyid(keyid)
    name = policy.keys[full].name
    save_trust_policy(policy.without_key(full), path)
    click.echo(f"removed {name} ({full}) from {path}")
