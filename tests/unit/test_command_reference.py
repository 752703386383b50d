"""docs/protocol.md documents every command of the dispatch table, as generated from it."""

from __future__ import annotations

from pathlib import Path

from supervise.supervisor.daemon.commands import COMMANDS, reference_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_the_protocol_doc_carries_the_generated_command_reference() -> None:
    assert reference_markdown() in DOC.read_text(), (
        "docs/protocol.md is out of date: regenerate its ## Commands section with "
        "python -m supervise.supervisor.daemon.commands"
    )


def test_every_command_is_documented_and_every_argument_has_a_type() -> None:
    for name, command in COMMANDS.items():
        assert command.doc, name
        assert f"### `{name}`" in reference_markdown()
