"""`edge-agent`: the device daemon."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from .errors import AgentError, ConfigError

logger = logging.getLogger("edge_agent")


def _controller(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"--controller must be HOST:PORT, got {value!r}")
    return value


def cmd_probe(args) -> int:
    from adaptive.probe import probe

    profile = probe(args.root)
    if args.json:
        print(json.dumps(profile.to_dict(), indent=2))
    else:
        for key, value in profile.to_dict().items():
            print(f"{key:>22}: {value}")
    return 0


def cmd_run(args) -> int:
    from adaptive.probe import probe
    from models import load_default_detector
    from models.errors import ModelError

    from .runner import Agent, RunOptions
    from .sources import open_source

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    options = RunOptions(
        controller=args.controller, sources=args.source, state_dir=args.state_dir,
        enroll_key=args.enroll_key, name=args.name or "", stream_ids=args.stream_id or [],
        max_frames=args.max_frames, loop=args.loop, detect_interval=args.detect_interval,
        motion_threshold=args.motion_gate,
        drain_timeout_s=args.drain_timeout,
    )
    for spec in options.sources:
        open_source(spec)  # fail on a bad source before loading the model
    try:
        detector = load_default_detector(cache_dir=args.models_dir, intra_op_threads=args.threads)
    except ModelError as err:
        raise ConfigError(f"model: {err}") from err
    w, h = detector.input_size
    plan = {"model": "yolov3-tiny-coco", "backend": "onnxruntime", "precision": "fp32",
            "input_width": w, "input_height": h, "batch": len(options.sources),
            "detect_interval": options.detect_interval,
            "reason": "default model; adaptive planning not enabled"}
    agent = Agent(options, detector, open_source, probe().to_dict(), plan)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stop_event.set())
    result = agent.run()
    summary = {
        "device_id": agent.link.identity.device_id if agent.link.identity else None,
        "streams": {s.stream_id: s.frames for s in agent.streams},
        "frames": result.frames, "detections": result.detections,
        "seconds": round(result.seconds, 2), "fps": round(result.fps, 2),
        "inference_ms_p50": round(result.inference_ms_p50, 2),
        "acked_sequence": agent.link.acked_sequence, "outbox_left": result.outbox_left,
    }
    print(json.dumps(summary), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description="edgefleet device agent")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="detect and track on a source, report to the controller")
    p.add_argument("--controller", required=True, type=_controller, metavar="HOST:PORT")
    p.add_argument("--source", required=True, action="append",
                   help="video file, image folder, camera index (0), rtsp:// or http:// URL, or "
                        "synthetic://640x480?objects=5; repeat for several streams (batched into one detector call)")
    p.add_argument("--state-dir", type=Path, default=Path("var/agent"),
                   help="identity and the durable outbox live here (default var/agent)")
    p.add_argument("--enroll-key", help="enrollment key; needed on the first run only")
    p.add_argument("--name", help="name to enroll under (default: hostname)")
    p.add_argument("--stream-id", action="append",
                   help="id of each --source in reports, in the same order (default cam0, cam1, ...)")
    p.add_argument("--max-frames", type=int, default=0, metavar="N",
                   help="stop each stream after N frames (0: at the source's end)")
    p.add_argument("--detect-interval", type=int, default=1, metavar="N",
                   help="detect on every Nth frame of a stream; the tracker predicts in between (default 1)")
    p.add_argument("--motion-gate", type=float, default=0.0, metavar="T",
                   help="skip detection while the scene is static (mean pixel change below T of 255; "
                        "e.g. 2); 0 turns it off (default)")
    p.add_argument("--loop", action="store_true", help="restart a file source when it ends")
    p.add_argument("--drain-timeout", type=float, default=30.0, metavar="S",
                   help="at the end, wait up to S seconds for the controller to acknowledge everything")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="inference threads (default: ONNX Runtime's choice, one per core)")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="where converted models are cached (default $EDGEFLEET_CACHE/models or ~/.cache/edgefleet/models)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("probe", help="print what the agent knows about this machine")
    p.add_argument("--json", action="store_true")
    p.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_probe)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except AgentError as err:
        print(f"edge-agent: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
