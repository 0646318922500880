"""PowerShell data files (.psd1, .pssc, .psrc) to Python values, through the PowerShell grammar.

tree-sitter's PowerShell grammar parses the file; this walks the tree and accepts only what a
data file may hold - hashtables, arrays, strings without expansion, numbers, $true/$false/$null
- and rejects anything else (a subexpression, a variable, a command) instead of guessing.

A role capability's ``FunctionDefinitions`` hold script blocks: with ``script_blocks=True`` each
becomes a :class:`ScriptBlock`, its text and its ``param()`` block's parameters (name -> attribute
name -> argument), so a test can check what a function accepts without running it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import tree_sitter
import tree_sitter_powershell

_LANGUAGE = tree_sitter.Language(tree_sitter_powershell.language())
# Grammar levels an expression passes through when it is just one operand.
_WRAPPERS = frozenset(
    {
        "program", "statement_list", "pipeline", "pipeline_chain", "logical_expression", "bitwise_expression",
        "comparison_expression", "additive_expression", "multiplicative_expression", "format_expression",
        "range_expression", "unary_expression", "expression_with_unary_operator",
    }
)
_SKIP = frozenset({"comment", ";", "\n"})


class DataFileError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ScriptBlock:
    text: str
    parameters: dict[str, dict[str, str]] = field(default_factory=dict)


def _script_block(node: tree_sitter.Node) -> ScriptBlock:
    parameters: dict[str, dict[str, str]] = {}
    stack = [node]
    while stack:
        current = stack.pop()
        if current.type == "script_parameter":
            attributes: dict[str, str] = {}
            name = ""
            children = [c for n in _named(current) for c in (_named(n) if n.type == "attribute_list" else [n])]
            for child in children:
                if child.type == "attribute":
                    parts = {c.type: _text(c) for c in _named(child)}
                    key = parts.get("attribute_name") or parts.get("type_literal") or _text(child).strip("[]")
                    argument = parts.get("attribute_arguments", "")
                    if argument.startswith("'") and argument.endswith("'"):
                        argument = argument[1:-1].replace("''", "'")
                    attributes[key] = argument
                elif child.type == "variable":
                    name = _text(child).lstrip("$")
            parameters[name] = attributes
            continue
        stack.extend(current.children)
    return ScriptBlock(_text(node), parameters)


def _named(node: tree_sitter.Node) -> list[tree_sitter.Node]:
    return [c for c in node.children if c.is_named and c.type not in _SKIP]


def _text(node: tree_sitter.Node) -> str:
    assert node.text is not None
    return node.text.decode("utf-8")


def _value(node: tree_sitter.Node, script_blocks: bool = False) -> Any:
    kind = node.type
    if kind == "script_block_expression" and script_blocks:
        return _script_block(node)
    if kind in _WRAPPERS:
        children = _named(node)
        if len(children) != 1:
            raise DataFileError(f"line {node.start_point[0] + 1}: not a plain value: {_text(node)[:60]!r}")
        return _value(children[0], script_blocks)
    if kind == "array_literal_expression":
        items = _named(node)
        if len(items) == 1:
            return _value(items[0], script_blocks)
        return [_value(item, script_blocks) for item in items]
    if kind == "array_expression":
        body = _named(node)
        if not body:
            return []
        value = _value(body[0], script_blocks)
        return value if isinstance(value, list) else [value]
    if kind == "hash_literal_expression":
        result: dict[str, Any] = {}
        for body in _named(node):
            for entry in _named(body):
                if entry.type != "hash_entry":
                    raise DataFileError(f"line {entry.start_point[0] + 1}: not a key = value entry")
                key_node, value_node = _named(entry)
                key = _text(key_node).strip("'\"")
                if key.casefold() in (k.casefold() for k in result):
                    raise DataFileError(f"duplicate key {key!r}")
                result[key] = _value(value_node, script_blocks)
        return result
    if kind == "string_literal":
        text = _text(node)
        if text.startswith("'") and text.endswith("'"):
            return text[1:-1].replace("''", "'")
        if text.startswith('"') and text.endswith('"') and "$" not in text and "`" not in text:
            return text[1:-1]
        raise DataFileError(f"line {node.start_point[0] + 1}: an expandable string is not data: {text[:60]!r}")
    if kind in ("integer_literal", "decimal_integer_literal"):
        return int(_text(node))
    if kind == "variable":
        name = _text(node).casefold()
        if name in ("$true", "$false", "$null"):
            return {"$true": True, "$false": False, "$null": None}[name]
    raise DataFileError(f"line {node.start_point[0] + 1}: {kind} is not allowed in a data file: {_text(node)[:60]!r}")


def load_data_file(source: bytes, *, script_blocks: bool = False) -> Any:
    tree = tree_sitter.Parser(_LANGUAGE).parse(source)
    if tree.root_node.has_error:
        raise DataFileError("the PowerShell grammar does not parse this file")
    return _value(tree.root_node, script_blocks)
