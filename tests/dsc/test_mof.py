"""The MOF reader on compiled configurations, a meta-configuration and a resource schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmbusops.bundle.scaffold import EXAMPLE_FILES
from vmbusops.dsc.mof import MofRef, MofSyntaxError, parse_mof, resource_ids

HERE = Path(__file__).parent / "mofs"


def test_published_node_configuration() -> None:
    doc = parse_mof((HERE / "azurerm_nodeconfiguration.mof").read_text(encoding="utf-8"))
    (file,) = doc.resources
    assert file.class_name == "MSFT_FileDirectoryConfiguration"
    assert file.alias == "MSFT_FileDirectoryConfiguration1ref"
    assert file.resource_id == "[File]bla"
    assert file.text("DestinationPath") == "c:\\bogus.txt"
    config = doc.configuration
    assert config is not None
    assert config.get("CompatibleVersionAdditionalProperties") == ("Omi_BaseResource:ConfigurationName",)
    assert doc.target_node is None


def test_compiled_configuration_with_aliases_and_arrays() -> None:
    doc = parse_mof((HERE / "webserver_compiled.mof").read_text(encoding="utf-8"))
    assert doc.target_node == "localhost"
    assert [r.resource_id for r in doc.resources] == [
        "[WindowsFeature]IIS",
        "[File]Index",
        "[Service]W3SVC",
        "[Registry]Banner",
    ]
    index = doc.resources[1]
    assert index.text("Contents") == '<html><body>\n"hello" from DSC</body></html>'
    assert index.texts("DependsOn") == ("[WindowsFeature]IIS",)
    service = doc.resources[2]
    assert service.texts("DependsOn") == ("[WindowsFeature]IIS", "[File]Index")
    cred = doc.resolve(service.get("PsDscRunAsCredential"))
    assert cred is not None and cred.text("UserName") == "CONTOSO\\svc-web"
    assert service.get("psdscrunascredential") == MofRef("MSFT_Credential1ref")
    registry = doc.resources[3]
    assert registry.get("Force") is True
    assert registry.texts("ValueData") == ("managed",)
    assert doc.configuration is not None and doc.configuration.text("Name") == "WebServer"


def test_meta_configuration() -> None:
    doc = parse_mof((HERE / "metaconfig.meta.mof").read_text(encoding="utf-8"))
    (meta, _) = doc.instances
    assert meta.class_name == "MSFT_DSCMetaConfiguration"
    assert meta.get("RebootNodeIfNeeded") is False
    assert meta.get("ConfigurationModeFrequencyMins") == 15
    assert doc.resources == ()


def test_resource_schema_from_the_scaffold() -> None:
    text = EXAMPLE_FILES[
        "dsc/modules/VmbusOpsDemo/DSCResources/VmbusOpsDemo_File/VmbusOpsDemo_File.schema.mof"
    ]
    (klass,) = parse_mof(text).classes
    assert (klass.name, klass.superclass, klass.friendly_name) == ("VmbusOpsDemo_File", "OMI_BaseResource", "VmbusOpsDemoFile")
    assert klass.keys == ("Path",)
    ensure = klass.properties[2]
    assert ensure.has("ValueMap") and ensure.type == "String"
    assert resource_ids(EXAMPLE_FILES["dsc/localhost.mof"]) == ("[VmbusOpsDemoFile]Banner",)


def test_values_numbers_escapes_and_pragmas() -> None:
    doc = parse_mof(
        '#pragma namespace("root\\\\microsoft\\\\windows\\\\DesiredStateConfiguration")\n'
        "// a comment\n"
        "instance of X { ResourceID = \"[X]a\" \"b\"; N = -3; H = 0x1F; R = 2.5e1; E = {}; Z = NULL; C = 'q'; T = \"tab\\there\"; };"
    )
    (x,) = doc.instances
    assert x.resource_id == "[X]ab"
    assert (x.get("N"), x.get("H"), x.get("R"), x.get("E"), x.get("Z"), x.get("C")) == (-3, 31, 25.0, (), None, "q")
    assert x.text("T") == "tab\there"
    assert doc.pragmas == ('#pragma namespace("root\\\\microsoft\\\\windows\\\\DesiredStateConfiguration")',)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("instance of X {\n A = \"unterminated;\n};", 2),
        ("instance of X { A = 1 }", 1),
        ("instance X { };", 1),
        ("instance of X { A = 1; A = 2; };", 1),
        ("instance of X { A = bogus; };", 1),
        ("instance of X { A = \"\\q\"; };", 1),
        ("\n\nbanana", 3),
        ('instance of X { ResourceID = "[X]a"; };\ninstance of X { ResourceID = "[X]a"; };', 1),
    ],
)
def test_malformed_documents_say_where(text: str, line: int) -> None:
    with pytest.raises(MofSyntaxError) as info:
        parse_mof(text)
    assert info.value.line == line


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_parses_or_raises_mof_syntax_error(text: str) -> None:
    try:
        parse_mof(text)
    except MofSyntaxError:
        pass
