"""Class remapping: train ok/defect on a folder with one class per defect type, or merge rare classes.

Rules map a class name or a glob pattern (``*``, ``?``, ``[...]``) to a new name. Exact names win over
globs; among globs the first that matches wins; classes no rule matches keep their name. So
``"*=defect,ok=ok"`` turns every defect type into ``defect`` and keeps ``ok``.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

from andon.errors import ConfigError

_GLOB_CHARS = re.compile(r"[*?\[\]]")
_BAD_NAME_CHARS = re.compile(r"[,=/\\\x00-\x1f]")


def is_glob(rule: str) -> bool:
    return bool(_GLOB_CHARS.search(rule))


def parse_remap(text: str) -> dict[str, str]:
    """Parse ``"crack=defect,blowhole=defect"`` (or ``"*=defect,ok=ok"``) into an ordered mapping."""
    mapping: dict[str, str] = {}
    if not text or not text.strip():
        raise ConfigError("empty remap; write rules like 'crack=defect,blowhole=defect' or '*=defect,ok=ok'")
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        source, sep, target = (x.strip() for x in part.partition("="))
        if not sep or not source or not target:
            raise ConfigError(f"remap rule {part!r} is not 'source=target'; e.g. 'crack=defect' or '*=defect'")
        if source in mapping and mapping[source] != target:
            raise ConfigError(f"remap rule {source!r} appears twice with targets {mapping[source]!r} and {target!r}")
        mapping[source] = target
    return validate_remap(mapping)


def validate_remap(mapping: dict[str, str]) -> dict[str, str]:
    """Check a mapping from a recipe or the CLI: targets are plain class names, sources are names or globs."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"remap must be a mapping of class (or glob) to class, got {type(mapping).__name__}")
    for source, target in mapping.items():
        if not isinstance(source, str) or not isinstance(target, str) or not source or not target:
            raise ConfigError(f"remap rule {source!r}: {target!r} must map a non-empty name to a non-empty name")
        if is_glob(target) or _BAD_NAME_CHARS.search(target) or target.startswith((".", "_")):
            raise ConfigError(
                f"remap target {target!r} is not a valid class name: no glob characters, commas, '=', slashes, "
                "and no leading '.' or '_'"
            )
    return dict(mapping)


def remap_labels(labels: list[str], mapping: dict[str, str], *, strict: bool = False) -> dict[str, str]:
    """The new name of every label. ``strict`` refuses rules that match none of ``labels``."""
    mapping = validate_remap(mapping)
    exact = {k: v for k, v in mapping.items() if not is_glob(k)}
    globs = [(k, v) for k, v in mapping.items() if is_glob(k)]
    table = {}
    for label in labels:
        if label in exact:
            table[label] = exact[label]
        else:
            table[label] = next((v for k, v in globs if fnmatchcase(label, k)), label)
    if strict:
        unused = [k for k in mapping if not any(x == k or (is_glob(k) and fnmatchcase(x, k)) for x in labels)]
        if unused:
            raise ConfigError(
                f"remap rule{'s' if len(unused) > 1 else ''} {', '.join(map(repr, unused))} match no class; "
                f"classes are: {', '.join(labels) or '(none)'}"
            )
    return table
