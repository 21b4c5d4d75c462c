"""Parse a script file into plain data plus a map from field path to `line:column`.

YAML is read with `yaml.safe_load` semantics, but through the composer, so every node keeps its
position; JSON is parsed by `json` (its numbers and escapes are exact) and located through the same
composer (JSON is nearly a YAML subset; tabs, legal JSON whitespace, are replaced by spaces first).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import yaml

FieldPath = tuple[str | int, ...]
Location = tuple[int, int]  # (line, column), both 1-based

MAX_VALUES = 500_000
"""Most values (mappings, lists, scalars) a script may hold once YAML aliases are expanded. A
script of 5,000 shots has about 150,000; an "alias bomb" (a few lines of nested ``*alias`` lists)
would expand to billions, and every reader of the data (validation, messages) walks the expansion."""

MAX_DEPTH = 32
"""Deepest nesting of mappings and lists (a script needs 6: arcs[0].shots[0].characters[0].id)."""

_MAX_NODES = MAX_VALUES  # stop locating after this many nodes


class ScriptTooLarge(yaml.MarkedYAMLError):
    """A document refused by :class:`BoundedSafeLoader` (not a syntax error); ``hint`` says what to do."""

    def __init__(self, problem: str, mark: yaml.Mark, hint: str, path: FieldPath = ()) -> None:
        super().__init__(problem=problem, problem_mark=mark)
        self.hint = hint
        self.path = path


class BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses, at the offending node, documents that are too big or deep.

    While composing it keeps the size every node has once aliases are expanded (a node's size is
    one plus its children's sizes; an alias adds the size of the node it names), and refuses an
    alias once the running total passes :data:`MAX_VALUES`, a recursive alias (one inside the node
    it names), nesting deeper than :data:`MAX_DEPTH`, and integers too long for Python to read.
    Each refusal is a ``yaml.MarkedYAMLError`` located at the alias or node.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._values = 0
        self._sizes: dict[int, int] = {}  # id(node) -> expanded size, once composed
        self._path: list[str | int | None] = []  # field path of the node being composed (None: a key)

    def _field_path(self) -> FieldPath:
        return tuple(part for part in self._path if part is not None)

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        event = self.peek_event()
        part = index.value if isinstance(index, yaml.ScalarNode) else index if isinstance(index, int) else None
        self._path.append(part)
        try:
            return self._compose_counted(parent, index, event)
        finally:
            self._path.pop()

    def _compose_counted(self, parent: yaml.Node | None, index: object, event: yaml.Event) -> yaml.Node:
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:
                    raise ScriptTooLarge(
                        f"the alias '*{event.anchor}' is used inside its own anchor (a recursive alias)",
                        event.start_mark,
                        f"a script is a tree of values; remove '*{event.anchor}' here",
                        self._field_path(),
                    )
                self._count(size, event.start_mark, f"the alias '*{event.anchor}'")
            return super().compose_node(parent, index)  # reports an undefined alias
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ScriptTooLarge(
                f"the script is nested more than {MAX_DEPTH} levels deep",
                event.start_mark,
                "a script needs 6 levels (arcs > shots > characters); check the brackets and indentation",
                self._field_path(),
            )
        before = self._values
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._count(1, event.start_mark, "this value")
        self._sizes[id(node)] = self._values - before
        return node

    def _count(self, size: int, mark: yaml.Mark, what: str) -> None:
        self._values += size
        if self._values > MAX_VALUES:
            raise ScriptTooLarge(
                f"{what} takes the script past {MAX_VALUES:,} values once YAML aliases are expanded",
                mark,
                "aliases nested in aliases multiply; write the values out, or alias a smaller part",
                self._field_path(),
            )

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # more digits than int() reads (sys.get_int_max_str_digits)
            raise ScriptTooLarge(
                f"the number {node.value[:20]}... has too many digits", node.start_mark, "write a smaller number"
            ) from None


BoundedSafeLoader.add_constructor("tag:yaml.org,2002:int", BoundedSafeLoader.construct_yaml_int)


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
    syntax_field: FieldPath = ()
    """Field path of the value a syntax error is about, where known (an alias bomb under `title`)."""


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
    if isinstance(error, ScriptTooLarge):
        mark = error.problem_mark
        return error.problem, (mark.line + 1, mark.column + 1), error.hint
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


class _NumberTooLong(ValueError):
    def __init__(self, digits: str) -> None:
        super().__init__(digits)
        self.digits = digits


def _json_int(digits: str) -> int:
    if len(digits) > 1000:  # int() refuses 4300 digits; no script number needs 20
        raise _NumberTooLong(digits)
    return int(digits)


def _location(text: str, position: int) -> Location:
    before = text[: max(position, 0)]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _json_too_deep(text: str) -> Location | None:
    """Where JSON text first nests deeper than MAX_DEPTH (json.loads would hit Python's recursion limit)."""
    depth = 0
    for token in _JSON_TOKEN.finditer(text):
        kind = token.group()[0]
        if kind in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return _location(text, token.start())
        elif kind in "]}":
            depth -= 1
    return None


def parse_document(text: str, *, is_json: bool = False) -> ParsedDocument:
    """Parse YAML (or JSON) text into data and a source map; syntax errors are returned, not raised."""
    source_map = SourceMap()
    if is_json:
        too_deep = _json_too_deep(text)
        if too_deep is not None:
            return ParsedDocument(
                None,
                source_map,
                (
                    f"the script is nested more than {MAX_DEPTH} levels deep",
                    too_deep,
                    "a script needs 6 levels (arcs > shots > characters); check the brackets",
                ),
            )
        try:
            data = json.loads(text, parse_int=_json_int)
        except json.JSONDecodeError as error:
            return ParsedDocument(
                None, source_map, (f"JSON syntax error: {error.msg}", (error.lineno, error.colno), None)
            )
        except _NumberTooLong as error:
            at = text.find(error.digits)
            return ParsedDocument(
                None,
                source_map,
                (f"the number {error.digits[:20]}... has too many digits", _location(text, at), "write a smaller number"),
            )
        try:  # Best effort: locations only. Tabs are whitespace in JSON but not in YAML.
            loader = BoundedSafeLoader(text.replace("\t", " "))
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
        loader = BoundedSafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return ParsedDocument(None, source_map)
            _record_duplicates(node, source_map)
            data = loader.construct_document(node)  # flattens merge keys (<<) in place
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        field_path = error.path if isinstance(error, ScriptTooLarge) else ()
        return ParsedDocument(None, SourceMap(), _yaml_syntax_error(error, text), field_path)
    _record_locations(node, source_map)
    return ParsedDocument(data, source_map)
