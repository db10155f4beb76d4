"""YAML text to plain data, keeping the node tree so errors can name the line of a key.

The loader is PyYAML's safe loader with YAML 1.2-style scalars for ints and booleans:
under YAML 1.1 ``extension: 0123`` silently becomes the octal int 83 and ``12:30`` becomes
750. Here an int is only a plain decimal without leading zeros (anything else stays a
string), and a boolean is only true/false.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from agentd.config.errors import ConfigError, ConfigIssue

_INT_TAG = "tag:yaml.org,2002:int"
_BOOL_TAG = "tag:yaml.org,2002:bool"
# Far more than any real config; bounds the work an alias bomb can cause.
MAX_EXPANDED_NODES = 100_000


class _ConfigLoader(yaml.SafeLoader):
    """Safe loader whose implicit int and bool resolution follows YAML 1.2."""


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT_TAG, _BOOL_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    _INT_TAG, re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789")
)
_ConfigLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """Parsed YAML: the plain data, its node tree (None for an empty file) and any issues
    the parser alone can see (duplicate keys)."""

    data: object
    root: Node | None
    issues: tuple[ConfigIssue, ...]


def parse_yaml(text: str, source: str) -> YamlDocument:
    """Parse one YAML document; a syntax error becomes a ConfigError naming file and line."""
    loader = _ConfigLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _check_expansion(root, source)
        data = None if root is None else loader.construct_document(root)
        issues = tuple(_duplicate_keys(root, source, (), set())) if root is not None else ()
    except RecursionError:
        raise ConfigError([ConfigIssue(source, None, "", "YAML nested too deeply")]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1
        what = exc.problem or exc.context or "malformed YAML"
        if exc.context and exc.problem and exc.context_mark is not None:
            what = f"{what} ({exc.context} on line {exc.context_mark.line + 1})"
        raise ConfigError([ConfigIssue(source, line, "", f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(source, None, "", f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()
    return YamlDocument(data=data, root=root, issues=issues)


def line_of(root: Node | None, loc: Sequence[str | int]) -> int | None:
    """1-based line of the deepest node along `loc` (mapping keys and list indices).

    A key that is present gives the line of the key itself; a missing key gives the line
    of its nearest present parent, which is where the operator has to add it.
    """
    if root is None:
        return None
    node: Node = root
    line: int | None = None
    for part in loc:
        if isinstance(node, MappingNode):
            # The last occurrence of a duplicated key is the one whose value was kept.
            matches = [
                (key_node, value_node)
                for key_node, value_node in node.value
                if isinstance(key_node, ScalarNode) and _key_matches(key_node, part)
            ]
            if not matches:
                return line
            key_node, node = matches[-1]
            line = key_node.start_mark.line + 1
        elif isinstance(node, SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def format_path(loc: Sequence[str | int]) -> str:
    """``("media", "codecs", 1)`` -> ``media.codecs[1]``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _key_matches(key_node: ScalarNode, part: str | int) -> bool:
    # Keys are compared as text: validation may turn a YAML int key (`5:`) into "5".
    return str(key_node.value) == str(part)


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [child for pair in node.value for child in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: Node, source: str) -> None:
    """Refuse alias cycles and alias bombs, which would hang or exhaust validation."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def expanded_size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            line = node.start_mark.line + 1
            raise ConfigError([ConfigIssue(source, line, "", "YAML alias refers to itself")])
        open_nodes.add(key)
        size = 1 + sum(expanded_size(child) for child in _children(node))
        open_nodes.discard(key)
        sizes[key] = size
        return size

    if expanded_size(root) > MAX_EXPANDED_NODES:
        raise ConfigError(
            [ConfigIssue(source, None, "", f"YAML expands to over {MAX_EXPANDED_NODES} values")]
        )


def _duplicate_keys(
    node: Node, source: str, path: tuple[str | int, ...], seen: set[int]
) -> list[ConfigIssue]:
    # A node shared through an alias is checked once, at its first path.
    if id(node) in seen:
        return []
    seen.add(id(node))
    issues: list[ConfigIssue] = []
    if isinstance(node, MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                continue
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in first_line:
                issues.append(
                    ConfigIssue(
                        source,
                        line,
                        format_path((*path, key)),
                        f"duplicate key (first given on line {first_line[key]})",
                    )
                )
            else:
                first_line[key] = line
            issues.extend(_duplicate_keys(value_node, source, (*path, key), seen))
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            issues.extend(_duplicate_keys(item, source, (*path, index), seen))
    return issues
