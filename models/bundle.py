"""One file for a model that is several: an OpenVINO IR (.xml + .bin) or an NCNN model (.param +
.bin + .json) travels from the operator to the controller to a device as a bundle.

A bundle is an uncompressed POSIX tar of the model file and its companions (the names and
sha256s its models manifest lists), each under its own plain name: weights do not compress,
and tar keeps it one stream that the controller stores and serves by sha256 like any artifact,
and a device downloads and resumes like any artifact. Entries are written in a fixed order with
fixed owners, modes and times, so the same files make the same bundle (the same sha256).

    pack(Path("m-int8.xml"), manifest, Path("m-int8.tar"))       # the operator's side
    check(Path("m-int8.tar"), "openvino-ir", manifest)           # the controller, before storing it
    primary = unpack(Path("m-int8.tar"), Path(dest), "openvino-ir", manifest)   # the device

Reading one refuses what a tar may carry and a model folder must not: links, devices, folders,
names with a path in them, hidden names, the same name twice, files the manifest does not list.
"""
from __future__ import annotations

import hashlib
import os
import re
import tarfile
from pathlib import Path

from .errors import ArtifactMismatch, ModelError
from .manifest import ArtifactManifest, sha256_file

MODEL_SUFFIX = {"openvino-ir": ".xml", "ncnn": ".param"}
"""The formats that travel as bundles, and the suffix of the file a backend loads."""
MAX_MEMBERS = 16
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


class BundleError(ModelError):
    """A bundle that is not a tar of plain files, or not the files its manifest lists."""


def is_bundled(fmt: str) -> bool:
    return fmt in MODEL_SUFFIX


def expected_files(primary: str, manifest: ArtifactManifest) -> dict[str, str]:
    """name -> sha256 of every file of the model: the model file and its companions."""
    return {primary: manifest.file_sha256, **manifest.companions}


def pack(model: Path, manifest: ArtifactManifest, out: Path) -> Path:
    """Write the bundle of `model` (its companions beside it) to `out`; the caller has verified them."""
    if not is_bundled(manifest.format):
        raise BundleError(f"{model}: a {manifest.format} model is one file; it travels as it is")
    names = [model.name, *sorted(manifest.companions)]
    for name in names:
        _check_name(name)
    tmp = out.with_name(f".{out.name}.part")
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for name in names:
                path = model.with_name(name)
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def members(bundle: Path, fmt: str) -> tuple[str, dict[str, tarfile.TarInfo]]:
    """(the model file's name, name -> entry) of a bundle, refusing anything but plain files."""
    try:
        with tarfile.open(bundle, "r:") as tar:
            entries = tar.getmembers()
    except (tarfile.TarError, OSError) as err:
        raise BundleError(f"{bundle} is not a model bundle (an uncompressed tar): {err}") from err
    if len(entries) > MAX_MEMBERS:
        raise BundleError(f"{bundle} holds {len(entries)} entries; a model bundle has at most {MAX_MEMBERS}")
    found: dict[str, tarfile.TarInfo] = {}
    for entry in entries:
        _check_name(entry.name)
        if not entry.isreg():
            raise BundleError(f"{bundle}: {entry.name!r} is not a regular file (links and folders are refused)")
        if entry.name in found:
            raise BundleError(f"{bundle}: {entry.name!r} appears twice")
        found[entry.name] = entry
    models = [name for name in found if name.lower().endswith(MODEL_SUFFIX[fmt])]
    if len(models) != 1:
        raise BundleError(f"{bundle}: a {fmt} bundle holds one {MODEL_SUFFIX[fmt]} file, this one {len(models)}")
    return models[0], found


def check(bundle: Path, fmt: str, manifest: ArtifactManifest) -> str:
    """Raise BundleError unless the bundle holds exactly the manifest's files, whole; the model file's name."""
    primary, found = members(bundle, fmt)
    expected = expected_files(primary, manifest)
    _same_names(bundle, set(found), set(expected))
    with tarfile.open(bundle, "r:") as tar:
        for name, entry in found.items():
            if _copy(tar, entry) != expected[name]:
                raise BundleError(f"{bundle}: {name} does not hash to the sha256 its manifest lists")
    return primary


def unpack(bundle: Path, dest: Path, fmt: str, manifest: ArtifactManifest) -> Path:
    """Extract the bundle's files into `dest` (each written aside, checked, then renamed) and return
    the model file's path; every file is checked against the manifest, a mismatch leaves none."""
    primary, found = members(bundle, fmt)
    expected = expected_files(primary, manifest)
    _same_names(bundle, set(found), set(expected))
    dest.mkdir(parents=True, exist_ok=True)
    parts = {name: dest / f".{name}.part" for name in found}
    try:
        with tarfile.open(bundle, "r:") as tar:
            for name, entry in found.items():
                _extract(tar, entry, parts[name], expected[name])
        for name, part in parts.items():
            os.replace(part, dest / name)
    finally:
        for part in parts.values():
            part.unlink(missing_ok=True)
    return dest / primary


def installed(dest: Path, fmt: str, manifest: ArtifactManifest) -> Path | None:
    """The model file of a bundle unpacked into `dest` before, if all its files are there and whole."""
    models = sorted(dest.glob(f"*{MODEL_SUFFIX[fmt]}")) if dest.is_dir() else []
    if len(models) != 1:
        return None
    for name, sha256 in expected_files(models[0].name, manifest).items():
        path = dest / name
        if not path.is_file() or sha256_file(path) != sha256:
            return None
    return models[0]


def _copy(tar: tarfile.TarFile, entry: tarfile.TarInfo, sink=None) -> str:
    """sha256 of an entry's bytes, written to `sink` (a binary file) on the way when given."""
    source = tar.extractfile(entry)
    assert source is not None  # a regular file (members() checked)
    digest = hashlib.sha256()
    for block in iter(lambda: source.read(1 << 20), b""):
        digest.update(block)
        if sink is not None:
            sink.write(block)
    return digest.hexdigest()


def _extract(tar: tarfile.TarFile, entry: tarfile.TarInfo, part: Path, sha256: str) -> None:
    with part.open("wb") as fh:
        got = _copy(tar, entry, fh)
        fh.flush()
        os.fsync(fh.fileno())
    if got != sha256:
        raise ArtifactMismatch(f"{entry.name} in the bundle does not hash to the sha256 its manifest lists")


def _same_names(bundle: Path, found: set[str], expected: set[str]) -> None:
    if found != expected:
        missing, extra = sorted(expected - found), sorted(found - expected)
        raise BundleError(f"{bundle} does not hold the files its manifest lists"
                          + (f"; missing {', '.join(missing)}" if missing else "")
                          + (f"; not listed {', '.join(extra)}" if extra else ""))


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise BundleError(f"{name!r} is not a plain file name ([A-Za-z0-9._-], no folder, not hidden)")

