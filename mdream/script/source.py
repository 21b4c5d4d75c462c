"""Parse a script file into plain data plus a map from field path to `line:column`.

YAML is read with `yaml.safe_load` semantics, but through the composer, so every node keeps its
position; JSON is parsed by `json` (its numbers and escapes are exact) and located through the same
composer (JSON is nearly a YAML subset; tabs, legal JSON whitespace, are replaced by spaces first).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import yaml

FieldPath = tuple[str | int, ...]
Location = tuple[int, int]  # (line, column), both 1-based

_MAX_NODES = 200_000  # stop locating after this many nodes (alias bombs); parsing still proceeds


@dataclass
class SourceMap:
    """Where each value (and each mapping key) of a parsed document starts, by field path."""

    values: dict[FieldPath, Location] = field(default_factory=dict)
    keys: dict[FieldPath, Location] = field(default_factory=dict)
    duplicate_keys: list[tuple[FieldPath, Location, Location]] = field(default_factory=list)
    """(path, location of the repeated key, location of its first occurrence)."""

    def locate(self, path: FieldPath, *, key: bool = False) -> Location | None:
        """Location of `path` (of its key if `key`), else of the nearest enclosing node."""
        if key and path in self.keys:
            return self.keys[path]
        for end in range(len(path), -1, -1):
            found = self.values.get(tuple(path[:end]))
            if found is not None:
                return found
        return None


@dataclass
class ParsedDocument:
    """The data of a script file, where its parts are, and the syntax error that stopped it, if any."""

    data: object
    source_map: SourceMap
    syntax_error: tuple[str, Location | None, str | None] | None = None
    """(message, location, hint) of a syntax error; `data` is None then."""


def _mark(node: yaml.Node) -> Location:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _record_duplicates(root: yaml.Node, source_map: SourceMap) -> None:
    """Find repeated keys before construction (which silently keeps the last value)."""
    stack: list[tuple[yaml.Node, FieldPath]] = [(root, ())]
    seen_nodes: set[int] = set()
    while stack and len(seen_nodes) < _MAX_NODES:
        node, path = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_at: dict[str, Location] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                if key_node.value in first_at:
                    source_map.duplicate_keys.append(
                        (path + (key_node.value,), _mark(key_node), first_at[key_node.value])
                    )
                else:
                    first_at[key_node.value] = _mark(key_node)
                stack.append((value_node, path + (key_node.value,)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, path + (index,)) for index, item in enumerate(node.value))


def _record_locations(root: yaml.Node, source_map: SourceMap) -> None:
    """Walk the (merge-flattened) node tree; later keys overwrite earlier ones, as in the data."""
    stack: list[tuple[yaml.Node, FieldPath, frozenset[int]]] = [(root, (), frozenset())]
    visited = 0
    while stack and visited < _MAX_NODES:
        node, path, ancestors = stack.pop()
        visited += 1
        source_map.values[path] = _mark(node)
        if id(node) in ancestors:  # a recursive alias: stop descending
            continue
        inner = ancestors | {id(node)}
        if isinstance(node, yaml.MappingNode):
            # Push in reverse so that later keys are visited (and win) last.
            for key_node, value_node in reversed(node.value):
                if isinstance(key_node, yaml.ScalarNode):
                    child = path + (key_node.value,)
                    stack.append((value_node, child, inner))
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    source_map.keys[path + (key_node.value,)] = _mark(key_node)
        elif isinstance(node, yaml.SequenceNode):
            for index in reversed(range(len(node.value))):
                stack.append((node.value[index], path + (index,), inner))


def _yaml_syntax_error(error: yaml.YAMLError, text: str) -> tuple[str, Location | None, str | None]:
    location: Location | None = None
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        if mark is not None:
            location = (mark.line + 1, mark.column + 1)
        problem = error.problem or "invalid YAML"
        if error.context and problem.startswith(
            "but "
        ):  # e.g. "expected a single document ..., but found ..."
            message = f"YAML syntax error: {error.context}, {problem}"
        else:
            message = f"YAML syntax error: {problem}"
            if error.context:
                message += f" ({error.context})"
    elif isinstance(error, yaml.reader.ReaderError):
        character = chr(error.character) if isinstance(error.character, int) else error.character
        message = f"YAML syntax error: {error.reason} (character {character!r})"
        before = text[: error.position]
        location = (before.count("\n") + 1, error.position - (before.rfind("\n") + 1) + 1)
    else:
        message = f"YAML syntax error: {error}"
    hint = None
    lowered = message.lower()
    if "'\\t'" in message or "tab" in lowered:
        hint = "YAML indentation must use spaces, not tabs"
    elif "mapping values are not allowed" in lowered:
        hint = "a text value that contains ': ' must be quoted, e.g. descriptor: \"Wide shot: the pier\""
    elif "expected a single document" in lowered:
        hint = "a script is one YAML document; remove the extra '---'"
    elif "could not determine a constructor" in lowered:
        hint = "scripts are plain data; remove the '!' tag"
    elif "found undefined alias" in lowered:
        hint = "define the anchor ('&name') before using '*name'"
    return message, location, hint


def parse_document(text: str, *, is_json: bool = False) -> ParsedDocument:
    """Parse YAML (or JSON) text into data and a source map; syntax errors are returned, not raised."""
    source_map = SourceMap()
    if is_json:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            return ParsedDocument(
                None, source_map, (f"JSON syntax error: {error.msg}", (error.lineno, error.colno), None)
            )
        try:  # Best effort: locations only. Tabs are whitespace in JSON but not in YAML.
            loader = yaml.SafeLoader(text.replace("\t", " "))
            try:
                node = loader.get_single_node()
            finally:
                loader.dispose()
            if node is not None:
                _record_duplicates(node, source_map)
                _record_locations(node, source_map)
        except yaml.YAMLError:
            pass
        return ParsedDocument(data, source_map)

    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return ParsedDocument(None, source_map)
            _record_duplicates(node, source_map)
            data = loader.construct_document(node)  # flattens merge keys (<<) in place
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        return ParsedDocument(None, SourceMap(), _yaml_syntax_error(error, text))
    _record_locations(node, source_map)
    return ParsedDocument(data, source_map)
