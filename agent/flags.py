"""The flags of `edge-agent run` and `serve`, made from AgentConfig's fields, and `parse_args`,
the one way flags and a config file become an AgentConfig.

Each setting is defined once, as a field of agent.config.AgentConfig (type, bounds, help); its
flag is `--<name-with-dashes>`. The settings come in groups (`GROUPS`), and a command takes the
groups it has (`COMMAND_GROUPS`): `run` and `serve` share every group but planning (run) and the
inference service (serve). A flag's parser default is SUPPRESS, so what was given on the command
line is known: flags win over the file (`--config`), the file over the model's defaults; a
`--source` on the command line replaces the file's sources and their stream ids. Whatever the
origin, the values are checked by the model, and its refusal is said as the flag
(`--motion-gate must be <= 255, got 300`) or as the file's line and key
(`agent.yaml:3: motion_gate: must be <= 255, got 300`).
"""
from __future__ import annotations

import argparse
import logging
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, cast, get_args, get_origin

from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from edgefleet.common.labels import split_label

from .config import AgentConfig
from .config_file import ConfigFileError, FileValues, Key, kind_of, normal, read_config_file
from .errors import ConfigError

logger = logging.getLogger(__name__)

GROUPS: dict[str, tuple[str, ...]] = {
    "the controller": ("controller", "tls_ca", "tls_cert", "tls_key", "state_dir", "enroll_key", "name", "labels",
                       "backoff_max_s", "drain_timeout", "restart_mode"),
    "local streams": ("source", "stream_id", "max_frames", "loop", "pace", "folder_fps", "detect_interval",
                      "motion_gate", "analytics", "objects", "snapshots"),
    "the outbox": ("outbox_max_mb", "outbox_max_age_s", "commit_interval_s"),
    "the detector": ("threads", "rect", "models_dir", "model"),
    "planning": ("auto_plan", "target_fps", "calibrate", "min_agreement"),
    "deployments": ("gate_sample_every", "download_mbps", "engine_confirm_s"),
    "reporting": ("metrics_listen", "mqtt", "mqtt_prefix", "mqtt_username", "mqtt_password_file", "mqtt_tls_ca",
                  "mqtt_tls_cert", "mqtt_tls_key"),
    "the inference service": ("listen", "token", "max_batch", "batch_window_ms", "stream_queue", "max_frame_bytes",
                              "grace"),
}
"""AgentConfig's settings by group, in the order --help lists them (every field but log_level)."""

COMMAND_GROUPS: dict[str, tuple[str, ...]] = {
    "run": ("the controller", "local streams", "the outbox", "the detector", "planning", "deployments", "reporting"),
    "serve": ("the inference service", "the controller", "local streams", "the outbox", "the detector",
              "deployments", "reporting"),
}

FILE_ONLY = ("analytics", "objects", "snapshots")
"""Settings with no flag, only a config file key (structured: agent.zones, agent.objects, agent.snapshots); in GROUPS
for the commands that take them."""

TOP_LEVEL = ("log_level",)
"""Settings whose flag is the top-level parser's (`edge-agent --log-level debug run ...`); keys in files too."""

_ARG_TYPES: dict[Any, Any] = {int: int, float: float, Path: Path, str: str}
_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"), "less_than_equal": ("<=", "le"),
           "less_than": ("<", "lt")}
_TYPES = {"int_type": "must be an integer", "float_type": "must be a number", "bool_type": "must be true or false",
          "string_type": "must be a string", "is_instance_of": "must be a string", "list_type": "must be a list"}


def flag_of(name: str) -> str:
    extra = AgentConfig.model_fields[name].json_schema_extra
    flag = extra.get("flag") if isinstance(extra, dict) else None
    return str(flag) if flag else "--" + name.replace("_", "-")


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(the scalar type, whether a list of it) of a field's annotation, through Optional and Annotated."""
    is_list = False
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        elif origin is list:
            annotation, is_list = get_args(annotation)[0], True
        else:
            return annotation, is_list


def add_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, **overrides: Any) -> None:
    """The flag of the AgentConfig field `name` (default: SUPPRESS, so that a given flag is known)."""
    info = AgentConfig.model_fields[name]
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    flag = flag_of(name)
    kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": info.description}
    base, is_list = _base_type(info.annotation)
    if get_origin(base) is Literal:
        kwargs["choices"] = get_args(base)
    elif get_origin(base) is dict:  # --label K=V, repeatable: (K, V) pairs that config_from makes a mapping
        kwargs.update(type=_key_value(flag), metavar=extra.get("metavar"), action="append")
    elif base is bool:
        kwargs["action"] = "store_false" if flag.startswith("--no-") else "store_true"
    else:
        kwargs.update(type=_ARG_TYPES.get(base, str), metavar=extra.get("metavar"))
        if is_list:
            kwargs["action"] = "append"
    kwargs.update(overrides)
    parser.add_argument(flag, **kwargs)


def add_config_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """`--config` and the flags of every group `command` has (COMMAND_GROUPS)."""
    parser.add_argument("--config", dest="config_path", type=Path, metavar="YAML",
                        help="read settings from this YAML file (keys: the flags without dashes, plus `sources:`); "
                             "flags on the command line win")
    names: list[str] = []
    for title in COMMAND_GROUPS[command]:
        group = parser.add_argument_group(title)
        for name in GROUPS[title]:
            if name not in FILE_ONLY:
                add_flag(group, name)
            names.append(name)
    parser.set_defaults(settings=tuple(names))


def _key_value(flag: str) -> Callable[[str], tuple[str, str]]:
    """An argparse type for `flag KEY=VALUE`: the (key, value) pair, checked as a label."""
    def parse(text: str) -> tuple[str, str]:
        try:
            return split_label(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return parse


def file_keys(names: Sequence[str]) -> dict[str, Key]:
    """The keys a config file may use for the settings `names` (and the top-level ones)."""
    keys: dict[str, Key] = {}
    for name in (*names, *TOP_LEVEL):
        if name in FILE_ONLY:
            keys[name] = Key(name, name, structured=True)
            continue
        info = AgentConfig.model_fields[name]
        flag, (base, is_list) = flag_of(name), _base_type(info.annotation)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        shape = {"is_mapping": get_origin(base) is dict, "joined": bool(extra.get("joined"))}
        keys[name] = Key(name, flag, is_list, **shape)
        if normal(flag) != name:  # the flag's own spelling, e.g. no-calibrate: true
            keys[normal(flag)] = Key(name, flag, is_list, negated=flag.startswith("--no-"), **shape)
    return keys


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """`parser.parse_args(argv)`; for a command with settings (run, serve), `args.config` is their
    AgentConfig, from the flags and the `--config` file. A bad value exits with 2, naming the flag
    or the file's line and key."""
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    command = getattr(args, "command", None) or ""
    try:
        names = getattr(args, "settings", None)
        if names is None:
            check_settings(args)
        else:
            args.config = config_from(args, names)
    except ConfigFileError as err:
        parser.exit(ConfigError.exit_code, f"{parser.prog}: error: {err}\n")
    except ConfigError as err:
        parser.exit(ConfigError.exit_code, f"{parser.prog} {command}: error: {err}\n")
    return args


def config_from(args: argparse.Namespace, names: Sequence[str]) -> AgentConfig:
    """The AgentConfig of parsed `args` (flags with SUPPRESS defaults) over their `--config` file."""
    given = {name: getattr(args, name) for name in (*names, *TOP_LEVEL) if hasattr(args, name)}
    path = getattr(args, "config_path", None)
    file = read_config_file(path, file_keys(names)) if path is not None else FileValues(Path())
    values = dict(file.values)
    if "source" in given and "stream_id" not in given:
        values.pop("stream_id", None)  # the command line's streams replace the file's, ids and all
    if "labels" in given:  # the command line's labels join the file's, a key given in both is the flag's
        given["labels"] = {**(values.get("labels") or {}), **dict(given["labels"])}
    values.update(given)
    if "listen" in names and values.get("listen") is None:
        raise ConfigError("--listen is required: where clients call (HOST:PORT)")
    try:
        config = AgentConfig.model_validate(values)
    except ValidationError as err:
        raise refusal(err.errors()[0], file, set(given)) from err
    if path is not None:
        logger.debug("config %s: %s", path, sorted(file.values))
    return config


def check_settings(args: argparse.Namespace) -> None:
    """Flags made from AgentConfig fields on other commands (`plan --target-fps`; the command's
    `checked` default names them): the same bounds."""
    for name in getattr(args, "checked", ()):
        if name in vars(args):
            info = AgentConfig.model_fields[name]
            try:
                adapter: TypeAdapter[Any] = TypeAdapter(cast(Any, Annotated[info.annotation, info]))
                adapter.validate_python(getattr(args, name), strict=True)
            except ValidationError as err:
                raise refusal(err.errors()[0] | {"loc": (name,)}, FileValues(Path()), {name}) from err


def refusal(error: ErrorDetails, file: FileValues, from_flags: set[str]) -> ConfigError:
    """The model's first objection, said where the value came from: the file's line and key, or the flag."""
    name = str(error["loc"][0]) if error["loc"] else None
    message = _message(error, name)
    if name is None:
        return ConfigError(message)
    if name in file.where and name not in from_flags or name in FILE_ONLY:
        return ConfigFileError(f"{file.locate(name)}: {message}")
    flag = flag_of(name)
    return ConfigError(message if message.startswith(flag) else f"{flag} {message}")


def _message(error: ErrorDetails, name: str | None) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind in _BOUNDS:
        op, bound = _BOUNDS[kind]
        return f"must be {op} {ctx[bound]:g}, got {value:g}" if isinstance(value, float) else \
            f"must be {op} {ctx[bound]:g}, got {value!r}"
    if kind in _TYPES:
        return f"{_TYPES[kind]}, got {kind_of(value)}" + (" (quote it)" if kind == "string_type" else "")
    if kind == "literal_error" and name is not None:
        choices = get_args(_base_type(AgentConfig.model_fields[name].annotation)[0])
        return f"must be one of {', '.join(map(str, choices))}, got {value!r}"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    return str(error["msg"])
