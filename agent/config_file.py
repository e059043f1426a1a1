"""`edge-agent run|serve --config agent.yaml`: a YAML file whose keys are the command's own flags.

Every flag of the subcommand is a key, spelled without its leading dashes, with dashes or
underscores (`detect-interval: 2`, `detect_interval: 2`); `sources:` lists the streams, each a
plain string or `{uri: …, stream_id: …}`; `analytics:` (no flag) gives each stream's zones
and lines (agent.zones), `objects:` and `snapshots:` (no flags) the tracked objects' settings
(agent.objects, agent.snapshots). This module reads the file's structure (keys, lists, where each key is); the
values' types and bounds are AgentConfig's (agent.config), checked with the command line's values,
so that a mistake in either is said the same way.

A mistake names the file, the line and the key, and exits with 2 like a bad flag: a file that
is not YAML, a key that is no flag (with the nearest flag offered), a value of the wrong shape,
a key given twice.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

SOURCES_KEY = "sources"
"""The list form of `--source`/`--stream-id`: `[rtsp://…, {uri: 0, stream_id: door}]`."""


class ConfigFileError(ConfigError):
    """A mistake in the config file; the message starts with the file, the line and the key."""


@dataclass(frozen=True)
class Key:
    """A setting as a file names it: its AgentConfig field, its flag, and whether the key is the
    flag's negation (`no-calibrate: true` sets `calibrate` to false)."""
    field: str
    flag: str
    is_list: bool = False
    negated: bool = False
    is_mapping: bool = False
    """A mapping of names to values (`labels: {site: lab}`)."""
    joined: bool = False
    """One text that a list may give, joined with commas (`controller: [a:50051, b:50051]`)."""
    structured: bool = False
    """A mapping whose values are mappings, checked by the model (`analytics: {cam0: {zones: …}}`)."""


@dataclass
class FileValues:
    """What a config file set: AgentConfig field -> value, and where each was set (the key as
    written and its line), for the messages of values the model refuses."""
    path: Path
    values: dict[str, Any] = field(default_factory=dict)
    where: dict[str, tuple[str, int]] = field(default_factory=dict)

    def locate(self, name: str) -> str:
        """`path:line: key` for the field `name` (just the path when the file did not set it)."""
        if name not in self.where:
            return str(self.path)
        key, line = self.where[name]
        return f"{self.path}:{line}: {key}"


def normal(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


def kind_of(value: Any) -> str:
    """A value as a message names it: `a boolean (true)`, `a number (1.5)`, `str 'two'`."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    return f"{type(value).__name__} {value!r}"


def read_config_file(path: Path, keys: dict[str, Key]) -> FileValues:
    """Read `path`; `keys` maps each accepted key (normal(), i.e. with underscores) to its setting."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"--config {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"--config {path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    return read_config_text(path, text, keys)


def read_config_text(path: Path, text: str, keys: dict[str, Key]) -> FileValues:
    """`read_config_file` on text already read; `path` names it in messages (the controller's
    desired configuration, agent.desired, is read this way as `desired config vN`)."""
    try:
        return _read_config_text(path, text, keys)
    except RecursionError as err:  # lists or mappings nested thousands deep: no config is shaped so
        raise ConfigFileError(f"{path}: not valid YAML: nested too deeply") from err


def _read_config_text(path: Path, text: str, keys: dict[str, Key]) -> FileValues:
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as err:  # a character YAML does not allow, found before parsing starts
        raise ConfigFileError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from err
    try:  # one parse: the nodes carry the lines that errors name, the values come from them
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigFileError(f"{where}: not valid YAML: {problem}") from err
    finally:
        loader.dispose()
    if data is None:
        return FileValues(path)
    if not isinstance(data, dict) or not isinstance(root, yaml.MappingNode):
        raise ConfigFileError(f"{path}: expected a mapping of flag names to values at the top, got {kind_of(data)}")
    return _Reader(path, root, keys).read(data)


class _Reader:
    def __init__(self, path: Path, root: yaml.MappingNode, keys: dict[str, Key]):
        self.path, self.keys = path, keys
        self.lines: dict[str, int] = {}
        self.nodes: dict[str, yaml.Node] = {}
        for key_node, value_node in root.value:
            key = str(key_node.value)
            if key in self.lines:
                raise ConfigFileError(f"{path}:{key_node.start_mark.line + 1}: key {key!r} given twice "
                                      f"(first on line {self.lines[key]})")
            self.lines[key] = key_node.start_mark.line + 1
            self.nodes[key] = value_node
        self.result = FileValues(path)

    def fail(self, key: str, message: str) -> ConfigFileError:
        where = f"{self.path}:{self.lines[key]}" if key in self.lines else str(self.path)
        return ConfigFileError(f"{where}: {key}: {message}")

    def read(self, data: dict) -> FileValues:
        for key, value in data.items():
            if not isinstance(key, str):
                raise ConfigFileError(f"{self.path}:{self.lines.get(str(key), '?')}: key {key!r} is not a flag name")
            if normal(key) == SOURCES_KEY and "source" in {k.field for k in self.keys.values()}:
                self._sources(key, value)
                continue
            setting = self.keys.get(normal(key))
            if setting is None:
                raise self.fail(key, "unknown key" + self._suggest(key))
            if setting.field in self.result.where:
                raise self.fail(key, f"sets the same flag ({setting.flag}) as key "
                                     f"{self.result.where[setting.field][0]!r}")
            self._set(key, setting, self._structured(key, value) if setting.structured else
                      self._value(key, value, setting))
        return self.result

    def _set(self, key: str, setting: Key, value: Any) -> None:
        self.result.values[setting.field] = value
        self.result.where[setting.field] = (key, self.lines[key])

    def _suggest(self, key: str) -> str:
        names = sorted({k.flag.lstrip("-") for k in self.keys.values()} | {SOURCES_KEY})
        close = difflib.get_close_matches(key.replace("_", "-").lstrip("-"), names, n=1)
        return f" (did you mean {close[0]!r}?)" if close else f"; keys are the flags of the command: {', '.join(names)}"

    def _value(self, key: str, value: Any, setting: Key) -> Any:
        """The value's shape (its type and bounds are the model's)."""
        if setting.is_mapping:
            if not isinstance(value, dict):
                raise self.fail(key, f"must be a mapping (site: lab), got {kind_of(value)}")
            for name, item in value.items():
                if item is None or isinstance(item, (dict, list)):
                    raise self.fail(key, f"{name}: must be a single value, got {kind_of(item)}")
            return dict(value)
        if setting.joined and isinstance(value, list):
            if not value:
                raise self.fail(key, "is an empty list")
            return ",".join(str(self._scalar(key, v)) for v in value)
        if setting.is_list:
            values = value if isinstance(value, list) else [value]
            if not values:
                raise self.fail(key, "is an empty list")
            return [self._scalar(key, v) for v in values]
        value = self._scalar(key, value)
        if setting.negated and isinstance(value, bool):
            return not value
        return value

    def _structured(self, key: str, value: Any) -> dict:
        if not isinstance(value, dict):
            what = "settings" if normal(key) in ("objects", "snapshots") else "stream ids to settings"
            raise self.fail(key, f"must be a mapping of {what}, got {kind_of(value)}")
        return value

    def _scalar(self, key: str, value: Any) -> Any:
        if value is None:
            raise self.fail(key, "has no value")
        if isinstance(value, (dict, list)):
            raise self.fail(key, f"must be a single value, got {kind_of(value)}")
        return value

    def _sources(self, key: str, value: Any) -> None:
        """`sources: [uri, {uri: …, stream_id: …}, …]` -> the source and stream_id settings."""
        for name in ("source", "stream_id"):
            if name in self.result.where:
                raise self.fail(key, f"give the streams either in {key!r} or in "
                                     f"{self.result.where[name][0]!r}, not both")
        if not isinstance(value, list) or not value:
            raise self.fail(key, f"must be a non-empty list of sources, got {kind_of(value)}")
        items = self.nodes[key].value if isinstance(self.nodes.get(key), yaml.SequenceNode) else []
        uris: list[Any] = []
        ids: list[str | None] = []
        for i, item in enumerate(value):
            line = items[i].start_mark.line + 1 if i < len(items) else self.lines[key]
            uri, stream_id = self._source(f"{key}[{i}]", line, item)
            uris.append(uri)
            ids.append(stream_id)
        self._set(key, Key("source", "--source", is_list=True), uris)
        self.result.where["stream_id"] = (key, self.lines[key])  # a stream_id key later sets them twice
        if any(sid is not None for sid in ids):
            filled = [sid if sid is not None else f"cam{i}" for i, sid in enumerate(ids)]
            duplicates = sorted({sid for sid in filled if filled.count(sid) > 1})
            if duplicates:
                raise self.fail(key, f"stream_id {duplicates[0]!r} is used twice")
            self._set(key, Key("stream_id", "--stream-id", is_list=True), filled)

    def _source(self, label: str, line: int, item: Any) -> tuple[Any, str | None]:
        where = f"{self.path}:{line}: {label}"
        uri, stream_id = item, None
        if isinstance(item, dict):
            unknown = sorted(set(item) - {"uri", "stream_id"})
            if unknown:
                raise ConfigFileError(f"{where}: unknown key {unknown[0]!r} (a source has uri and stream_id)")
            if "uri" not in item:
                raise ConfigFileError(f"{where}: uri is missing")
            uri, stream_id = item["uri"], item.get("stream_id")
            if stream_id is not None and (isinstance(stream_id, bool) or not isinstance(stream_id, (str, int))
                                          or not str(stream_id)):
                raise ConfigFileError(f"{where}.stream_id: must be a non-empty string, got {kind_of(stream_id)}")
        if isinstance(uri, bool) or not isinstance(uri, (str, int)) or uri == "":
            raise ConfigFileError(f"{where}: a source is a file, folder, camera index or URL, got {kind_of(uri)}")
        return uri, None if stream_id is None else str(stream_id)
