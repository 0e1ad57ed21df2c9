"""The one YAML reader for everything a user types: ``-p NAME VALUE``, profiles and sweep files.

PyYAML implements YAML 1.1, where ``1e-3``, ``5E-4`` and ``1_000.`` are *strings* (its float pattern
needs a dot and a signed exponent); a user who writes ``lambda_W: 1e-3`` means a number. This loader
is ``yaml.SafeLoader`` with YAML 1.2's float pattern (``1e-3``, ``5E-4``, ``.5``, ``1.``, ``-2.5e+3``,
``.inf``, ``.nan``) and with duplicate mapping keys refused (YAML says keys are unique; PyYAML silently
keeps the last one, so a repeated ``grid:`` would drop a whole grid; the keys of a merge ``<<: *anchor``
may still be overridden). Everything else keeps YAML's
semantics: ``true``/``false``, ``null``, lists, quoted strings stay strings.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DuplicateKeyError", "Loader", "load", "load_file"]

_FLOAT = re.compile(r"""^(?:
    [-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?   # 1.5, .5, 1., 1.5e-3
  | [-+]?[0-9][0-9_]*[eE][-+]?[0-9]+                      # 1e-3, 5E4
  | [-+]?\.(?:inf|Inf|INF)
  | \.(?:nan|NaN|NAN)
)$""", re.X)


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping holds the same key twice."""


class Loader(yaml.SafeLoader):
    """``SafeLoader`` with YAML 1.2 floats and unique keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise DuplicateKeyError(
                    "while reading a mapping", node.start_mark,
                    f"found the key {key!r} twice (first at line {seen[key].line + 1}); keys must be unique",
                    key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


# replace the YAML 1.1 float resolver by the YAML 1.2 one (the resolver table is per class: copy it first)
Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load(text: str) -> Any:
    """Parse ``text`` (a document or a ``-p`` value) with :class:`Loader`."""
    return yaml.load(text, Loader=Loader)


def load_file(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML file; a syntax error, a duplicate key or a Python tag is a ``ValueError`` naming the file."""
    try:
        return load(Path(path).read_text())
    except yaml.YAMLError as err:
        text = " ".join(str(err).split())
        raise ValueError(f"{path} is not valid YAML for ncutils: {text}") from None
