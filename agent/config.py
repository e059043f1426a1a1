"""`edge-agent run --config agent.yaml`: a YAML file whose keys are the command's own flags.

Every flag of the subcommand is a key, spelled without its leading dashes, with dashes or
underscores (`detect-interval: 2`, `detect_interval: 2`); `sources:` lists the streams, each a
plain string or `{uri: …, stream_id: …}`. The file's values become the parser's defaults, so a
flag given on the command line wins over the file. The keys are read from the parser itself,
so a flag added to `edge-agent run` later is a key at once; what a value may be is what the
flag accepts (its `type` and `choices`), plus the ranges in `RANGES`.

A mistake names the file, the line and the key, and exits with 2 like a bad flag: a file that
is not YAML, a key that is no flag (with the nearest flag offered), a value of the wrong type,
a value out of range, a key given twice.
"""
from __future__ import annotations

import argparse
import difflib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

logger = logging.getLogger(__name__)

SOURCES_KEY = "sources"
"""The list form of `--source`/`--stream-id`: `[rtsp://…, {uri: 0, stream_id: door}]`."""


@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is out of range

    def check(self, value: float) -> str | None:
        """None when `value` is in range, else what the range is."""
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None and value > self.high:
            return f"must be <= {self.high:g}"
        return None


RANGES: dict[str, Range] = {
    "max_frames": Range(0),
    "detect_interval": Range(1),
    "motion_gate": Range(0, 255),
    "drain_timeout": Range(0),
    "threads": Range(1),
    "target_fps": Range(0, low_open=True),
    "gate_sample_every": Range(1),
    "download_mbps": Range(0),
    "engine_confirm_s": Range(0, low_open=True),
    "backoff_max_s": Range(0, low_open=True),
    "outbox_max_mb": Range(0),
    "outbox_max_age_s": Range(0),
    "commit_interval_s": Range(0, 60),
    "max_frame_bytes": Range(1),
    "max_batch": Range(1),
    "batch_window_ms": Range(0),
    "stream_queue": Range(1),
}
"""Bounds of numeric flags by argparse dest, on the command line and in a config file alike; a
flag not listed is checked by its type only."""


@dataclass
class LoadedConfig:
    """What a config file set: `defaults` for the parser (dest -> value), and the list flags
    (`append` actions, e.g. --source), which are filled in after parsing only when the command
    line gave none of them: a list given on the command line replaces the file's list."""
    path: Path
    defaults: dict[str, Any] = field(default_factory=dict)
    lists: dict[str, list] = field(default_factory=dict)

    def fill(self, args: argparse.Namespace) -> None:
        if "source" in self.lists and getattr(args, "source", None):
            # --source on the command line: the file's sources and their stream ids both give way
            return self._fill_except(args, {"source", "stream_id"})
        self._fill_except(args, set())

    def _fill_except(self, args: argparse.Namespace, skip: set[str]) -> None:
        for dest, values in self.lists.items():
            if dest not in skip and getattr(args, dest, None) is None:
                setattr(args, dest, list(values))


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """`parser.parse_args(argv)`, with the values of the subcommand's `--config FILE` (when the
    subcommand has that flag and it was given) as defaults. A bad file exits with 2."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        loaded = _load_for(parser, argv)
    except ConfigError as err:
        parser.exit(ConfigError.exit_code, f"{parser.prog}: error: {err}\n")
    args = parser.parse_args(argv)
    problem = out_of_range(args)
    if problem:
        parser.exit(ConfigError.exit_code, f"{parser.prog} {getattr(args, 'command', '') or ''}: error: {problem}\n")
    if loaded is not None:
        loaded.fill(args)
        logger.debug("config %s: %s", loaded.path, sorted([*loaded.defaults, *loaded.lists]))
    return args


def out_of_range(args: argparse.Namespace) -> str | None:
    """The first parsed flag outside its `RANGES` bounds, said as a flag (None: all within)."""
    for dest, bounds in RANGES.items():
        value = getattr(args, dest, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            problem = bounds.check(value)
            if problem:
                return f"--{dest.replace('_', '-')} {problem}, got {value:g}"
    return None


def _load_for(parser: argparse.ArgumentParser, argv: list[str]) -> LoadedConfig | None:
    command, rest = _subcommand(parser, argv)
    if command is None:
        return None
    sub = _subparsers(parser).get(command)
    if sub is None or not any(a.dest == "config" for a in sub._actions):
        return None
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(rest)
    if known.config is None:
        return None
    loaded = load_config(known.config, [sub, parser])
    if loaded.defaults.get("log_level") is not None:
        parser.set_defaults(log_level=loaded.defaults.pop("log_level"))
    sub.set_defaults(**loaded.defaults)
    given = set(loaded.defaults) | set(loaded.lists)
    for action in sub._actions:
        if action.required and action.dest in given:
            action.required = False  # the file gives it; the command line may still override
    return loaded


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _subcommand(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[str | None, list[str]]:
    """The first positional word (skipping the top-level options and their values), and what follows it."""
    takes_value = {opt for a in parser._actions if a.option_strings and a.nargs != 0 for opt in a.option_strings}
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return (argv[i + 1] if i + 1 < len(argv) else None), argv[i + 2:]
        if word.startswith("-"):
            i += 2 if word in takes_value else 1
            continue
        return word, argv[i + 1:]
    return None, []


# ---- the file ----

def load_config(path: Path, parsers: Sequence[argparse.ArgumentParser]) -> LoadedConfig:
    """Read and check `path` against the flags of `parsers` (the subcommand first, then the
    top-level parser, whose options such as --log-level are keys too)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"--config {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"--config {path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    loader = yaml.SafeLoader(text)
    try:  # one parse: the nodes carry the lines that errors name, the values come from them
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from err
    finally:
        loader.dispose()
    if data is None:
        return LoadedConfig(path)
    if not isinstance(data, dict) or not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}: expected a mapping of flag names to values at the top, got {_kind(data)}")
    return _Checker(path, root, parsers).check(data)


def _kind(value: Any) -> str:
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


def _normal(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


class _Checker:
    def __init__(self, path: Path, root: yaml.MappingNode, parsers: Sequence[argparse.ArgumentParser]):
        self.path = path
        self.lines: dict[str, int] = {}
        self.nodes: dict[str, yaml.Node] = {}
        for key_node, value_node in root.value:
            key = str(key_node.value)
            if key in self.lines:
                raise ConfigError(f"{path}:{key_node.start_mark.line + 1}: key {key!r} given twice "
                                  f"(first on line {self.lines[key]})")
            self.lines[key] = key_node.start_mark.line + 1
            self.nodes[key] = value_node
        # key (normalised) -> (action, name as a flag); a dest and each long option name are keys
        self.actions: dict[str, tuple[argparse.Action, str]] = {}
        for parser in parsers:
            for action in parser._actions:
                if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction, argparse._VersionAction)):
                    continue
                if action.dest in ("config", argparse.SUPPRESS) or action.help == argparse.SUPPRESS:
                    continue
                flag = next((o for o in action.option_strings if o.startswith("--")), None)
                if flag is None:
                    continue
                for name in (action.dest, _normal(flag)):
                    self.actions.setdefault(name, (action, flag))

    def where(self, key: str) -> str:
        return f"{self.path}:{self.lines[key]}" if key in self.lines else str(self.path)

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where(key)}: {key}: {message}")

    def check(self, data: dict) -> LoadedConfig:
        loaded = LoadedConfig(self.path)
        seen: dict[str, str] = {}  # dest -> the key that set it
        for key, value in data.items():
            if not isinstance(key, str):
                raise ConfigError(f"{self.where(str(key))}: key {key!r} is not a flag name")
            if _normal(key) == SOURCES_KEY:
                self._sources(key, value, loaded, seen)
                continue
            entry = self.actions.get(_normal(key))
            if entry is None:
                raise self.fail(key, "unknown key" + self._suggest(key))
            action, flag = entry
            if action.dest in seen:
                raise self.fail(key, f"sets the same flag ({flag}) as key {seen[action.dest]!r}")
            seen[action.dest] = key
            self._set(key, value, action, flag, loaded)
        return loaded

    def _suggest(self, key: str) -> str:
        names = sorted({flag.lstrip("-") for _, flag in self.actions.values()} | {SOURCES_KEY})
        close = difflib.get_close_matches(key.replace("_", "-").lstrip("-"), names, n=1)
        return f" (did you mean {close[0]!r}?)" if close else f"; keys are the flags of the command: {', '.join(names)}"

    def _set(self, key: str, value: Any, action: argparse.Action, flag: str, loaded: LoadedConfig) -> None:
        if action.nargs == 0:  # store_true / store_false / store_const / count
            if isinstance(action, argparse._CountAction):
                loaded.defaults[action.dest] = self._scalar(key, value, action, int)
                return
            if not isinstance(value, bool):
                raise self.fail(key, f"must be true or false, got {_kind(value)}")
            if _normal(key) == action.dest:
                loaded.defaults[action.dest] = value if isinstance(action.const, bool) else (
                    action.const if value else action.default)
            else:  # the flag's own name, e.g. no-calibrate: true
                loaded.defaults[action.dest] = action.const if value else action.default
            return
        if isinstance(action, argparse._AppendAction):
            values = value if isinstance(value, list) else [value]
            if not values:
                raise self.fail(key, "is an empty list")
            loaded.lists[action.dest] = [self._scalar(f"{key}", v, action) for v in values]
            return
        if action.nargs not in (None, "?"):
            if not isinstance(value, list):
                raise self.fail(key, f"must be a list, got {_kind(value)}")
            loaded.defaults[action.dest] = [self._scalar(key, v, action) for v in value]
            return
        loaded.defaults[action.dest] = self._scalar(key, value, action)

    def _scalar(self, key: str, value: Any, action: argparse.Action, kind: Any = None) -> Any:
        kind = kind or action.type
        if value is None:
            raise self.fail(key, "has no value")
        if isinstance(value, (dict, list)):
            raise self.fail(key, f"must be a single value, got {_kind(value)}")
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(key, f"must be an integer, got {_kind(value)}")
            result: Any = value
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.fail(key, f"must be a number, got {_kind(value)}")
            result = float(value)
        elif kind is None or kind is str:
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise self.fail(key, f"must be a string, got {_kind(value)} (quote it)")
            result = str(value)
        else:
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise self.fail(key, f"must be a string, got {_kind(value)}")
            try:
                result = kind(str(value))
            except (argparse.ArgumentTypeError, TypeError, ValueError) as err:
                raise self.fail(key, str(err) or f"invalid value {value!r}") from err
        if action.choices is not None and result not in action.choices:
            raise self.fail(key, f"must be one of {', '.join(map(str, action.choices))}, got {value!r}")
        bounds = RANGES.get(action.dest)
        if bounds is not None and isinstance(result, (int, float)):
            problem = bounds.check(result)
            if problem:
                raise self.fail(key, f"{problem}, got {value!r}")
        return result

    def _sources(self, key: str, value: Any, loaded: LoadedConfig, seen: dict[str, str]) -> None:
        """`sources: [uri, {uri: …, stream_id: …}, …]` -> the --source and --stream-id lists."""
        for dest in ("source", "stream_id"):
            if dest in seen:
                raise self.fail(key, f"give the streams either in {key!r} or in {seen[dest]!r}, not both")
            seen[dest] = key
        if not isinstance(value, list) or not value:
            raise self.fail(key, f"must be a non-empty list of sources, got {_kind(value)}")
        if "source" not in self.actions:
            raise self.fail(key, "unknown key: this command takes no --source")
        items = self.nodes[key].value if isinstance(self.nodes.get(key), yaml.SequenceNode) else []
        source_action, _ = self.actions["source"]
        uris: list[str] = []
        ids: list[str | None] = []
        for i, item in enumerate(value):
            line = items[i].start_mark.line + 1 if i < len(items) else self.lines[key]
            label = f"{key}[{i}]"
            if isinstance(item, dict):
                unknown = sorted(set(item) - {"uri", "stream_id"})
                if unknown:
                    raise ConfigError(f"{self.path}:{line}: {label}: unknown key {unknown[0]!r} "
                                      "(a source has uri and stream_id)")
                if "uri" not in item:
                    raise ConfigError(f"{self.path}:{line}: {label}: uri is missing")
                uri, stream_id = item["uri"], item.get("stream_id")
                if stream_id is not None and (isinstance(stream_id, bool) or not isinstance(stream_id, (str, int))
                                              or not str(stream_id)):
                    raise ConfigError(f"{self.path}:{line}: {label}.stream_id: must be a non-empty string, "
                                      f"got {_kind(stream_id)}")
            else:
                uri, stream_id = item, None
            if isinstance(uri, bool) or not isinstance(uri, (str, int)) or uri == "":
                raise ConfigError(f"{self.path}:{line}: {label}: a source is a file, folder, camera index or "
                                  f"URL, got {_kind(uri)}")
            uris.append(self._scalar(key, uri, source_action))
            ids.append(None if stream_id is None else str(stream_id))
        loaded.lists["source"] = uris
        if any(sid is not None for sid in ids):
            filled = [sid if sid is not None else f"cam{i}" for i, sid in enumerate(ids)]
            duplicates = sorted({sid for sid in filled if filled.count(sid) > 1})
            if duplicates:
                raise self.fail(key, f"stream_id {duplicates[0]!r} is used twice")
            loaded.lists["stream_id"] = filled
