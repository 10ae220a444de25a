"""Class remapping: train ok/defect on a folder with one class per defect type, or merge rare classes.

Rules map a class name or a glob pattern (``*``, ``?``, ``[...]``) to a new name. Exact names win over
globs; among globs the first that matches wins; classes no rule matches keep their name. So
``"*=defect,ok=ok"`` turns every defect type into ``defect`` and keeps ``ok``.

For training, ``ClassPlan`` says what a remap means to the network: the model's classes are the remapped
names, but a class merged from several folder classes can still be *learned* as those source classes (one
head unit each) and have their probabilities added up in the model. Defect types look different; asking
one output to cover them all while "ok" gets another throws away what the folders say.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cached_property

from andon.errors import ConfigError, DatasetError
from andon.inspect.card import head_layout

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


@dataclass(frozen=True)
class ClassPlan:
    """Folder classes -> the model's classes, and the training classes of the network's head.

    ``table`` maps every folder class to its model class. With ``keep_sources`` a model class merged from
    two or more folder classes is trained as those classes (``trained_as``); otherwise on the merged label.
    """

    table: dict[str, str]
    keep_sources: bool = True

    @cached_property
    def classes(self) -> list[str]:
        """The model's classes, sorted: the card's class order."""
        return sorted(set(self.table.values()))

    @cached_property
    def trained_as(self) -> dict[str, list[str]]:
        """Model classes learned as their sources (sorted), for the card; empty when none is."""
        if not self.keep_sources:
            return {}
        sources: dict[str, list[str]] = {}
        for source, target in sorted(self.table.items()):
            sources.setdefault(target, []).append(source)
        return {c: sources[c] for c in self.classes if len(sources[c]) > 1}

    @cached_property
    def _layout(self) -> tuple[list[str], list[int]]:
        return head_layout(self.classes, self.trained_as)

    @property
    def training_classes(self) -> list[str]:
        """The head's classes, in head order (``ModelCard.training_classes``)."""
        return self._layout[0]

    @property
    def head_groups(self) -> list[int]:
        """The model class of each head unit (``ModelCard.head_groups``)."""
        return self._layout[1]

    def class_index(self, label: str) -> int:
        """The model-class index of a folder label."""
        return self.classes.index(self.table[label])

    def training_index(self, label: str) -> int:
        """The head-unit index of a folder label."""
        target = self.table[label]
        return self.training_classes.index(label if target in self.trained_as else target)

    def describe(self, name: str) -> str:
        """A training class for messages: ``'crack' (merged into 'defect')`` or ``'ok'``."""
        target = self.table.get(name, name)
        return f"{name!r} (merged into {target!r})" if target != name and target in self.trained_as else repr(name)


def class_plan(labels: list[str], mapping: dict[str, str], *, keep_sources: bool = True) -> ClassPlan:
    """The plan for a data set with folder classes ``labels`` under ``mapping`` (rules that match none fail)."""
    table = remap_labels(labels, mapping, strict=True) if mapping else {label: label for label in labels}
    plan = ClassPlan(table, keep_sources)
    if len(plan.classes) < 2:
        found = (
            f"the classes {labels} become only {plan.classes} after the remap"
            if mapping
            else f"there is only the class {labels}"
        )
        raise DatasetError(f"{found}; a classifier needs at least 2 classes")
    try:
        _ = plan.training_classes  # computing it checks the names
    except ValueError as exc:  # a source class named like another model class
        raise DatasetError(
            f"the remap {mapping} cannot keep its source classes apart ({exc}); rename the "
            "folders, or train on the merged labels with --set data.keep_source_classes=false"
        ) from None
    return plan
