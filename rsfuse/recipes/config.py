"""Recipe configuration: typed dataclass sections read from YAML files and ``key=value`` command-line overrides.

A recipe's configuration is a dataclass whose fields are settings or nested sections (litgpt's ``args.py`` style;
see `rsfuse.recipes.train_args`). Each setting is declared with `option` (default, the one-line doc that ``--help``
shows, and for numbers the allowed range: ``option(16, "samples per micro-batch", ge=1)``); the field's annotation
is its type (``int``, ``float``, ``bool``, ``str``, ``Literal[...]`` for a fixed set of values, ``X | None`` when null
is allowed, ``list[int]`` / ``tuple[float, ...]``).

Precedence: field defaults < ``--config FILE`` (nested YAML mappings or dotted keys) < ``key=value`` arguments, in
order. Every key is checked: an unknown key raises `ConfigError` naming it (with close matches), a value of the wrong
type or outside its range (every float must also be finite) raises naming key, value and what is allowed; the origin
(file or command line) is named too. Command-line values are parsed as YAML scalars (``train.lr=2e-5``,
``data.skip_bad=true``, ``train.vit_lr=null``). A section may be *open* (`open_section`): keys under it that are not
its own fields are checked against another dataclass's fields (the ``model.*`` overrides of `MFRSVLMConfig`) with the
same rules and kept in the section's ``overrides`` dict.
"""

import dataclasses
import difflib
import os
import typing
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

from rsfuse.recipes.config_values import ConfigError, Option, check_value, option

__all__ = [
    "ConfigError",
    "check_output_dir",
    "safe_load_bounded",
    "Option",
    "option",
    "check_value",
    "open_section",
    "describe",
    "load_config",
    "parse_args",
    "help_text",
    "to_dict",
    "save_config",
    "flatten",
    "unflatten",
    "config_entries",
    "split_config_argv",
]


OPEN_SECTION = "rsfuse_open_section"


def open_section(section: type, *, target: type, shorthand: str | None = None) -> type:
    """Mark ``section`` (a dataclass with an ``overrides: dict`` field) as open: keys under it that are not its own
    fields are fields of the dataclass ``target`` (nested dataclasses by dotted keys), checked by type and kept in
    ``overrides``. ``shorthand``: ``section=VALUE`` means ``section.<shorthand>=VALUE``."""
    setattr(section, OPEN_SECTION, (target, shorthand))
    return section


# ---------------------------------------------------------------------------------------------------- the schema


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _option_of(field: dataclasses.Field, hint: Any) -> Option:
    meta = field.metadata
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        default = None
    return Option(type=hint, default=default, help=meta.get("doc", ""), ge=meta.get("ge"), gt=meta.get("gt"),
                  le=meta.get("le"), lt=meta.get("lt"), length=meta.get("length"))


def describe(schema: type, prefix: str = "") -> dict[str, Option]:
    """Every setting of ``schema`` (and its sections) by dotted key, in declaration order."""
    options: dict[str, Option] = {}
    hints = _hints(schema)
    for field in dataclasses.fields(schema):
        hint = hints[field.name]
        if field.name == "overrides" and hasattr(schema, OPEN_SECTION):
            continue
        if _is_section(hint):
            options.update(describe(hint, f"{prefix}{field.name}."))
        else:
            options[f"{prefix}{field.name}"] = _option_of(field, hint)
    return options


def _target_options(target: type, prefix: str = "") -> dict[str, Option]:
    """Fields of an open section's target dataclass (no docs or ranges: the target validates itself)."""
    options: dict[str, Option] = {}
    hints = _hints(target)
    for field in dataclasses.fields(target):
        if not field.init:
            continue
        hint = hints[field.name]
        if _is_section(hint):
            options.update(_target_options(hint, f"{prefix}{field.name}."))
        else:
            options[f"{prefix}{field.name}"] = Option(type=hint, default=None, help="")
    return options


# ---------------------------------------------------------------------------------------------------- trees


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; keys already dotted are kept."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if not isinstance(key, str):
            raise ConfigError(f"config key {key!r} is not a string")
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def unflatten(flat: dict[str, Any]) -> dict:
    """``{"a.b": 1}`` → ``{"a": {"b": 1}}``."""
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def to_dict(config: Any) -> dict:
    """A configuration as the nested plain dict `save_config` writes and `load_config` reads back (an open section's
    overrides are merged into it)."""
    tree: dict = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name == "overrides" and hasattr(type(config), OPEN_SECTION):
            for key, item in flatten(unflatten(value)).items() if value else ():
                node = tree
                *parents, leaf = key.split(".")
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = _plain(item)
        elif dataclasses.is_dataclass(value):
            tree[field.name] = to_dict(value)
        else:
            tree[field.name] = _plain(value)
    return tree


def check_output_dir(path: str | os.PathLike, key: str = "output_dir") -> None:
    """``path`` is a folder that exists or can be created: `ConfigError` naming ``key`` when it or a folder above it
    is a file, or when the nearest existing folder cannot be written (read-only file system, permissions)."""
    path = Path(path)
    for candidate in (path, *path.absolute().parents):
        if not candidate.exists():
            continue
        if not candidate.is_dir():
            where = "is a file" if candidate == path else f"lies under {candidate}, which is a file"
            raise ConfigError(f"config key {key!r}: {path} {where}, not a folder")
        if not os.access(candidate, os.W_OK | os.X_OK):
            raise ConfigError(f"config key {key!r}: {candidate} is not writable (read-only file system or "
                              "permissions); choose another output_dir")
        return


def save_config(config: Any, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


# ---------------------------------------------------------------------------------------------------- loading


MAX_YAML_NODES = 100_000
"""The most nodes a configuration's YAML may hold once its aliases are expanded (a few nested aliases otherwise
multiply into billions: a "billion laughs" document)."""


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """Nodes of ``node`` with every alias expanded, counted with memoisation and stopped past ``limit``."""
    sizes: dict[int, int] = {}

    def size(current: yaml.Node) -> int:
        key = id(current)
        if key in sizes:
            return sizes[key]
        sizes[key] = limit + 1  # a node reached again while it is being counted: a recursive structure
        total = 1
        if isinstance(current, yaml.SequenceNode):
            children = current.value
        elif isinstance(current, yaml.MappingNode):
            children = [item for pair in current.value for item in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                break
        sizes[key] = total
        return total

    return size(node)


def safe_load_bounded(text: str, *, where: str = "", limit: int = MAX_YAML_NODES) -> Any:
    """``yaml.safe_load(text)``, refusing (`ConfigError` naming ``where``) a document whose aliases expand beyond
    ``limit`` nodes before anything is built from it."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, limit) > limit:
            raise ConfigError(f"{where or 'YAML'}: its aliases (*name) expand to more than {limit} values; "
                              "refusing to expand it (nested anchors/aliases?)")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _parse_scalar(text: str) -> Any:
    try:
        return safe_load_bounded(text, where=f"override value {text[:40]!r}") if text.strip() else ""
    except yaml.YAMLError:
        return text


def config_entries(path: str | os.PathLike | None, overrides: Sequence[str]) -> Iterator[tuple[str, Any, str]]:
    """``(dotted key, value, origin)`` from the YAML file at ``path`` (if given), then the ``key=value`` overrides,
    in the order they apply."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            line = raw[: error.start].count(b"\n") + 1
            raise ConfigError(f"{path}: not UTF-8 text (byte 0x{raw[error.start]:02x} on line {line}); save the "
                              "file as UTF-8") from None
        try:
            tree = safe_load_bounded(text, where=str(path)) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, found {type(tree).__name__}")
        for key, value in flatten(tree).items():
            yield key, value, str(path)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command-line override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        yield key.strip(), _parse_scalar(text), "command line"


def _open_sections(schema: type, prefix: str = "") -> dict[str, tuple[type, str | None]]:
    found: dict[str, tuple[type, str | None]] = {}
    hints = _hints(schema)
    for field in dataclasses.fields(schema):
        hint = hints[field.name]
        if _is_section(hint):
            if hasattr(hint, OPEN_SECTION):
                found[f"{prefix}{field.name}"] = getattr(hint, OPEN_SECTION)
            found.update(_open_sections(hint, f"{prefix}{field.name}."))
    return found


def _build(schema: type, values: dict[str, Any], prefix: str = "") -> Any:
    kwargs: dict[str, Any] = {}
    hints = _hints(schema)
    for field in dataclasses.fields(schema):
        hint = hints[field.name]
        dotted = f"{prefix}{field.name}"
        if field.name == "overrides" and hasattr(schema, OPEN_SECTION):
            kwargs[field.name] = dict(values.get(dotted, {}))
        elif _is_section(hint):
            kwargs[field.name] = _build(hint, values, dotted + ".")
        elif dotted in values:
            kwargs[field.name] = values[dotted]
    return schema(**kwargs)


def load_config(schema: type, path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> Any:
    """An instance of the dataclass ``schema``: field defaults, then the YAML file at ``path`` (if given), then the
    ``key=value`` overrides, every key and value checked (`ConfigError` naming it)."""
    options = describe(schema)
    opened = _open_sections(schema)
    targets = {name: _target_options(target) for name, (target, _) in opened.items()}
    values: dict[str, Any] = {}
    for key, value, origin in config_entries(path, overrides):
        if key in opened and isinstance(value, str) and opened[key][1] is not None:
            key = f"{key}.{opened[key][1]}"
        if key in options:
            values[key] = check_value(key, value, options[key], origin)
            continue
        section = next((name for name in opened if key.startswith(name + ".")), None)
        if section is not None:
            inner = key[len(section) + 1:]
            if inner in targets[section]:
                kept = values.setdefault(f"{section}.overrides", {})
                kept[inner] = check_value(key, value, targets[section][inner], origin)
                continue
            known = [f"{section}.{name}" for name in targets[section]] + [k for k in options if k.startswith(section)]
            close = difflib.get_close_matches(key, known, n=3) or [
                name for name in known if name.split(".")[-1] == key.split(".")[-1]]
            target_name = opened[section][0].__name__
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            where = f" (in {origin})" if origin else ""
            raise ConfigError(f"unknown config key {key!r}{where} (not a {section} setting nor a {target_name} "
                              f"field){hint}")
        close = difflib.get_close_matches(key, list(options), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        where = f" (in {origin})" if origin else ""
        raise ConfigError(f"unknown config key {key!r}{where}{hint}")
    return _build(schema, values)


def help_text(schema: type, usage: str) -> str:
    """``usage`` followed by one line per setting: key, doc, default and range (generated from the fields)."""
    lines = [usage.rstrip("\n"), ""]
    for key, spec in describe(schema).items():
        allowed = f"; {spec.bounds()}" if spec.bounds() else ""
        lines.append(f"  {key:32s} {spec.help} [default: {_plain(spec.default)!r}{allowed}]")
    for name, (target, shorthand) in _open_sections(schema).items():
        short = f" ({name}=X is short for {name}.{shorthand}=X)" if shorthand else ""
        lines.append(f"  {name + '.<field>':32s} any {target.__name__} field, dotted for nested ones{short}")
    return "\n".join(lines)


def split_config_argv(argv: Sequence[str], help_text: str) -> tuple[str | None, list[str]] | None:
    """Split ``[--config FILE] [key=value ...]`` into (config path, overrides); None after printing ``help_text``
    for ``-h``/``--help``. Shared by the training and evaluation recipes."""
    argv = list(argv)
    config_path = None
    overrides = []
    index = 0
    while index < len(argv):
        item = argv[index]
        if item in ("-h", "--help"):
            print(help_text)
            return None
        if item == "--config":
            if index + 1 >= len(argv):
                raise ConfigError("--config needs a file path")
            config_path = argv[index + 1]
            index += 2
            continue
        if item.startswith("--config="):
            config_path = item.split("=", 1)[1]
        elif item.startswith("--"):
            raise ConfigError(f"unknown option {item!r} (use key=value overrides, or --config FILE)")
        else:
            overrides.append(item)
        index += 1
    return config_path, overrides


def parse_args(schema: type, argv: Sequence[str], usage: str) -> Any:
    """Parse ``[--config FILE] [key=value ...]`` into ``schema``; None after printing help for ``-h``/``--help``."""
    parsed = split_config_argv(argv, help_text(schema, usage))
    return None if parsed is None else load_config(schema, *parsed)
