"""`edgefleet artifact …` and `edgefleet rollout …`: ship engines to the fleet (`device …` is fleet/cli_devices.py).

    edgefleet artifact push yolov8n.onnx                   # progress bar; prints the sha256
    edgefleet rollout create --artifact 3f2a… --select site=lab --canary 1 --waves 10,50,100 --wait
    edgefleet rollout status ro-1a2b3c4d --watch            # per-wave progress until it finishes
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from edgefleet.v1 import fleet_pb2, types_pb2

from .channel import add_connection_arguments
from .cli import CliError, _call, control_stub, print_table
from .cli_common import print_json
from .cli_devices import add_select_argument, select_text
from .convert import timestamp
from .rollouts import RolloutOptions

UPLOAD_CHUNK = 1 << 20
FINISHED = {fleet_pb2.SUCCEEDED, fleet_pb2.FAILED, fleet_pb2.ABORTED}


# ---- controller settings (edgefleet serve) ----

def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    defaults = RolloutOptions()
    p.add_argument("--artifacts-dir", type=Path, metavar="DIR",
                   help="where pushed artifacts are kept (default: artifacts/ beside --db)")
    p.add_argument("--signing-key", type=Path, metavar="PEM",
                   help="the Ed25519 key that signs artifact manifests; created when missing "
                        "(default: signing-key.pem beside --db; back it up with the database)")
    p.add_argument("--rollout-device-timeout", type=float, default=defaults.device_timeout_s, metavar="S",
                   help="a device of a running wave that reports nothing for S seconds counts as failed; "
                        "one downloading or waiting for a download slot is not silent "
                        f"(default {defaults.device_timeout_s:.0f})")
    p.add_argument("--gate-min-agreement", type=float, default=defaults.gate_min_agreement, metavar="F",
                   help="share of the running engine's detections a candidate must reproduce in its shadow test "
                        f"(default {defaults.gate_min_agreement})")
    p.add_argument("--gate-window", type=int, default=defaults.gate_window_s, metavar="S",
                   help=f"seconds a candidate runs in shadow before its verdict (default {defaults.gate_window_s})")
    p.add_argument("--max-artifact-mb", type=int, default=defaults.max_artifact_mb, metavar="MB",
                   help=f"refuse larger uploads (default {defaults.max_artifact_mb})")
    p.add_argument("--fetch-streams", type=int, default=defaults.fetch_streams, metavar="N",
                   help="artifact downloads served at once; more wait their turn, first come first served "
                        f"(default {defaults.fetch_streams}; memory grows with N x the chunk size)")
    p.add_argument("--fetch-stream-s", type=float, default=defaults.fetch_stream_s, metavar="S",
                   help="a download's turn: after S seconds its stream ends and the device resumes from there "
                        f"(default {defaults.fetch_stream_s:g})")


def rollout_options(args) -> RolloutOptions:
    if args.rollout_device_timeout <= 0:
        raise CliError(f"--rollout-device-timeout must be > 0, got {args.rollout_device_timeout}")
    if not 0 <= args.gate_min_agreement <= 1:
        raise CliError(f"--gate-min-agreement must be within 0..1, got {args.gate_min_agreement}")
    if args.gate_window < 1 or args.max_artifact_mb < 1 or args.fetch_streams < 1:
        raise CliError("--gate-window, --max-artifact-mb and --fetch-streams must be >= 1")
    if args.fetch_stream_s <= 0:
        raise CliError(f"--fetch-stream-s must be > 0, got {args.fetch_stream_s}")
    return RolloutOptions(args.artifacts_dir, args.signing_key, args.rollout_device_timeout,
                          args.gate_min_agreement, args.gate_window, args.max_artifact_mb,
                          args.fetch_streams, args.fetch_stream_s)


# ---- artifacts ----

def manifest_for_push(path: Path, manifest_path: Path | None, name: str | None,
                      labels: dict[str, str]) -> types_pb2.ArtifactManifest:
    """The wire manifest from the file's models manifest (given, beside it, or read from an ONNX file).

    The models manifest travels whole in the label `models.manifest`, so it is signed with the
    rest and a device installs exactly what was pushed."""
    from edgefleet.models.errors import ModelError
    from edgefleet.models.manifest import MANIFEST_LABEL, manifest_for_onnx, parse_manifest, to_json
    from edgefleet.models.manifest import manifest_path as sidecar

    try:
        if manifest_path is not None:
            manifest = parse_manifest(manifest_path.read_text(), str(manifest_path))
        elif sidecar(path).is_file():
            manifest = parse_manifest(sidecar(path).read_text(), str(sidecar(path)))
        elif path.suffix.lower() == ".onnx":
            manifest = manifest_for_onnx(path)
        else:
            raise CliError(f"{path} has no manifest beside it; give one with --manifest "
                           "(`edgefleet model manifest` writes it for ONNX files)")
    except (OSError, ModelError) as err:
        raise CliError(str(err)) from err
    return types_pb2.ArtifactManifest(
        name=name or path.stem, format=manifest.format, precision=manifest.precision,
        input_width=manifest.input_width, input_height=manifest.input_height, class_names=manifest.class_names,
        tensorrt_version=manifest.tensorrt_version or "", gpu_compute_capability=manifest.gpu_compute_capability or "",
        labels={**labels, MANIFEST_LABEL: to_json(manifest)},
    )


class Progress:
    """`pushing NAME  12.0/35.0 MB  34%  8.1 MB/s` on one line of stderr (a line per quarter when piped)."""

    def __init__(self, what: str, total: int):
        self.what, self.total = what, total
        self.done = 0
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()
        self._shown = -1.0

    def add(self, n: int) -> None:
        self.done += n
        fraction = self.done / self.total if self.total else 1.0
        step = 0.01 if self.tty else 0.25
        if fraction - self._shown < step and self.done < self.total:
            return
        self._shown = fraction
        rate = self.done / max(time.monotonic() - self.started, 1e-6) / 1e6
        line = (f"{self.what}  {self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB  {fraction:4.0%}  "
                f"{rate:.1f} MB/s")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def _upload_messages(path: Path, manifest: types_pb2.ArtifactManifest,
                     progress: Progress) -> Iterator[fleet_pb2.UploadArtifactRequest]:
    yield fleet_pb2.UploadArtifactRequest(manifest=manifest)
    with path.open("rb") as f:
        while chunk := f.read(UPLOAD_CHUNK):
            progress.add(len(chunk))
            yield fleet_pb2.UploadArtifactRequest(chunk=chunk)


def bundle_for_push(path: Path, manifest: types_pb2.ArtifactManifest, work: Path) -> Path:
    """The file to upload: the model file itself, or for a model of several files (an OpenVINO IR,
    an NCNN model) their bundle (models.bundle), made in `work` once each file matches its manifest."""
    from edgefleet.models import bundle
    from edgefleet.models.errors import ModelError
    from edgefleet.models.manifest import labelled_manifest, verify_artifact

    if not bundle.is_bundled(manifest.format):
        return path
    try:
        models_manifest = labelled_manifest(manifest.labels, manifest.format)
        verify_artifact(path, models_manifest)  # the model file and every companion, whole
        return bundle.pack(path, models_manifest, work / f"{path.stem}.tar")
    except (OSError, ModelError) as err:
        raise CliError(str(err)) from err


def cmd_artifact_push(args) -> int:
    path: Path = args.file
    if not path.is_file():
        raise CliError(f"{path} does not exist")
    labels = dict(_key_values(args.label or (), "--label"))
    manifest = manifest_for_push(path, args.manifest, args.name, labels)
    with tempfile.TemporaryDirectory(prefix="edgefleet-push-") as work:
        artifact = _push(args, bundle_for_push(path, manifest, Path(work)), manifest)
    if args.json:
        print_json(artifact)
    else:
        m = artifact.manifest
        print(f"{m.sha256}  {m.name}  {m.format} {m.precision or ''} {m.input_width}x{m.input_height}  "
              f"{m.size_bytes} bytes, signed")
    return 0


def _push(args, path: Path, manifest: types_pb2.ArtifactManifest) -> types_pb2.Artifact:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(UPLOAD_CHUNK):
            digest.update(chunk)
    manifest.sha256, manifest.size_bytes = digest.hexdigest(), path.stat().st_size  # the controller re-checks both
    manifest.created.CopyFrom(timestamp(time.time()))
    progress = Progress(f"pushing {path.name}", manifest.size_bytes)
    with control_stub(args, "UploadArtifact") as stub:
        try:
            return stub.UploadArtifact(_upload_messages(path, manifest, progress), timeout=args.timeout)
        finally:
            progress.close()


def cmd_artifact_list(args) -> int:
    artifacts = _call(args, "ListArtifacts", fleet_pb2.ListArtifactsRequest()).artifacts
    if args.json:
        print_json(list(artifacts))
        return 0
    print_table([("SHA256", "NAME", "FORMAT", "INPUT", "SIZE")] + [
        (a.manifest.sha256[:16], a.manifest.name, f"{a.manifest.format} {a.manifest.precision}".strip(),
         f"{a.manifest.input_width}x{a.manifest.input_height}", f"{a.manifest.size_bytes / 1e6:.1f} MB")
        for a in artifacts
    ])
    return 0


def _resolve_artifact(args, prefix: str) -> str:
    """A full sha256 from a unique prefix of one (as `artifact list` shows)."""
    if len(prefix) == 64:
        return prefix
    matches = [a.manifest.sha256 for a in _call(args, "ListArtifacts", fleet_pb2.ListArtifactsRequest()).artifacts
               if a.manifest.sha256.startswith(prefix.lower())]
    if len(matches) != 1:
        raise CliError(f"--artifact {prefix!r} matches {len(matches)} artifacts; give more of the sha256")
    return matches[0]


# ---- rollouts ----

def cmd_rollout_create(args) -> int:
    try:
        waves = [int(w) for w in args.waves.split(",")]
    except ValueError as err:
        raise CliError(f"--waves takes percentages like 10,50,100, got {args.waves!r}") from err
    # 0 on the wire means "the controller's default": refused here rather than silently replaced
    if args.canary < 1:
        raise CliError(f"--canary must be >= 1, got {args.canary}")
    if not 0 < args.gate_fps_ratio <= 10:
        raise CliError(f"--gate-fps-ratio must be within 0..10 and above 0 (0.01 all but turns the throughput "
                       f"gate off), got {args.gate_fps_ratio:g}")
    request = fleet_pb2.CreateRolloutRequest(
        artifact_sha256=_resolve_artifact(args, args.artifact),
        select=select_text(args),
        canary=args.canary, waves_percent=waves, gate_fps_ratio=args.gate_fps_ratio, max_failures=args.max_failures,
        expect_different_detections=args.expect_different,
        on_failure=fleet_pb2.HALT if args.on_failure == "halt" else fleet_pb2.ROLLBACK,
    )
    rollout = _call(args, "CreateRollout", request)
    print(f"rollout {rollout.rollout_id} created")
    _print_rollout(rollout)
    return _follow(args, rollout.rollout_id) if args.wait else 0


def cmd_rollout_status(args) -> int:
    rollout = _call(args, "GetRollout", fleet_pb2.GetRolloutRequest(rollout_id=args.rollout))
    if args.json:
        print_json(rollout)
        return 0
    _print_rollout(rollout, devices=True)
    return _follow(args, rollout.rollout_id) if args.watch else 0


def cmd_rollout_list(args) -> int:
    rollouts = _call(args, "ListRollouts", fleet_pb2.ListRolloutsRequest()).rollouts
    if args.json:
        print_json(list(rollouts))
        return 0
    print_table([("ROLLOUT", "STATE", "ARTIFACT", "WAVE", "ACTIVE", "FAILED")] + [  # newest first
        (r.rollout_id, rollout_state_text(r.state), r.artifact_sha256[:12], _wave_text(r),
         f"{sum(w.succeeded for w in r.waves)}/{sum(w.target for w in r.waves)}", str(sum(w.failed for w in r.waves)))
        for r in rollouts
    ])
    return 0


def _rollout_action(method: str):
    def command(args) -> int:
        rollout = _call(args, method, fleet_pb2.RolloutRef(rollout_id=args.rollout, reason=args.reason or ""))
        _print_rollout(rollout)
        return 0
    return command


def _follow(args, rollout_id: str) -> int:
    """Print a line whenever the rollout moves, until it finishes; exit 0 only if it succeeded."""
    last = None
    with control_stub(args, "WatchFleet") as stub:
        for event in stub.WatchFleet(fleet_pb2.WatchFleetRequest()):
            if event.WhichOneof("body") == "message" and rollout_id in event.message:
                print(f"  {event.message}")
            if event.WhichOneof("body") != "rollout" or event.rollout.rollout_id != rollout_id:
                continue
            line = _summary(event.rollout)
            if line != last:
                print(line, flush=True)
                last = line
            if event.rollout.state in FINISHED:
                return 0 if event.rollout.state == fleet_pb2.SUCCEEDED else 1
    return 1


def _wave_text(rollout: fleet_pb2.Rollout) -> str:
    if not rollout.waves:
        return "-"
    current = next((w for w in rollout.waves if w.state != fleet_pb2.SUCCEEDED), rollout.waves[-1])
    return f"{current.index + 1}/{len(rollout.waves)}"


def rollout_state_text(state: int) -> str:
    """A rollout's (or a wave's) state in words: "running", "aborted"."""
    try:
        return fleet_pb2.RolloutState.Name(state).lower()
    except ValueError:
        return f"state {state}"


def device_state_text(device: fleet_pb2.RolloutDevice) -> str:
    """A device's state in a rollout in words: "pending" before it reported, "shadow testing",
    "rolled back", "skipped" for a device that cannot run the artifact."""
    if device.reason.startswith("skipped:"):
        return "skipped"
    if device.state == types_pb2.DeploymentStatus.STATE_UNSPECIFIED:
        return "pending"
    try:
        return types_pb2.DeploymentStatus.State.Name(device.state).lower().replace("_", " ")
    except ValueError:
        return f"state {device.state}"


def _wave_summary(rollout: fleet_pb2.Rollout, wave: fleet_pb2.Wave) -> str:
    """`wave 2: 1/2 ok, 1 rolled back (failed)`; a wave the rollout ended before is "not started"."""
    rolled_back = sum(1 for d in rollout.devices if d.wave == wave.index and not d.reason.startswith("skipped:")
                      and d.state == types_pb2.DeploymentStatus.ROLLED_BACK)
    counts = [f"{wave.succeeded}/{wave.target} ok"]
    counts += [f"{wave.failed - rolled_back} failed"] if wave.failed > rolled_back else []
    counts += [f"{rolled_back} rolled back"] if rolled_back else []
    state = rollout_state_text(wave.state)
    if wave.state == fleet_pb2.PENDING and rollout.state in FINISHED:
        state = "not started"
    return f"wave {wave.index + 1}: {', '.join(counts)} ({state})"


def _summary(rollout: fleet_pb2.Rollout) -> str:
    waves = "  ".join(_wave_summary(rollout, w) for w in rollout.waves)
    reason = f" — {rollout.reason}" if rollout.reason else ""
    return f"{rollout.rollout_id} {rollout_state_text(rollout.state)}  {waves}{reason}"


def _print_rollout(rollout: fleet_pb2.Rollout, devices: bool = False) -> None:
    print(_summary(rollout))
    if not devices:
        return
    for d in rollout.devices:
        state = device_state_text(d)
        wave = "-" if state == "skipped" else str(d.wave + 1)
        print(f"  {d.device_id:<28} wave {wave:<3} {state:<16} {d.reason}")


def _key_values(items, flag: str) -> Iterator[tuple[str, str]]:
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"{flag} takes KEY=VALUE, got {item!r}")
        yield key, value


def add_rollout_commands(sub) -> None:
    def client(parser: argparse.ArgumentParser, func, timeout: float | None = 10.0) -> argparse.ArgumentParser:
        add_connection_arguments(parser)
        parser.add_argument("--timeout", type=float, default=timeout, help="seconds to wait for the controller")
        parser.set_defaults(func=func)
        return parser

    p = sub.add_parser("artifact", help="push and list model artifacts (signed by the controller)")
    commands = p.add_subparsers(dest="artifact_command", required=True)
    c = client(commands.add_parser("push", help="upload a model file; prints its sha256"), cmd_artifact_push, None)
    c.add_argument("file", type=Path, help="the model: .onnx, .engine, .pt, or an OpenVINO .xml / NCNN .param, "
                                           "whose files beside it (.bin, .json) go with it in one bundle")
    c.add_argument("--manifest", type=Path, metavar="JSON",
                   help="its models manifest (default: FILE.manifest.json, or read from an ONNX file)")
    c.add_argument("--name", help="name shown in lists (default: the file's stem)")
    c.add_argument("--label", action="append", metavar="KEY=VALUE", help="free-form label (repeatable)")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c = client(commands.add_parser("list", help="artifacts on the controller"), cmd_artifact_list)
    c.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("rollout", help="roll an artifact out in waves gated on the devices' health")
    commands = p.add_subparsers(dest="rollout_command", required=True)
    c = client(commands.add_parser("create", help="start a rollout"), cmd_rollout_create, None)
    c.add_argument("--artifact", required=True, metavar="SHA", help="sha256 (or a unique prefix) of a pushed artifact")
    add_select_argument(c, "only the devices it matches")
    c.add_argument("--canary", type=int, default=1, metavar="N", help="devices in the first wave (default 1)")
    c.add_argument("--waves", default="100", metavar="P,P,…",
                   help="cumulative percentages of the targets after the canary, ending at 100 (default 100)")
    c.add_argument("--gate-fps-ratio", type=float, default=0.8, metavar="R",
                   help="the candidate must run at >= R x the current engine's fps in its shadow test (default 0.8)")
    c.add_argument("--max-failures", type=int, default=0, metavar="K",
                   help="devices that may fail after the canary before the rollout halts (default 0)")
    c.add_argument("--expect-different", action="store_true",
                   help="the new model is meant to detect differently: skip the agreement check")
    c.add_argument("--on-failure", choices=("rollback", "halt"), default="rollback",
                   help="when the rollout fails or is aborted: rollback sends the devices that switched back to "
                        "their previous engine, halt leaves them on the new one (default rollback)")
    c.add_argument("--wait", action="store_true", help="follow it until it finishes (exit 1 unless it succeeds)")
    for verb in ("get", "status"):
        c = client(commands.add_parser(verb, help="one rollout, per wave and per device"), cmd_rollout_status, None)
        c.add_argument("rollout", metavar="ID", help="its id, or a unique prefix of it")
        c.add_argument("--watch", action="store_true", help="follow it until it finishes")
        c.add_argument("--json", action="store_true", help="machine-readable output")
    c = client(commands.add_parser("list", help="all rollouts, newest first"), cmd_rollout_list)
    c.add_argument("--json", action="store_true", help="machine-readable output")
    for verb, method in (("pause", "PauseRollout"), ("resume", "ResumeRollout"), ("abort", "AbortRollout")):
        c = client(commands.add_parser(verb, help=f"{verb} a rollout"), _rollout_action(method))
        c.add_argument("rollout", metavar="ID", help="its id, or a unique prefix of it")
        c.add_argument("--reason", help="recorded with the event")
