"""`edge-agent`: the device daemon."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from .config import AgentConfig
from .errors import AgentError, ConfigError
from .flags import add_config_flags, add_flag, parse_args

logger = logging.getLogger("edge_agent")


def cmd_probe(args) -> int:
    from edgefleet.adaptive.probe import probe

    profile = probe(args.root)
    if args.json:
        print(json.dumps(profile.to_dict(), indent=2))
    else:
        for key, value in profile.to_dict().items():
            print(f"{key:>22}: {value}")
    return 0


def cmd_plan(args) -> int:
    from edgefleet.adaptive.plan import format_plan_report
    from edgefleet.adaptive.probe import probe

    from .build import make_plan, model_candidates

    report = make_plan(probe(), models=model_candidates(args.models_dir, None), source=args.source,
                       calibrate=args.calibrate, frames=args.frames, target_fps=args.target_fps,
                       streams=args.streams, state_dir=args.state_dir, min_agreement=args.min_agreement)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_plan_report(report))
    return 0


def cmd_run(args) -> int:
    """Detect and track on the sources until they end (or SIGTERM), then drain and print a JSON summary."""
    from .build import build_agent

    built = build_agent(args.config)
    agent = built.agent
    if agent is None:  # AgentConfig requires --controller without --listen
        raise ConfigError("run needs --controller")
    signal.signal(signal.SIGTERM, lambda *_: agent.stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stop_event.set())
    try:
        result = agent.run()
    finally:
        built.close()
    print(json.dumps(agent.summary(result)), flush=True)
    agent.check_restart()  # exit 75 for systemd after a restart command in exit mode (agent.restart)
    agent.check_delivered(result)  # after the summary: what ran is reported either way
    return 0


def cmd_serve(args) -> int:
    """The inference service (agent/inference.py), beside local sources or instead of them.

    With --controller, the agent (as `run` builds it) owns the outbox, link and health; the served
    streams' records and counters join its own. Without, the service answers clients only."""
    import os
    import threading

    from .build import build_agent
    from .inference_server import InferenceServer

    config = args.config
    token = config.token or os.environ.get("EDGEFLEET_INFERENCE_TOKEN") or None
    built = build_agent(config)
    agent, core = built.agent, built.core
    if core is None:  # a config with --listen always has its core
        raise ConfigError("serve needs --listen")
    server = InferenceServer(core, config.listen, token)
    try:
        port = server.start()
    except OSError as err:
        built.close()
        raise ConfigError(f"--listen {config.listen}: {err}") from err
    print(json.dumps({"serving": f"{config.listen.rpartition(':')[0]}:{port}"}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def shutdown() -> None:
        stop.wait()
        server.stop(grace=config.grace)  # calls finish, their records reach the feed
        if agent is not None:
            agent.stop_event.set()  # then the agent commits them and drains

    stopper = threading.Thread(target=shutdown, name="serve-shutdown")
    stopper.start()
    summary: dict = {}
    result = None
    try:
        if agent is not None:
            result = agent.run()
            summary = {key: value for key, value in agent.summary(result).items()
                       if key in ("device_id", "frames", "detections", "acked_sequence", "outbox_left")}
        else:
            while not stop.wait(1.0):
                pass
    finally:
        stop.set()
        stopper.join()
        built.close()
    stats = core.batcher.stats
    summary.update(served_frames=core.frames_served, served_dropped=core.dropped_total(), batches=stats.batches,
                   mean_batch=round(stats.items / stats.batches, 2) if stats.batches else 0.0)
    print(json.dumps(summary), flush=True)
    if agent is not None and result is not None:
        agent.check_restart()
        agent.check_delivered(result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description="edgefleet device agent")
    add_flag(parser, "log_level", help="default info")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="detect and track on a source, report to the controller")
    add_config_flags(p, "run")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("plan", help="choose model, input size and detect interval for this device")
    p.add_argument("--json", action="store_true")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="model artifacts (with their manifests) to consider besides the bundled model "
                        "(default $EDGEFLEET_CACHE/models or ~/.cache/edgefleet/models)")
    p.add_argument("--source", default=None,
                   help="source to calibrate on (default var/samples/vtest.avi if present, else synthetic frames)")
    p.add_argument("--frames", type=int, default=5, metavar="N", help="frames to calibrate on (default 5)")
    for name in ("calibrate", "target_fps", "min_agreement"):  # run's planning flags, planning being the job here
        field = AgentConfig.model_fields[name]
        add_flag(p, name, default=field.default, help=(field.description or "").removeprefix("with --auto-plan: "))
    p.add_argument("--streams", type=int, default=1, metavar="N", help="streams batched per detector call (default 1)")
    p.add_argument("--state-dir", type=Path, default=Path("var/agent"),
                   help="the calibration cache (calibration.json) lives here (default var/agent)")
    p.set_defaults(func=cmd_plan, checked=("calibrate", "target_fps", "min_agreement"))

    p = sub.add_parser("probe", help="print what the agent knows about this machine")
    p.add_argument("--json", action="store_true")
    p.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("serve", help="serve edgefleet.v1.InferenceService (Detect, DetectStream) with this "
                                     "device's detector, beside or instead of local sources")
    add_config_flags(p, "serve")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)  # run, serve: args.config, from the flags and the --config file
    config = getattr(args, "config", None)
    level = config.log_level if config is not None else getattr(args, "log_level", "info")
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for note in config.notes() if config is not None else []:
        logger.warning("%s", note)
    try:
        return args.func(args)
    except AgentError as err:
        print(f"edge-agent: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
