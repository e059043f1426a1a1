"""The engine manager: fetch, verify, build, warm up, shadow-test, swap in and roll back model artifacts.

A deployment runs on one worker thread, never on the detect loop:

    VERIFYING (signature, device fit) -> DOWNLOADING (resumable) -> VERIFYING (size, sha256, sidecar)
      -> BUILDING (ONNX -> TensorRT, devices with TensorRT only) -> WARMING_UP (load + warm-up)
      -> SHADOW_TESTING (the candidate runs on sampled frames beside the current engine)
      -> ACTIVE (swapped in between two ticks of the loop) | FAILED (the current engine stays)

Files under `<state_dir>/engines/` (artifacts and downloads: agent.artifacts):

    active.json                  which engine runs now, the one before it, the crash-loop counter
                                 (agent.active_engines)
    deployments.json             the final status of each rollout this device saw (idempotent replays)

Threads: the loop thread calls `deploy`, `rollback`, `observe`, `take_swap`, `swapped`, `tick`; it
alone changes `active.json`. The worker thread downloads, loads and shadow-tests, and hands a
warmed-up detector back through `take_swap`. Status reports go out from either thread through the
`report` callback, which must be thread-safe (Link.send_deployment is).

Only one deployment runs at a time: a deploy of another rollout that arrives meanwhile is refused
at once with FAILED("another deployment in progress ..."), so the controller's rollout state
machine sees it immediately instead of a device that silently queues work.

`cancel(rollout_id, reason)` (the controller's CancelDeployment, sent when a rollout is aborted or
fails) stops that rollout's download, build, warm-up or shadow test, drops its swap if one is
queued, and refuses the rollout's deploys from then on: no swap to it happens after a cancel.
"""
from __future__ import annotations

import contextlib
import json
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .active_engines import ActiveEngines, DeploymentStatus, EngineRef
from .artifacts import (
    SHA256,
    ArtifactInfo,
    Downloader,
    Fetch,
    SignedArtifact,
    build_engine_cached,
    check_device,
    install_sidecar,
    needs_build,
    verify_artifact_signature,
)
from .errors import EngineError, GateFailed
from .shadow import CurrentTurn, GateParams, ShadowGate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeployRequest:
    command_id: str
    rollout_id: str
    artifact: SignedArtifact
    gate: GateParams = GateParams()


def _check_stop(stop: threading.Event, before: str) -> None:
    if stop.is_set():
        raise EngineError(f"cancelled before {before}")


@contextlib.contextmanager
def slot_turn(slot) -> Iterator[Any]:
    """The loop's detector slot (agent.loop.DetectorSlot) held for a shadow test's turn: yields the
    detector the loop runs, which does not run meanwhile (the loop waits on the slot's lock)."""
    with slot.lock:
        yield slot.detector


@dataclass(frozen=True)
class CancelDeployment:
    """The controller's CancelDeployment: stop what runs for the rollout and never swap to it."""
    command_id: str
    rollout_id: str
    reason: str = ""


# ---- the manager ----

@dataclass
class Swap:
    """A warmed-up detector for the loop to swap in between ticks, then hand back to `swapped`."""

    kind: Literal["deploy", "rollback"]
    detector: Any
    ref: EngineRef | None          # what becomes current; None: the --model engine
    status: DeploymentStatus       # reported once swapped (ACTIVE or ROLLED_BACK)
    plan_reason: str
    command_id: str = ""
    replaces: EngineRef | None = None   # rollback: the engine it expects to replace

    @property
    def artifact_sha256(self) -> str:
        return self.ref.sha256 if self.ref else ""

    @property
    def name(self) -> str:
        return self.ref.name if self.ref else ""


class EngineManager:
    """Runs deployments and rollbacks on one worker thread; see the module docstring for threads.

    `load(path)` returns a warmed-up Detector (it runs on the worker thread); `report(status)` and
    `result(command_id, ok, error)` send upstream (thread-safe); `public_key()` is the controller's
    Ed25519 key from the identity (b"" when unknown); `latency_budget_ms()` the plan's budget (0: none);
    `fallback_model` what a rollback to the --model engine loads (None: the bundled model).
    `build(onnx_path, info)` makes a TensorRT engine on devices that have TensorRT (`needs_build`).
    `current_turn()` enters the loop's detector slot and yields its detector (`slot_turn`): the
    shadow test times the current engine and the candidate in turns on the same frames; without it
    the gate compares the candidate with the loop's own timings (scripted tests only).
    """

    def __init__(self, state_dir: Path, *, fetch: Fetch, load: Callable[[Path], Any],
                 report: Callable[[DeploymentStatus], None],
                 result: Callable[[str, bool, str], None] = lambda command_id, ok, error: None,
                 public_key: Callable[[], bytes] = lambda: b"", active: ActiveEngines | None = None,
                 fallback_model: Path | None = None, caps=None,
                 build: Callable[[Path, ArtifactInfo], Path] = build_engine_cached,
                 latency_budget_ms: Callable[[], float] = lambda: 0.0, sample_every: int = 5,
                 publish_threshold: float = 0.25, gate_min_samples: int = 20, gate_max_samples: int = 300,
                 confirm_after_s: float | None = None, download_backoff_s: float = 0.5,
                 download_max_bytes_per_s: float = 0.0, progress_every_s: float = 1.0,
                 current_turn: CurrentTurn | None = None):
        if sample_every < 1:
            raise EngineError(f"sample_every must be >= 1, got {sample_every}")
        self.root = Path(state_dir) / "engines"
        self.active = active or ActiveEngines(self.root / "active.json")
        self.confirm_after_s = self.active.confirm_after_s if confirm_after_s is None else confirm_after_s
        self.fetch, self.load, self._report_cb, self._result_cb = fetch, load, report, result
        self.public_key, self.fallback_model, self.build = public_key, fallback_model, build
        self.latency_budget_ms, self.sample_every = latency_budget_ms, sample_every
        self.publish_threshold = publish_threshold
        self.gate_min_samples, self.gate_max_samples = gate_min_samples, gate_max_samples
        self.download_backoff_s, self.progress_every_s = download_backoff_s, progress_every_s
        self.download_max_bytes_per_s = download_max_bytes_per_s
        self.current_turn = current_turn
        self._caps = caps
        self._cancelled: dict[str, str] = {}
        """rollout id -> why it was cancelled here: its deploys are refused from then on."""
        self._lock = threading.Lock()
        self._statuses: dict[str, DeploymentStatus] = self._load_statuses()
        self._latest: DeploymentStatus | None = None
        self._in_progress: DeployRequest | None = None
        self._job_stop = threading.Event()
        self._swaps: queue.SimpleQueue[Swap] = queue.SimpleQueue()
        self._executor: ThreadPoolExecutor | None = None
        self.gate: ShadowGate | None = None
        """The shadow test running now; the loop feeds it through `observe`."""
        self._detected = 0
        self._running_since = time.monotonic()
        if self.active.startup_status is not None:
            self._report(self.active.startup_status)

    @property
    def caps(self):
        if self._caps is None:
            from edgefleet.models.manifest import probe_device

            self._caps = probe_device()
        return self._caps

    @property
    def busy(self) -> bool:
        return self._in_progress is not None

    # ---- status bookkeeping ----

    def _load_statuses(self) -> dict[str, DeploymentStatus]:
        try:
            data = json.loads((self.root / "deployments.json").read_text())
            return {rid: DeploymentStatus(**s) for rid, s in data.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError) as err:
            logger.error("deployments.json is unreadable (%r); forgetting past rollouts", err)
            return {}

    def _save_statuses(self) -> None:
        final = {rid: s.to_dict() for rid, s in self._statuses.items() if s.final}
        final = dict(list(final.items())[-50:])
        from edgefleet.models.manifest import atomic_write_bytes

        atomic_write_bytes(self.root / "deployments.json", json.dumps(final, indent=2).encode())

    def _report(self, status: DeploymentStatus) -> None:
        with self._lock:
            self._latest = status
            if status.rollout_id:
                self._statuses[status.rollout_id] = status
                if status.final:
                    try:
                        self._save_statuses()
                    except OSError as err:
                        logger.error("cannot save deployments.json: %s", err)
        log = logger.warning if status.state in ("FAILED", "ROLLED_BACK") else logger.info
        log("rollout %s (%s): %s%s%s", status.rollout_id or "-", status.artifact_sha256[:12], status.state,
            f" {status.progress:.0%}" if not status.final else "", f": {status.reason}" if status.reason else "")
        try:
            self._report_cb(status)
        except Exception:
            logger.exception("reporting a deployment status failed")

    def latest_status(self) -> DeploymentStatus | None:
        """The last status reported (any thread): what the link re-sends after each (re)connect."""
        with self._lock:
            return self._latest

    def status_of(self, rollout_id: str) -> DeploymentStatus | None:
        with self._lock:
            return self._statuses.get(rollout_id)

    # ---- loop thread ----

    def deploy(self, request: DeployRequest) -> None:
        """Start a deployment, or answer a replayed one (the controller resends on every reconnect)."""
        info, rid = request.artifact.info, request.rollout_id
        if rid in self._cancelled:
            self._report(DeploymentStatus(rid, info.sha256, "FAILED", 0.0, self._cancelled[rid]))
            return
        prior = self.status_of(rid)
        if prior is not None and prior.final and prior.artifact_sha256 == info.sha256:
            logger.info("rollout %s was already %s here; reporting it again", rid, prior.state)
            self._report(prior)
            return
        running = self._in_progress
        if running is not None:
            if running.rollout_id == rid and running.artifact.info.sha256 == info.sha256:
                logger.info("rollout %s is already in progress; ignoring the duplicate", rid)
                return
            self._report(DeploymentStatus(rid, info.sha256, "FAILED", 0.0,
                                          f"another deployment in progress (rollout {running.rollout_id}, "
                                          f"{running.artifact.info.short}); deploy again when it has finished"))
            return
        current = self.active.current
        if current is not None and current.sha256 == info.sha256:
            self.active.current = replace(current, rollout_id=rid)
            self.active.save()
            self._report(DeploymentStatus(rid, info.sha256, "ACTIVE", 1.0, "already running this artifact"))
            return
        self._in_progress = request
        self._job_stop = threading.Event()
        self._submit(self._run_deploy, request, self._job_stop)

    def cancel(self, rollout_id: str, reason: str = "") -> str:
        """Stop what runs for the rollout (download, build, warm-up, shadow test) and never swap to it.

        The worker checks the stop event under the lock before it queues a swap, so either the
        swap is queued now (and dropped here) or it never will be. An engine already swapped in
        stays: going back is a rollback, which the controller sends on its own. Returns what it did."""
        why = f"cancelled: {reason}" if reason else "cancelled by the controller"
        with self._lock:
            self._cancelled[rollout_id] = why
            running = self._in_progress
            if running is not None and running.rollout_id == rollout_id:
                self._job_stop.set()
        self._drop_pending_swaps(why, rollout_id)
        stopped = running is not None and running.rollout_id == rollout_id
        done = f"stopped the deployment of rollout {rollout_id}" if stopped else f"rollout {rollout_id} refused here"
        logger.warning("rollout %s: %s (%s)", rollout_id, why, done)
        return done

    def rollback(self, command_id: str, reason: str = "") -> None:
        """Go back to the previous engine; cancels a deployment in progress first."""
        with self._lock:
            self._job_stop.set()  # a deploy job checks this under the lock before it queues its swap
        self._drop_pending_swaps("cancelled: a rollback was requested")
        previous, current = self.active.previous, self.active.current
        if previous is None:
            self._result(command_id, False, "no previous engine to roll back to")
            return
        self._submit(self._run_rollback, command_id, reason, previous, current)

    def observe(self, frames: list[np.ndarray], detections: list, inference_ms: float) -> None:
        """After each detector call: hand every `sample_every`-th detected frame to the shadow test."""
        gate = self.gate
        if gate is None or not frames:
            return
        for frame, dets in zip(frames, detections):
            self._detected += 1
            if self._detected % self.sample_every == 0:
                gate.offer(frame, dets, inference_ms / len(frames))

    def take_swap(self) -> Swap | None:
        """A detector ready to swap in now, if any; the caller swaps it in, then calls `swapped`."""
        try:
            swap = self._swaps.get_nowait()
        except queue.Empty:
            return None
        if swap.kind == "rollback" and self.active.current != swap.replaces:
            swap.detector.close()
            self._result(swap.command_id, False, "the engine changed while the rollback loaded; send it again")
            return None
        return swap

    def swapped(self, swap: Swap, now: float | None = None) -> None:
        """The loop now runs `swap.detector`: record it (active.json), report, confirm timer restarts."""
        self._running_since = time.monotonic() if now is None else now
        if swap.kind == "deploy":
            self.active.swapped(swap.ref)
            self._in_progress = None
        else:
            self.active.current, self.active.previous = swap.ref, None
            self.active.swapped_at, self.active.confirmed, self.active.unconfirmed_starts = time.time(), True, 0
            self.active.save()
        self._report(swap.status)
        if swap.command_id:
            self._result(swap.command_id, True, "")
        self._collect_garbage()

    def tick(self, now: float) -> None:
        """Between ticks: confirm the current engine once it ran `confirm_after_s` without a crash."""
        if not self.active.confirmed and now - self._running_since >= self.confirm_after_s:
            self.active.confirm()

    def close(self, clean: bool = False) -> None:
        """Stop the worker (cancels a deployment in progress); a clean exit confirms the current engine."""
        with self._lock:
            self._job_stop.set()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._drop_pending_swaps("cancelled: the agent stopped")
        if clean:
            self.active.confirm()

    # ---- worker thread ----

    def _submit(self, fn, *args) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._executor.submit(fn, *args)

    def _result(self, command_id: str, ok: bool, error: str) -> None:
        if not command_id:
            return
        try:
            self._result_cb(command_id, ok, error)
        except Exception:
            logger.exception("reporting a command result failed")

    def _drop_pending_swaps(self, reason: str, rollout_id: str | None = None) -> None:
        """Drop the queued swaps (only the deploy of `rollout_id` when given), saying why."""
        kept = []
        while True:
            try:
                swap = self._swaps.get_nowait()
            except queue.Empty:
                break
            ours = swap.kind == "deploy" and swap.ref is not None and swap.ref.rollout_id == rollout_id
            if rollout_id is not None and not ours:
                kept.append(swap)
                continue
            swap.detector.close()
            if swap.kind == "deploy":
                self._in_progress = None
                self._report(replace(swap.status, state="FAILED", reason=reason, progress=0.0))
            else:
                self._result(swap.command_id, False, reason)
        for swap in kept:
            self._swaps.put(swap)

    def _run_deploy(self, request: DeployRequest, stop: threading.Event) -> None:
        info, rid = request.artifact.info, request.rollout_id
        detector = None

        def status(state: str, progress: float = 0.0, reason: str = "", metrics: dict | None = None) -> None:
            self._report(DeploymentStatus(rid, info.sha256, state, progress, reason, dict(metrics or {})))

        try:
            path = self._fetch_and_build(request, stop, status)
            status("WARMING_UP")
            try:
                detector = self.load(path)
            except Exception as err:
                raise EngineError(f"loading {info.short} failed: {err}") from err
            _check_stop(stop, "warming up")
            verdict = self._shadow_test(request, detector, stop, status)
            swap = Swap("deploy", detector, EngineRef(info.sha256, str(path), rid, Path(info.name).stem or info.name),
                        DeploymentStatus(rid, info.sha256, "ACTIVE", 1.0, verdict.reason, verdict.metrics),
                        f"rollout {rid}")
            with self._lock:
                _check_stop(stop, "the swap")
                self._swaps.put(swap)  # the loop swaps it in between two ticks, then calls swapped()
            detector = None
        except Exception as err:
            if not isinstance(err, EngineError):
                logger.exception("deployment %s failed", rid)
            reason = str(err) if isinstance(err, EngineError) else f"{type(err).__name__}: {err}"
            if stop.is_set():
                reason = self._cancelled.get(rid) or (reason if "cancel" in reason else f"cancelled: {reason}")
            if detector is not None:
                detector.close()
            self._in_progress = None
            status("FAILED", 0.0, reason, getattr(err, "metrics", None))

    def _fetch_and_build(self, request: DeployRequest, stop: threading.Event, status) -> Path:
        """VERIFYING, DOWNLOADING, VERIFYING, BUILDING: the engine's file, ready to load."""
        info = request.artifact.info
        info.check()
        status("VERIFYING")
        verify_artifact_signature(self.public_key(), request.artifact)
        check_device(info, self.caps)
        status("DOWNLOADING")
        downloader = Downloader(self.root, self.fetch, backoff_s=self.download_backoff_s, stop=stop,
                                max_bytes_per_s=self.download_max_bytes_per_s)
        path = downloader.download(info, self._throttled(lambda fraction: status("DOWNLOADING", fraction)))
        _check_stop(stop, "the download")
        status("VERIFYING", 0.5)  # size and sha256 were checked as the bytes arrived
        install_sidecar(path, info)
        if needs_build(info, self.caps):
            status("BUILDING")
            path = self.build(path, info)
            _check_stop(stop, "the engine build")
        return path

    def _shadow_test(self, request: DeployRequest, detector, stop: threading.Event, status):
        """SHADOW_TESTING: the gate's verdict on the candidate; raises GateFailed when it fails."""
        status("SHADOW_TESTING")
        gate = ShadowGate(detector, request.gate, latency_budget_ms=self.latency_budget_ms(),
                          score_threshold=self.publish_threshold, min_samples=self.gate_min_samples,
                          max_samples=self.gate_max_samples, current_turn=self.current_turn)
        self.gate = gate
        try:
            verdict = gate.run(stop, self._throttled(lambda fraction: status("SHADOW_TESTING", fraction)))
        finally:
            self.gate = None
        _check_stop(stop, "the shadow test's verdict")
        if not verdict.passed:
            raise GateFailed(f"shadow test failed: {verdict.reason}", verdict.metrics)
        return verdict

    def _run_rollback(self, command_id: str, reason: str, target: EngineRef, replaces: EngineRef | None) -> None:
        failed = replaces or EngineRef("", "", "", "")
        try:
            if target.path:
                path = Path(target.path)
            elif self.fallback_model is not None:
                path = self.fallback_model
            else:
                from edgefleet.models.bundled import default_model

                path = default_model()
            detector = self.load(path)
        except Exception as err:  # noqa: BLE001 - the running engine stays; the operator hears why
            self._result(command_id, False, f"loading the previous engine failed: {err}")
            return
        why = f"rollback command: {reason}" if reason else "rollback command"
        self._swaps.put(Swap("rollback", detector, target if target.sha256 else None,
                             DeploymentStatus(failed.rollout_id, failed.sha256, "ROLLED_BACK", 1.0, why),
                             why, command_id, replaces))

    def _throttled(self, send: Callable[[float], None]) -> Callable[..., None]:
        """Progress callback reporting at most every 10 % or `progress_every_s`, whichever comes first."""
        last = {"at": 0.0, "fraction": -1.0}

        def update(done: float, total: float | None = None) -> None:
            fraction = done / total if total else float(done)
            now = time.monotonic()
            if fraction - last["fraction"] >= 0.1 or now - last["at"] >= self.progress_every_s:
                last.update(at=now, fraction=fraction)
                send(min(1.0, fraction))

        return update

    def _collect_garbage(self) -> None:
        """Delete engine folders that are neither current nor previous (keeps staging/ for resumes)."""
        keep = {r.sha256 for r in (self.active.current, self.active.previous) if r is not None and r.sha256}
        try:
            folders = [p for p in self.root.iterdir() if p.is_dir() and SHA256.fullmatch(p.name)]
        except OSError:
            return
        for folder in folders:
            if folder.name not in keep:
                shutil.rmtree(folder, ignore_errors=True)
