"""Tags in a VM's Notes: read beside the provider's prose, never misread from it, whatever Notes hold."""

from __future__ import annotations

import pytest

from vmbusops.vm_tags import MAX_NOTES_CHARS, MAX_TAGS, is_tag_name, tags_in_notes


def test_a_tags_line_among_prose_gives_its_tags_lower_case() -> None:
    notes = "Customer: Contoso, ticket 4411.\r\n  TAGS: Web, prod ,eu-west.1\nDo not restart before 18:00."
    assert tags_in_notes(notes) == {"web", "prod", "eu-west.1"}


def test_several_tags_lines_add_up() -> None:
    assert tags_in_notes("tags: web\nsome text\n\ttags: prod, web") == {"web", "prod"}


@pytest.mark.parametrize(
    "notes",
    [
        "",
        "Tags: ask Bob before patching",  # prose: a name with spaces makes the line prose
        "tags: web, ask Bob",  # all or nothing: not half a line
        "tags:",
        "tags: web,",  # an empty name
        "my tags: web",  # not at the start of the line
        "tags = web",
        "tags: wéb",  # not ASCII
        "tags: \u0430pp",  # a Cyrillic a that looks like an ASCII one
        "tag\u017f: web",  # a long s, which a Unicode case fold would take for an s
        "tags: web\x00",
        "tags: -web",
        "tags: " + "a" * 65,
        "tags: web\u2028prod",  # only \n ends a line
    ],
)
def test_prose_and_hostile_lines_give_no_tags(notes: str) -> None:
    assert tags_in_notes(notes) == frozenset()


def test_control_characters_elsewhere_do_not_hide_a_tags_line() -> None:
    assert tags_in_notes("\x1b[31mred\x1b[0m\x00\x07\ntags: ok\n\x85\x0b\x0c") == {"ok"}


def test_huge_notes_are_read_only_up_to_the_limit() -> None:
    early = "tags: early\n" + "x" * (MAX_NOTES_CHARS * 20)
    assert tags_in_notes(early) == {"early"}
    late = "x" * MAX_NOTES_CHARS + "\ntags: late"
    assert tags_in_notes(late) == frozenset()


def test_at_most_max_tags_are_kept() -> None:
    notes = "tags: " + ", ".join(f"t{i}" for i in range(MAX_TAGS * 4))
    assert len(tags_in_notes(notes)) == MAX_TAGS


def test_tag_names() -> None:
    assert is_tag_name("prod") and is_tag_name("eu-west.1_a") and is_tag_name("9")
    assert not any(is_tag_name(t) for t in ("", "web*", "a b", "ä", ".x", "a" * 65))
