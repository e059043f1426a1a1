"""Which engine the agent runs (`<state_dir>/engines/active.json`), and how a deployment stands.

`ActiveEngines` keeps the current engine, the one before it and the crash-loop counter; the
engine manager (agent.engines) changes it on the loop thread only. `DeploymentStatus` is what a
deployment reports (edgefleet.v1.DeploymentStatus, sent through agent.convert).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

FINAL_STATES = ("ACTIVE", "FAILED", "ROLLED_BACK")
STATES = ("DOWNLOADING", "VERIFYING", "BUILDING", "WARMING_UP", "SHADOW_TESTING") + FINAL_STATES


@dataclass(frozen=True)
class DeploymentStatus:
    """edgefleet.v1.DeploymentStatus; `state` is the enum's name ("ACTIVE", ...)."""

    rollout_id: str
    artifact_sha256: str
    state: str
    progress: float = 0.0
    reason: str = ""
    gate_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EngineRef:
    """An engine the agent ran or runs. sha256 "" and path "": the --model (or bundled) model."""

    sha256: str
    path: str
    rollout_id: str = ""
    name: str = ""


class ActiveEngines:
    """`<state_dir>/engines/active.json`, changed on the loop thread only:

        {"current": {"sha256", "path", "rollout_id", "name"} | null,   null: the --model/bundled one
         "previous": {...} | null,                                     what a rollback returns to
         "swapped_at": unix time of the last swap | null,
         "confirmed": bool,                                            the current engine proved healthy
         "unconfirmed_starts": int}

    Crash-loop rule: every agent start while the current engine is unconfirmed counts one start
    (`on_start`). The engine is confirmed after `confirm_after_s` seconds of running (the manager's
    `tick`) or a clean exit. When the count reaches `crash_loop_starts` (3) at a start, the agent
    goes back to the previous engine and reports ROLLED_BACK ("crash loop after swap: ...").
    """

    def __init__(self, path: Path, confirm_after_s: float = 60.0, crash_loop_starts: int = 3):
        self.path, self.confirm_after_s, self.crash_loop_starts = Path(path), confirm_after_s, crash_loop_starts
        self.current: EngineRef | None = None
        self.previous: EngineRef | None = None
        self.swapped_at: float | None = None
        self.confirmed = True
        self.unconfirmed_starts = 0
        self.startup_status: DeploymentStatus | None = None
        """A rollback `on_start` did, to report once the Session is up."""
        self.load()

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as err:
            logger.error("%s is unreadable (%s); starting with the --model engine", self.path, err)
            return
        try:
            self.current = EngineRef(**data["current"]) if data.get("current") else None
            self.previous = EngineRef(**data["previous"]) if data.get("previous") else None
            self.swapped_at = data.get("swapped_at")
            self.confirmed = bool(data.get("confirmed", True))
            self.unconfirmed_starts = int(data.get("unconfirmed_starts", 0))
        except (TypeError, KeyError, ValueError) as err:
            logger.error("%s is malformed (%r); starting with the --model engine", self.path, err)
            self.current = self.previous = None

    def to_dict(self) -> dict:
        return {"current": asdict(self.current) if self.current else None,
                "previous": asdict(self.previous) if self.previous else None,
                "swapped_at": self.swapped_at, "confirmed": self.confirmed,
                "unconfirmed_starts": self.unconfirmed_starts}

    def save(self) -> None:
        from edgefleet.models.manifest import atomic_write_bytes

        atomic_write_bytes(self.path, json.dumps(self.to_dict(), indent=2).encode())

    def on_start(self) -> DeploymentStatus | None:
        """Count this start; after `crash_loop_starts` unconfirmed ones, go back to the previous engine."""
        if self.current is None or self.confirmed:
            return None
        self.unconfirmed_starts += 1
        if self.unconfirmed_starts < self.crash_loop_starts:
            logger.warning("engine %s is unconfirmed: start %d of %d before it is rolled back",
                           self.current.name, self.unconfirmed_starts, self.crash_loop_starts)
            self.save()
            return None
        failed = self.current
        reason = (f"crash loop after swap: {self.unconfirmed_starts} starts without "
                  f"{self.confirm_after_s:.0f} s of healthy running")
        self.fall_back(reason)
        self.startup_status = DeploymentStatus(failed.rollout_id, failed.sha256, "ROLLED_BACK", 1.0, reason)
        return self.startup_status

    def fall_back(self, reason: str) -> None:
        """Make the previous engine current (the --model one when it has no file any more)."""
        target = self.previous
        if target is not None and (not target.sha256 or not Path(target.path).is_file()):
            target = None
        logger.error("engine %s: %s; going back to %s", self.current.name if self.current else "?", reason,
                     target.name if target else "the --model engine")
        self.current, self.previous = target, None
        self.swapped_at, self.confirmed, self.unconfirmed_starts = time.time(), True, 0
        self.save()

    def swapped(self, new: EngineRef | None, keep_previous: bool = True) -> None:
        """`new` runs now (None: the --model one); it is unconfirmed until it has run long enough."""
        before = self.current or EngineRef("", "", "", "")
        self.previous = before if keep_previous else None
        self.current = new
        self.swapped_at, self.confirmed, self.unconfirmed_starts = time.time(), new is None, 0
        self.save()

    def confirm(self) -> None:
        if not self.confirmed:
            self.confirmed, self.unconfirmed_starts = True, 0
            self.save()
            logger.info("engine %s confirmed healthy", self.current.name if self.current else "--model")
