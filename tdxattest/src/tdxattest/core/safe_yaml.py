"""The one YAML loader for every YAML file the project reads (stack files, pin files under
firmware/, verification policies): PyYAML's safe loader, with the limits it lacks.

- **A key given twice in one mapping is an error.** Plain YAML keeps the last of two equal keys
  without a word: a second `hostKey` would silently replace the pinned one, a stale pin left below a
  new one would win.
- **Bounded input.** At most `max_bytes`, and at most `max_nodes` nodes *as expanded through its
  aliases*: a 3 KB "billion laughs" document of nested aliases is a few hundred nodes on disk and
  10^9 once walked, which took 70 s and 1.2 GB. The expanded size is counted on the composed node
  graph with one pass over its distinct nodes, so the check itself is linear in the input.
- Nesting deeper than the parser's recursion allows, and a self-referencing alias, are errors too.

Every refusal is a `YamlRefused` (a ValueError) with one line saying what was wrong.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_YAML_BYTES = 1 << 20  # the largest file here (a BIOS table) is ~30 KB
MAX_YAML_NODES = 100_000


class YamlRefused(yaml.YAMLError, ValueError):
    """The document is not one we read: duplicate key, too large, alias bomb, or not YAML at all.
    (A YAMLError too, so every caller's existing `except yaml.YAMLError` keeps naming the file.)"""


class _Loader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges another mapping (SafeLoader flattens it)
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, f"unhashable key {key!r}", key_node.start_mark
                ) from None
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """Nodes in the document as its aliases expand it, computed once per distinct node (post-order,
    iterative). Raises YamlRefused past `limit` or on a cycle."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            children = _children(node)
            total = 1 + sum(sizes[id(c)] for c in children)
            if total > limit:
                raise YamlRefused(f"expands to more than {limit} nodes through its aliases")
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise YamlRefused("an alias refers to the node that contains it")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _describe(exc: yaml.YAMLError) -> str:
    """`duplicate key 'hostKey' at line 6, column 9`: PyYAML's problem and where, without its
    source excerpt (the caller names the file)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{exc.problem}{where}"
    return " ".join(str(exc).split())


def load_yaml(data: str | bytes, *, max_bytes: int = MAX_YAML_BYTES, max_nodes: int = MAX_YAML_NODES) -> Any:
    """One YAML document, safely (module doc). Raises YamlRefused."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw) > max_bytes:
        raise YamlRefused(f"{len(raw)} bytes, more than the {max_bytes} a YAML file here may have")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlRefused(f"not UTF-8 text (byte {exc.start})") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, max_nodes)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise YamlRefused(_describe(exc)) from None
    except RecursionError:
        raise YamlRefused("nested deeper than the parser allows") from None
    finally:
        loader.dispose()
