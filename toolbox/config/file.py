"""Training flags from a file: ``--config FILE.yaml`` (or ``.json``).

Keys are the flag names without ``--``, as in the 'config' entry of a run's config.json; each value
is checked as the command line checks that flag (its type, its choices, its range), and a bad one
is one line that names the file and the key. The file only supplies values, which the flags given
on the command line override: a run is recorded (config.json) and named by its resolved flags, so a
file and the same flags on the command line are the same run. runner.py reads the same files,
with a ``grid:`` section beside the flags (``toolbox.sweep.file``).

Torch-free, as the rest of the flag layer; PyYAML loads only when a file is given.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import re
from pathlib import Path
from typing import Any, Mapping

from toolbox.config.flags import Config
from toolbox.config.naming import format_value
from toolbox.errors import UsageError

FIELDS = {item.name: item for item in dataclasses.fields(Config)}
SUFFIXES = (".yaml", ".yml", ".json")
GRID = "grid"
"""runner.py's section of grid axes."""
KINDS = {int: "a whole number", float: "a number", str: "a text"}
SHOWN_CHARS = 60


def shown(value: Any) -> str:
    """``value`` as an error line quotes it, cut short: a line must stay one line of a terminal."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


def load_mapping(path: Path) -> dict[Any, Any]:
    """The file's top-level mapping. A file that is missing, unreadable, not YAML (JSON for .json),
    or that holds anything but a mapping with distinct keys is a one-line error."""
    if path.suffix.lower() not in SUFFIXES:
        raise UsageError(f"--config {path}: name a YAML or JSON file ({', '.join(SUFFIXES)})")
    try:
        if path.is_dir():
            raise UsageError(f"--config {path} is a folder; name a file")
        if path.exists() and not path.is_file():  # a FIFO would block the read, a device never end it
            raise UsageError(f"--config {path} is not a regular file; name a file")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise UsageError(f"--config {path} cannot be read: {reason}") from None
    try:
        data = parse_json(text, path) if path.suffix.lower() == ".json" else parse_yaml(text, path)
    except RecursionError:
        raise UsageError(f"--config {path} nests too deeply to be read; flags are one level of keys") from None
    if not isinstance(data, dict):
        held = {type(None): "nothing", list: "a list", str: "a text", bool: "a boolean"}.get(type(data), "a number")
        raise UsageError(
            f"--config {path} must hold a mapping of flag names to values (e.g. 'lr: 0.05'); it holds {held}"
        )
    return data


def parse_json(text: str, path: Path) -> Any:
    def distinct(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        twice = next((key for index, key in enumerate(keys) if key in keys[:index]), None)
        if twice is not None:
            raise UsageError(f"--config {path}: the key {twice!r} is given twice")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=distinct)
    except json.JSONDecodeError as error:
        raise UsageError(
            f"--config {path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        ) from None


def parse_yaml(text: str, path: Path) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=strict_loader())  # noqa: S506 (a SafeLoader)
    except ValueError as error:  # an explicitly tagged value that is none (!!int 0x10)
        raise UsageError(f"--config {path} is not valid YAML ({shown(str(error))})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or " ".join(str(error).split())
        raise UsageError(f"--config {path} is not valid YAML ({where}{problem})") from None


@functools.cache
def strict_loader() -> type:
    """PyYAML's safe loader, reading scalars as YAML 1.2 (and the command line) read them: true and
    false only as booleans (``amp: off`` is the text 'off', not YAML 1.1's false), numbers in decimal
    (``epochs: 010`` is 10, not YAML 1.1's octal 8; ``1:30`` a text, not base 60's 90), no dates
    (``seed: 2024-01-01`` is a text); and no key given twice, no alias (``*name``: flags are one
    level, and an alias can expand a short file into a huge value)."""
    import yaml

    replaced = {f"tag:yaml.org,2002:{kind}" for kind in ("bool", "int", "float", "timestamp")}

    class StrictLoader(yaml.SafeLoader):
        yaml_implicit_resolvers = {
            first: [(tag, pattern) for tag, pattern in resolvers if tag not in replaced]
            for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
        }

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.events.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(None, None, "an alias (*name): write the value out instead", mark)
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen = set()
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"the key {key.value!r} is given twice", key.start_mark
                        )
                    seen.add(key.value)
            return super().construct_mapping(node, deep)

    def decimal(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
        return int(loader.construct_scalar(node), 10)

    digits = list("-+0123456789")
    StrictLoader.add_constructor("tag:yaml.org,2002:int", decimal)
    StrictLoader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    StrictLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9]+$"), digits)
    StrictLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
        [*digits, "."],
    )
    return StrictLoader


def known_flag(key: Any, path: Path) -> str:
    """``key`` if it names a training flag, else a one-line error that suggests the nearest."""
    if key in FIELDS:
        return key
    near = difflib.get_close_matches(str(key), FIELDS, n=1)
    hint = f" (did you mean {near[0]}?)" if near else ""
    section = "; grid: is a section of runner.py's --config only" if key == GRID else ""
    raise UsageError(f"--config {path}: unknown key {key!r}{hint}; keys are the flags of --help without '--'{section}")


def convert(item: dataclasses.Field, value: Any) -> Any:
    """``value`` as flag ``item``'s type, as the command line converts a flag's text; the
    numbers YAML gives a text flag become that text (``lr_milestones: 150``)."""
    kind = item.metadata["type"] or type(item.default)
    if isinstance(item.default, bool):
        if isinstance(value, bool):
            return value
        raise ValueError(f"must be true or false; got {shown(value)}")
    if value is None:
        if item.default is None:
            return None  # as when the flag is left out: the method's or the recipe's default
        raise ValueError("has no value; give one, or leave the key out for the default")
    if isinstance(value, (list, dict)):
        raise ValueError(f"must be one value, as on the command line; got {shown(value)}")
    if isinstance(value, bool) or (kind is int and isinstance(value, float)):
        raise ValueError(f"must be {KINDS[kind]}; got {shown(value)}")
    try:
        converted = kind(value)
    except (ValueError, TypeError):
        raise ValueError(f"must be {KINDS[kind]}; got {shown(value)}") from None
    choices = item.metadata["choices"]
    if choices and converted not in choices:
        raise ValueError(f"must be one of {', '.join(map(str, choices))}; got {shown(converted)}")
    return converted


def flag_value(name: str, value: Any, path: Path, section: str = "") -> Any:
    """The value of flag ``name`` from the file, converted and checked as the command line checks
    it; a bad one is a one-line error naming the file, the section if any, and the key."""
    try:
        converted = convert(FIELDS[name], value)
        Config(**{name: converted}).validate()  # the other flags keep their (valid) defaults
    except (ValueError, UsageError) as error:
        detail = re.sub(rf"^--{name}:? ", "", str(error))
        raise UsageError(f"--config {path}: {section}{name}: {detail}") from None
    return converted


def read_flags(path: Path) -> dict[str, Any]:
    """tucker_distillation.py's --config: the file's flags, each checked as on the command line."""
    return {known_flag(key, path): flag_value(key, value, path) for key, value in load_mapping(path).items()}


def command_line(values: Mapping[str, Any]) -> list[str]:
    """Checked flags as command-line arguments, spelled as run names spell them (``50``, ``0.05``);
    None (the default) is left out."""
    tokens = []
    for name, value in values.items():
        if isinstance(value, bool):
            tokens.append(f"--{name}" if value else f"--no-{name}")
        elif value is not None:
            tokens += [f"--{name}", format_value(value)]
    return tokens
