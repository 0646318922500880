"""A dsc step's documents, judged before anything of them reaches a guest.

The configuration MOF must parse (its resources are what the step reports on), and a
meta-configuration may let the LCM restart the guest by itself (``RebootNodeIfNeeded``) only in a
step that allows reboots. :func:`documents_problem` is the one judgement: ``bundle build`` refuses
such a source before anything is signed, acceptance (``run``, ``submit``, the agent) refuses such
a bundle before a job is made of it, so it is not used up, and the step itself judges the same
again before it copies anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vmbusops.bundle.manifest import DscMode, DscStep, Manifest
from vmbusops.dsc.mof import MofSyntaxError, parse_mof, resource_ids
from vmbusops.errors import ConfigError

META_CLASS = "MSFT_DSCMetaConfiguration"


@dataclass(frozen=True, slots=True)
class MetaSettings:
    """What the agent needs to know of a meta-configuration before applying it."""

    action_after_reboot: str = "ContinueConfiguration"
    reboot_node_if_needed: bool = False

    @classmethod
    def of(cls, text: str) -> MetaSettings:
        """Read a compiled meta-configuration MOF; raises MofSyntaxError or ConfigError."""
        doc = parse_mof(text)
        meta = next((i for i in doc.instances if i.class_name.casefold() == META_CLASS.casefold()), None)
        if meta is None:
            raise ConfigError(f"the meta-configuration has no instance of {META_CLASS}")
        return cls(
            action_after_reboot=meta.text("ActionAfterReboot", "ContinueConfiguration"),
            reboot_node_if_needed=meta.get("RebootNodeIfNeeded") is True,
        )


@dataclass(frozen=True, slots=True)
class DocumentsProblem:
    """Why a dsc step's documents cannot be applied, and what to do."""

    message: str
    hint: str


def documents_problem(step: DscStep, read: Callable[[str], str]) -> DocumentsProblem | None:
    """What is wrong with ``step``'s MOF and meta-configuration (``read`` gives a bundle path's
    text, and may raise OSError or UnicodeDecodeError), or None."""
    name = step.mofs[0]
    try:
        resource_ids(read(name))
    except (OSError, UnicodeDecodeError, MofSyntaxError) as exc:
        return DocumentsProblem(
            f"cannot read the MOF {name}: {exc}", "compile the configuration again (it makes localhost.mof) and rebuild"
        )
    if step.meta_config is None or step.mode is DscMode.TEST:
        return None
    try:
        meta = MetaSettings.of(read(step.meta_config))
    except (OSError, UnicodeDecodeError, MofSyntaxError, ConfigError) as exc:
        return DocumentsProblem(
            f"cannot read the meta-configuration {step.meta_config}: {exc}",
            "compile the meta-configuration again ([DscLocalConfigurationManager()]) and rebuild",
        )
    if meta.reboot_node_if_needed and not step.allow_reboot:
        return DocumentsProblem(
            "the meta-configuration lets the LCM restart the guest by itself (RebootNodeIfNeeded = $true)"
            " but the step does not allow reboots",
            "set allow_reboot = true (and max_reboots) on the step, or RebootNodeIfNeeded = $false",
        )
    return None


def manifest_documents_problem(manifest: Manifest, read: Callable[[str], str]) -> tuple[str, DocumentsProblem] | None:
    """The first dsc step of ``manifest`` whose documents are wrong (its name, and why), or None."""
    for step in manifest.steps:
        if isinstance(step, DscStep):
            problem = documents_problem(step, read)
            if problem is not None:
                return step.name, problem
    return None


__all__ = ["META_CLASS", "DocumentsProblem", "MetaSettings", "documents_problem", "manifest_documents_problem"]
