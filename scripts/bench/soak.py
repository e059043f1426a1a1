#!/usr/bin/env python3
"""Soak: a real controller and real agents, SIGKILLed at random, checked exactly at the end.

    python scripts/bench/soak.py [--duration 600] [--agents 3] [--kill-every 20-60] [--down 0.5-3]
                                 [--controller-share P]
                                 [--video var/samples/vtest.avi] [--detect-interval 3] [--seed N]
                                 [--workdir DIR] [--out var/bench/soak.json]

1. A controller process (`python -m edgefleet.fleet.cli serve`, a fixed loopback port, one SQLite file)
   and `--agents` agent processes (`python -m edgefleet.agent.cli run --loop` on the video, one state dir
   each), all started the way a user starts them.
2. For `--duration` seconds, every `--kill-every` seconds (uniform in the range; 0 turns kills
   off) one process, chosen at random among the controller and the agents, is SIGKILLed and,
   after `--down` seconds, started again on the same port / state dir. After an agent's kill its
   outbox is read: the unacknowledged sequences it had committed, and the highest it assigned.
3. RSS of every process (VmRSS) every 5 s, by role (controller, agent-1, ...) and by incarnation.
4. At the end the controller runs, every agent is stopped with SIGTERM (commit, drain, summary),
   then the controller. The check is exact, per device, from the controller's SQLite file and
   the agents' outboxes: `lost` = sequences 1..N (N: the highest the agent assigned) not stored,
   `duplicated` = stored rows minus distinct (device, sequence), `extra` = stored sequences never
   assigned, `reused` = runs that did not start at the sequence after the killed run's last (the
   stored row there must be frame 0 of the video), `committed_lost` = records committed before a
   kill (read from the outbox) that never reached the store.
RSS growth per role: median RSS in the last minute minus the first minute (the incarnations
alive then); and for each incarnation that lived over two minutes, its own last vs first minute.
Writes JSON (stdout, or --out); prints a one-line verdict; exit 1 when anything was lost.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from report import write_report  # scripts/bench/report.py

from tests.processes import outbox_state, read_db

DB_TIMEOUT_S = 30.0
"""How long a read of a file a killed or restarting process was writing may wait for its lock."""

ENROLL_KEY = "efk_soak"
RSS_EVERY_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Role:
    """One process slot (the controller, or one agent) and its incarnations."""
    name: str
    argv: list[str]
    log_dir: Path
    proc: subprocess.Popen | None = None
    starts: int = 0
    kills: int = 0
    rss: list[tuple[float, int, float]] = field(default_factory=list)  # (t, incarnation, MB)
    summaries: list[dict] = field(default_factory=list)

    def start(self) -> None:
        self.starts += 1
        with open(self.log_dir / f"{self.name}-{self.starts}.log", "w") as err:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        self.kills += 1
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def sample(self, t: float) -> None:
        if self.alive():
            mb = rss_mb(self.proc.pid)
            if mb is not None:
                self.rss.append((t, self.starts, mb))


def wait_listening(role: Role, timeout: float = 60.0) -> None:
    import select

    ready, _, _ = select.select([role.proc.stdout], [], [], timeout)
    line = role.proc.stdout.readline() if ready else ""
    if "listening" not in line:
        raise SystemExit(f"controller did not start: {line!r}; see {role.log_dir}")


def rss_growth(role: Role, t_end: float) -> dict:
    first = [mb for t, _, mb in role.rss if t < 60]
    last = [mb for t, _, mb in role.rss if t >= t_end - 60]
    result = {"first_minute_mb": round(statistics.median(first), 1) if first else None,
              "last_minute_mb": round(statistics.median(last), 1) if last else None,
              "max_mb": round(max((mb for _, _, mb in role.rss), default=0.0), 1)}
    if first and last:
        result["growth_mb"] = round(result["last_minute_mb"] - result["first_minute_mb"], 1)
    lived = []
    for incarnation in sorted({i for _, i, _ in role.rss}):
        samples = [(t, mb) for t, i, mb in role.rss if i == incarnation]
        t0, t1 = samples[0][0], samples[-1][0]
        if t1 - t0 >= 120:
            a = [mb for t, mb in samples if t < t0 + 60]
            b = [mb for t, mb in samples if t >= t1 - 60]
            lived.append({"incarnation": incarnation, "lived_s": round(t1 - t0),
                          "first_minute_mb": round(statistics.median(a), 1),
                          "last_minute_mb": round(statistics.median(b), 1),
                          "growth_mb": round(statistics.median(b) - statistics.median(a), 1)})
    result["long_lived"] = lived
    return result


def check_device(db: Path, state_dir: Path, kills: list[tuple[list[int], int]]) -> dict:
    identity = json.loads((state_dir / "identity.json").read_text())
    device = identity["device_id"]
    pending, produced = outbox_state(state_dir, DB_TIMEOUT_S)
    rows = read_db(db, "select sequence, frame_index from detections where device_id = ?", (device,), DB_TIMEOUT_S)
    sequences = [s for s, _ in rows]
    stored = set(sequences)
    frame_of = dict(rows)
    expected = set(range(1, produced + 1))
    committed_lost = sum(len(set(p) - stored) for p, _ in kills)
    reused = sum(1 for _, last in kills if last and (last + 1) in frame_of and frame_of[last + 1] != 0)
    return {"device_id": device, "produced": produced, "stored": len(stored), "outbox_left": len(pending),
            "lost": len(expected - stored), "duplicated": len(sequences) - len(stored),
            "extra": len(stored - expected), "reused": reused, "committed_lost": committed_lost,
            "kills": len(kills), "pending_at_kills": sum(len(p) for p, _ in kills)}


def span(text: str) -> tuple[float, float]:
    """"A-B" -> (A, B); "A" -> (A, A)."""
    a, _, b = text.partition("-")
    return float(a), float(b or a)


@dataclass
class Soak:
    """The controller and the agents, the kills among them and the restarts after them."""
    controller: Role
    agents: list[Role]
    workdir: Path
    rng: random.Random
    down: tuple[float, float]
    controller_share: float | None = None
    restarts: list[tuple[float, Role]] = field(default_factory=list)  # (when, who) comes back
    events: list[dict] = field(default_factory=list)
    kills_of: dict[str, list[tuple[list[int], int]]] = field(default_factory=dict)  # agent -> outbox at each kill

    @property
    def roles(self) -> tuple[Role, ...]:
        return (self.controller, *self.agents)

    def start(self, role: Role) -> None:
        role.start()
        if role is self.controller:
            wait_listening(self.controller)

    def run(self, duration: float, kill_every: tuple[float, float]) -> float:
        """Sample, kill and restart for `duration` seconds; returns the seconds it ran."""
        t0 = time.monotonic()
        next_rss = 0.0
        next_kill = self.rng.uniform(*kill_every) if kill_every[1] > 0 else float("inf")
        while (now := time.monotonic() - t0) < duration:
            if now >= next_rss:
                for role in self.roles:
                    role.sample(now)
                next_rss += RSS_EVERY_S
            self._restart_due(now)
            self._restart_exited(now)
            if now >= next_kill:
                self._kill_one(now)
                next_kill = now + self.rng.uniform(*kill_every)
            time.sleep(0.2)
        return time.monotonic() - t0

    def _waiting(self, role: Role) -> bool:
        return any(r is role for _, r in self.restarts)

    def _restart_due(self, now: float) -> None:
        for due, role in list(self.restarts):
            if now >= due:
                self.restarts.remove((due, role))
                self.start(role)

    def _restart_exited(self, now: float) -> None:
        """A process that died by itself is a finding: note it and start it again."""
        for role in self.roles:
            if role.proc.poll() is not None and not self._waiting(role):
                self.events.append({"t": round(now, 1), "event": "exited", "role": role.name,
                                    "code": role.proc.returncode})
                self.start(role)

    def _kill_one(self, now: float) -> None:
        candidates = [r for r in self.roles if r.alive() and not self._waiting(r)]
        if not candidates:
            return
        agents_up = [r for r in candidates if r is not self.controller]
        if self.controller_share is not None and self.controller in candidates and agents_up:
            role = self.controller if self.rng.random() < self.controller_share else self.rng.choice(agents_up)
        else:
            role = self.rng.choice(candidates)
        role.kill()
        entry = {"t": round(now, 1), "event": "SIGKILL", "role": role.name}
        if role is not self.controller:
            state = outbox_state(self.workdir / role.name, DB_TIMEOUT_S)
            self.kills_of[role.name].append(state)
            entry.update(unacked=len(state[0]), last_sequence=state[1])
        self.events.append(entry)
        self.restarts.append((now + self.rng.uniform(*self.down), role))
        print(f"[{now:6.1f}s] SIGKILL {role.name} {entry}", flush=True)

    def stop_agents(self) -> None:
        """Bring the last ones killed back, then stop each agent with SIGTERM and keep its summary."""
        for _, role in self.restarts:
            self.start(role)
        self.restarts.clear()
        for agent in self.agents:  # a clean stop needs its signal handler: wait for each to produce again
            _, before = outbox_state(self.workdir / agent.name, DB_TIMEOUT_S)
            deadline = time.monotonic() + 60
            while outbox_state(self.workdir / agent.name, DB_TIMEOUT_S)[1] <= before and time.monotonic() < deadline:
                time.sleep(0.2)
            agent.proc.send_signal(signal.SIGTERM)
        for agent in self.agents:
            try:
                out, _ = agent.proc.communicate(timeout=240)
            except subprocess.TimeoutExpired:
                agent.kill()
                out = ""
            lines = (out or "").strip().splitlines()
            agent.summaries.append(json.loads(lines[-1]) if lines and lines[-1].startswith("{") else
                                   {"exit_code": agent.proc.returncode})

    def terminate(self) -> None:
        for role in self.roles:
            if role.alive():
                role.proc.terminate()
                try:
                    role.proc.wait(20)
                except subprocess.TimeoutExpired:
                    role.kill()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, metavar="S")
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--kill-every", default="20-60", metavar="A-B",
                        help="seconds between kills, uniform in A-B (a single number: fixed; 0: no kills)")
    parser.add_argument("--down", default="0.5-3", metavar="A-B", help="seconds a killed process stays down")
    parser.add_argument("--controller-share", type=float, default=None, metavar="P",
                        help="chance that a kill hits the controller (default: uniform over all processes)")
    parser.add_argument("--video", type=Path, default=ROOT / "var" / "samples" / "vtest.avi")
    parser.add_argument("--detect-interval", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="keep databases and logs here (default: a temp dir)")
    parser.add_argument("--out", type=Path)
    return parser.parse_args()


def make_roles(args: argparse.Namespace, workdir: Path, db: Path, address: str) -> tuple[Role, list[Role]]:
    """The controller and the agents, as a user starts them."""
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    py = sys.executable
    controller = Role("controller", [py, "-m", "edgefleet.fleet.cli", "--log-level", "warning", "serve",
                                     "--listen", address, "--db", str(db), "--enroll-key", ENROLL_KEY,
                                     "--heartbeat-interval", "2"], logs)
    agents = [Role(f"agent-{i + 1}", [py, "-m", "edgefleet.agent.cli", "--log-level", "warning", "run",
                                      "--controller", address, "--source", str(args.video), "--loop",
                                      "--state-dir", str(workdir / f"agent-{i + 1}"), "--enroll-key", ENROLL_KEY,
                                      "--name", f"soak-{i + 1}", "--detect-interval", str(args.detect_interval),
                                      "--threads", "1", "--backoff-max-s", "2", "--drain-timeout", "180"], logs)
              for i in range(args.agents)]
    return controller, agents


def make_report(args: argparse.Namespace, seed: int, db: Path, soak: Soak, t_end: float) -> dict:
    devices = {agent.name: {**check_device(db, soak.workdir / agent.name, soak.kills_of[agent.name]),
                            "exit_code": agent.proc.returncode, "summary": agent.summaries[-1]}
               for agent in soak.agents}
    totals = {key: sum(d[key] for d in devices.values())
              for key in ("produced", "stored", "lost", "duplicated", "extra", "reused", "committed_lost",
                          "outbox_left", "pending_at_kills")}
    return {
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                 "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
        "config": {"duration_s": args.duration, "agents": args.agents, "kill_every_s": args.kill_every,
                   "down_s": args.down, "controller_share": args.controller_share, "video": args.video.name,
                   "detect_interval": args.detect_interval,
                   "seed": seed, "workdir": str(soak.workdir)},
        "kills": {role.name: role.kills for role in soak.roles},
        "unexpected_exits": [e for e in soak.events if e["event"] == "exited"],
        "totals": totals,
        "devices": devices,
        "rss": {role.name: rss_growth(role, t_end) for role in soak.roles},
        "events": soak.events,
    }


def main() -> int:
    args = parse_args()
    kill_every = span(args.kill_every)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="edgefleet-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "fleet.db"
    controller, agents = make_roles(args, workdir, db, f"127.0.0.1:{free_port()}")
    soak = Soak(controller, agents, workdir, random.Random(seed), span(args.down), args.controller_share,
                kills_of={a.name: [] for a in agents})
    print(f"soak: {args.agents} agents, {args.duration:.0f}s, kills every {args.kill_every}s (seed {seed}), "
          f"workdir {workdir}", flush=True)

    for role in soak.roles:
        soak.start(role)
    try:
        t_end = soak.run(args.duration, kill_every)
        soak.stop_agents()
    finally:
        soak.terminate()

    result = make_report(args, seed, db, soak, t_end)
    write_report(result, args.out)
    totals = result["totals"]
    ok = not (totals["lost"] or totals["duplicated"] or totals["extra"] or totals["reused"]
              or totals["committed_lost"] or totals["outbox_left"])
    print(f"soak {'OK' if ok else 'FAILED'}: {sum(result['kills'].values())} kills "
          f"({result['kills']['controller']} controller), {totals['produced']} records produced, "
          f"{totals['stored']} stored, lost {totals['lost']}, duplicated {totals['duplicated']}, "
          f"extra {totals['extra']}, reused {totals['reused']}, committed-then-lost {totals['committed_lost']}",
          flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
