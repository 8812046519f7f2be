"""Reading the YAML files a user writes (sweeps, claims, the ablation): strict, bounded, one-line errors.

PyYAML's ``safe_load`` silently keeps the last of two equal keys, expands alias chains without
limit (a ten-level "billion laughs" chain of ten aliases each is 10^10 nodes once anything walks
it), and reports errors over several lines. ``read_yaml`` refuses all three with one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from suite.core.errors import UserError

MAX_NODES = 200_000  # scalars, lists and mappings after expanding every alias; a real sweep has a few hundred
_MERGE = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (merge keys ``<<`` may still be overridden)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: SafeConstructor reports it
                    continue
                if repeated:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice in one mapping", key_node.start_mark
                    )
        return super().construct_mapping(node, deep=deep)


def expanded_size(node: yaml.Node, memo: dict[int, int | None] | None = None) -> int:
    """How many nodes ``node`` holds once every alias is expanded (each shared node counted per use)."""
    memo = {} if memo is None else memo
    if id(node) in memo:
        if memo[id(node)] is None:  # still being counted: the node contains itself
            raise UserError(f"an alias at line {node.start_mark.line + 1} refers to a node that contains it")
        return memo[id(node)]
    memo[id(node)] = None
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(expanded_size(key, memo) + expanded_size(value, memo) for key, value in node.value)
    else:
        size = 1
    memo[id(node)] = size
    return size


def parse_yaml(text: str, source: str, what: str = "YAML file") -> Any:
    """``text`` parsed strictly; every problem is a one-line UserError naming ``source``."""
    loader = None
    try:
        loader = _StrictLoader(text)  # checks every character first
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            size = expanded_size(node)
        except UserError as error:
            raise UserError(f"{source}: {error}") from None
        if size > MAX_NODES:
            raise UserError(
                f"{source}: its aliases expand to {size:,} values (at most {MAX_NODES:,}); write the values out"
            )
        return loader.construct_document(node)
    except RecursionError:
        raise UserError(f"{source}: YAML nested too deeply to be a {what}") from None
    except yaml.reader.ReaderError as error:
        character = f"U+{error.character:04X}" if isinstance(error.character, int) else repr(error.character)
        raise UserError(
            f"{source}: character {character} at position {error.position} is not allowed in YAML"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = str(getattr(error, "problem", None) or error).splitlines()[0]
        raise UserError(f"{source}: malformed YAML{where}: {problem}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: Path, what: str = "YAML file") -> Any:
    """The YAML file at ``path`` (UTF-8, a byte-order mark allowed), parsed by ``parse_yaml``."""
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte {error.start}); save the {what} as UTF-8") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read the {what}: {error.strerror or error}") from None
    return parse_yaml(text, str(path), what)
