"""scripts/flash-agent.sh against a real OpenSSH server on 127.0.0.1, into a staging root.

The "device" is this machine reached through its own sshd (a throwaway host key and client
key); EDGEFLEET_ROOT points the script at a temp folder. The device's system site packages are
played by a folder of links to this venv's dependencies (without edgefleet itself), put on the
device's PYTHONPATH by sshd's SetEnv, as JetPack puts TensorRT on a Jetson's; edgefleet is
installed from a wheel built here (--wheelhouse), so nothing is fetched.
"""
from __future__ import annotations

import getpass
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgefleet.agent.cli import build_parser
from edgefleet.agent.flags import parse_args

from ..conftest import require_program

REPO = Path(__file__).resolve().parents[2]
FLASH = REPO / "scripts" / "flash-agent.sh"
SSHD = Path("/usr/sbin/sshd")
INSTALL_HINT = "apt-get install -y openssh-server (or: make test-broker, which installs it)"
PACKAGES = ["pyproject.toml", "README.md", "proto", "adaptive", "agent", "common", "models", "fleet", "tui"]
NOT_SYSTEM_SITE = ("edgefleet", "__editable__", "pip", "setuptools", "_distutils_hack", "distutils-precedence")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _system_site(site: Path) -> Path:
    """The device's "system" packages: links to this venv's, less edgefleet."""
    site.mkdir()
    venv_site = Path(next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix)))
    for entry in venv_site.iterdir():
        if not entry.name.startswith(NOT_SYSTEM_SITE) and not entry.name.endswith(".pth"):
            (site / entry.name).symlink_to(entry)
    return site


class Device:
    """sshd on 127.0.0.1:<port>, logging in the current user by key."""

    def __init__(self, home: Path):
        tools = (SSHD, shutil.which("ssh"), shutil.which("ssh-keygen"))
        require_program("OpenSSH (sshd, ssh, ssh-keygen)", all(t is not None and Path(t).exists() for t in tools),
                        INSTALL_HINT)
        self.home = home
        home.mkdir()
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / name)], check=True)
        (home / "authorized_keys").write_text((home / "client_key.pub").read_text())
        (home / "authorized_keys").chmod(0o600)
        self.site = _system_site(home / "system-site")
        self.port = _free_port()
        config = home / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {home / 'host_key'}\n"
            f"PidFile {home / 'sshd.pid'}\nAuthorizedKeysFile {home / 'authorized_keys'}\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nLogLevel ERROR\n"
            f"SetEnv PYTHONPATH={self.site} PYTHONDONTWRITEBYTECODE=1\n"
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
        self.log = open(home / "sshd.log", "wb")  # noqa: SIM115  (open while sshd runs; closed in stop())
        self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"sshd did not start: {(home / 'sshd.log').read_text()}")
            time.sleep(0.05)
        self.target = f"{getpass.getuser()}@127.0.0.1"
        self.ssh_flags = ["--port", str(self.port), "--ssh-option", f"IdentityFile={home / 'client_key'}",
                          "--ssh-option", "IdentitiesOnly=yes", "--ssh-option", "StrictHostKeyChecking=no",
                          "--ssh-option", "UserKnownHostsFile=/dev/null", "--ssh-option", "LogLevel=ERROR"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    dev = Device(tmp_path_factory.mktemp("device") / "ssh")
    yield dev
    dev.stop()


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of the packages and the flash script: what is flashed stays the same for the whole
    module while the working tree is edited, and no build output lands in the tree."""
    src = tmp_path_factory.mktemp("checkout")
    for name in [*PACKAGES, "scripts/flash-agent.sh", "scripts/systemd"]:
        path = REPO / name
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, src / name)
    return src


@pytest.fixture(scope="module")
def wheelhouse(checkout, tmp_path_factory) -> Path:
    """An edgefleet wheel built from the checkout's copy."""
    src = tmp_path_factory.mktemp("wheel") / "src"
    shutil.copytree(checkout, src, ignore=shutil.ignore_patterns("scripts"))
    out = src.parent / "wheelhouse"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-q", "-w", str(out), str(src)], check=True, timeout=120)
    return out


def flash(device: Device, root: Path, *args: str, check: bool = True,
          script: Path = FLASH) -> subprocess.CompletedProcess:
    python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    env = {**os.environ, "EDGEFLEET_ROOT": str(root), "EDGEFLEET_PYTHON": str(python)}
    proc = subprocess.run(["bash", str(script), device.target, *device.ssh_flags, *args],
                          env=env, check=False, capture_output=True, text=True, timeout=240)
    if check and proc.returncode != 0:
        pytest.fail(f"flash-agent.sh {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its mode, mtime and (for files) sha256."""
    state = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else ""
        state[str(path.relative_to(root))] = (st.st_mode, st.st_mtime_ns, digest)
    return state


def run_in_venv(device: Device, root: Path, *cmd: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(device.site), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([str(root / "opt/edgefleet/venv/bin" / cmd[0]), *cmd[1:]], cwd="/", env=env,
                          check=False, capture_output=True, text=True, timeout=60)


INSTALL_ARGS = ("--controller", "fleet.example:50051", "--enroll-key", "efk_flash_test",
                "--source", "rtsp://cam.local/stream1", "--stream-id", "door", "--source", "0", "--stream-id", "yard")


def test_install_rerun_dry_run_uninstall(device, checkout, wheelhouse, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    script = checkout / "scripts/flash-agent.sh"
    first = flash(device, root, *INSTALL_ARGS, "--wheelhouse", str(wheelhouse), script=script)
    assert "platform: generic (detected)" in first.stdout
    assert "not creating the edgefleet user" in first.stdout
    assert "skipping systemctl" in first.stdout

    # the agent is installed in the venv, from the staging root
    venv = root / "opt/edgefleet/venv"
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    where = run_in_venv(device, root, "python", "-c",
                        "import edgefleet.agent, edgefleet.v1.agent_pb2; print(edgefleet.agent.__file__)")
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(venv))
    helped = run_in_venv(device, root, "edge-agent", "run", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "--config YAML" in helped.stdout
    assert (root / "opt/edgefleet/src/agent/cli.py").read_bytes() == (checkout / "agent/cli.py").read_bytes()
    assert not (root / "opt/edgefleet/src/tests").exists()

    # agent.yaml: what the agent itself reads from it
    yaml_path = root / "etc/edgefleet/agent.yaml"
    assert oct(yaml_path.stat().st_mode & 0o777) == "0o640"
    config = parse_args(build_parser(), ["run", "--config", str(yaml_path)]).config
    assert (config.controller, config.enroll_key, config.state_dir) == (
        "fleet.example:50051", "efk_flash_test", Path("/var/lib/edgefleet"))
    assert (config.source, config.stream_id) == (["rtsp://cam.local/stream1", "0"], ["door", "yard"])

    # the unit, as shipped in scripts/systemd/
    unit = (root / "etc/systemd/system/edgefleet-agent.service").read_text()
    assert unit == (checkout / "scripts/systemd/edgefleet-agent.service").read_text()
    for line in ("ExecStart=/opt/edgefleet/venv/bin/edge-agent run --config /etc/edgefleet/agent.yaml",
                 "Restart=on-failure", "Type=notify", "WatchdogSec=60", "User=edgefleet",
                 "SupplementaryGroups=video"):
        assert line in unit.splitlines()
    assert (root / "var/lib/edgefleet").is_dir()

    # the same again: nothing is written, nothing reinstalled
    before = snapshot(root)
    second = flash(device, root, *INSTALL_ARGS, "--wheelhouse", str(wheelhouse), script=script)
    assert "flash-agent: [device] nothing changed" in second.stdout, second.stdout
    assert "installing" not in second.stdout
    assert snapshot(root) == before

    # a dry run with another controller says what it would do and does nothing
    dry = flash(device, root, "--controller", "other.example:50051", "--enroll-key", "efk_flash_test",
                "--source", "rtsp://cam.local/stream1", "--wheelhouse", str(wheelhouse), "--dry-run", script=script)
    assert f"writing {root}/etc/edgefleet/agent.yaml" in dry.stdout
    assert "would run: install -m 640" in dry.stdout
    assert "dry run: nothing was changed" in dry.stdout
    assert snapshot(root) == before

    # uninstall: a dry run first, then for real, then again (nothing left to remove)
    dry = flash(device, root, "--uninstall", "--dry-run", script=script)
    assert "would run: rm -rf" in dry.stdout
    assert snapshot(root) == before
    gone = flash(device, root, "--uninstall", script=script)
    assert f"removing {root}/opt/edgefleet" in gone.stdout
    assert [p.relative_to(root) for p in root.rglob("*") if p.is_file()] == []
    again = flash(device, root, "--uninstall", script=script)
    assert "nothing to remove" in again.stdout


def test_jetson_is_detected_and_gets_system_site_packages(device, tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    before = snapshot(root)
    dry = flash(device, root, "--controller", "fleet.example:50051", "--enroll-key", "k", "--dry-run")
    assert "platform: jetson (detected)" in dry.stdout
    assert "system site packages: true" in dry.stdout
    assert "--system-site-packages" in dry.stdout
    assert "edgefleet/src[jetson]" in dry.stdout  # pip install '.[jetson]' (pycuda)
    assert snapshot(root) == before


def test_tar_over_ssh_when_rsync_is_missing(device, wheelhouse, tmp_path):
    """Without rsync here (PATH without it), the files go as a tar stream over ssh."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "ssh", "tar", "mktemp", "rm", "dirname", "sed", "cat", "cp", "mkdir", "printf"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    root = tmp_path / "root"
    root.mkdir()
    env = {**os.environ, "PATH": str(bin_dir), "EDGEFLEET_ROOT": str(root), "EDGEFLEET_PYTHON": sys.executable}
    proc = subprocess.run([str(bin_dir / "bash"), str(FLASH), device.target, *device.ssh_flags,
                           "--controller", "h:1", "--enroll-key", "k", "--dry-run"],
                          env=env, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sent with tar over ssh (no rsync)" in proc.stdout
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    ((), "which device?"),
    (("dev@host",), "--controller HOST:PORT is needed"),
    (("dev@host", "--controller", "nohost"), "--controller must be HOST:PORT, got 'nohost'"),
    (("dev@host", "--controller", "h:1"), "--enroll-key is needed"),
    (("dev@host", "--controller", "h:1", "--enroll-key", "k", "--platform", "mac"), "--platform must be jetson"),
    (("dev@host", "--controller", "h:1", "--enroll-key", "k", "--source", "a", "--stream-id", "x",
      "--stream-id", "y"), "2 --stream-id for 1 --source"),
    (("dev@host", "--bogus"), "unknown option --bogus"),
])
def test_bad_arguments_exit_2_before_connecting(args, message):
    proc = subprocess.run(["bash", str(FLASH), *args], check=False, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert message in proc.stderr
