"""`edgefleet detect` as a user runs it: against a real `edge-agent serve` process (Detect for an image,
DetectStream for a video) and locally with the bundled detector; and its errors (exit 2)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from ..conftest import ROOT, first_frames, free_port, run_cli

pytestmark = pytest.mark.slow

TOKEN = "detect-test-token"
FRAMES = 8


def detect(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli("edgefleet.fleet.cli", "detect", *args, env=env)


def json_frames(proc: subprocess.CompletedProcess) -> list[dict]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture(scope="module")
def server():
    """`edge-agent serve` with a token, no controller: the InferenceService alone."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.agent.cli", "--log-level", "warning", "serve", "--listen", "127.0.0.1:0",
         "--token", TOKEN],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ),
    )
    try:
        first = proc.stdout.readline()
        assert first, proc.stderr.read()[-3000:]
        yield json.loads(first)["serving"]
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def media(vtest, tmp_path_factory):
    """(a JPEG of vtest's 31st frame, a video of its first FRAMES frames)."""
    folder = tmp_path_factory.mktemp("media")
    frames = first_frames(vtest, 31)
    image = folder / "street.jpg"
    cv2.imwrite(str(image), frames[30])
    video = folder / "street.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (768, 576))
    for frame in frames[:FRAMES]:
        writer.write(frame)
    writer.release()
    return image, video


def boxes_of(frame: dict) -> list[tuple]:
    return sorted((d["label"], *(round(d["box"][k]) for k in ("x1", "y1", "x2", "y2"))) for d in frame["detections"])


@pytest.mark.data
def test_an_image_on_the_server_matches_the_bundled_detector_here(server, media):
    image, _ = media
    (remote,) = json_frames(detect(str(image), "--server", server, "--token", TOKEN, "--json"))
    (local,) = json_frames(detect(str(image), "--json"))
    assert (remote["width"], remote["height"]) == (local["width"], local["height"]) == (768, 576)
    labels = [d["label"] for d in remote["detections"]]
    assert labels.count("person") >= 2
    assert all(isinstance(d["score"], float) and d["score"] >= 0.25 for d in remote["detections"])
    assert len(boxes_of(remote)) == len(boxes_of(local))
    for a, b in zip(boxes_of(remote), boxes_of(local)):
        assert a[0] == b[0] and max(abs(x - y) for x, y in zip(a[1:], b[1:])) <= 2, (a, b)


@pytest.mark.data
def test_a_video_on_the_server_gives_every_frame_tracked_and_an_annotated_video(server, media, tmp_path):
    _, video = media
    saved = tmp_path / "boxes.avi"
    frames = json_frames(detect(str(video), "--server", server, "--token", TOKEN, "--json", "--save", str(saved)))
    assert [f["frame_index"] for f in frames] == list(range(FRAMES)), "none dropped"
    assert not any(f["error"] for f in frames)
    assert any(d["track_id"] > 0 for d in frames[-1]["detections"]), "the server's tracker names the people"
    cap = cv2.VideoCapture(str(saved))
    written = []
    while (read := cap.read())[0]:
        written.append(read[1])
    cap.release()
    assert len(written) == FRAMES and written[0].shape == (576, 768, 3)


@pytest.mark.data
def test_the_table_and_a_saved_picture_locally(media, tmp_path):
    image, _ = media
    saved = tmp_path / "boxes.png"
    proc = detect(str(image), "--save", str(saved), "--conf", "0.5")
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.startswith("frame 0 (768x576): ")
    assert int(header.split(": ")[1].split()[0]) == len(rows) > 0
    assert all(float(row.split()[1]) >= 0.5 for row in rows)
    original, drawn = cv2.imread(str(image)), cv2.imread(str(saved))
    assert drawn.shape == original.shape
    assert np.count_nonzero(np.abs(drawn.astype(int) - original.astype(int)).sum(axis=2) > 60) > 500, "boxes drawn"


def test_a_saved_picture_has_each_box_in_its_labels_colour(tmp_path):
    """--save with a local model (a tiny one: no samples needed): every box is outlined where --json says."""
    from edgefleet.common.annotate import colour_of

    from ..unit.test_engines import tiny_onnx

    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), np.full((480, 640, 3), 90, np.uint8))
    saved = tmp_path / "boxes.png"
    (frame,) = json_frames(detect(str(image), "--model", str(tiny_onnx(tmp_path / "tiny.onnx")), "--conf", "0.3",
                                  "--json", "--save", str(saved)))
    drawn = cv2.imread(str(saved))
    assert drawn.shape == (480, 640, 3) and frame["detections"], "the tiny model finds something at 0.3"
    edges = [(d["label"], round(d["box"]["x1"]), round((d["box"]["y1"] + d["box"]["y2"]) / 2))
             for d in frame["detections"]]
    outlined = [tuple(drawn[min(y, 479), min(x, 639)]) == colour_of(label) for label, x, y in edges]
    assert sum(outlined) >= len(outlined) / 2, "boxes drawn later may cover some edges, not most"
    assert (drawn == 90).all(axis=2).mean() > 0.3, "the picture itself is kept"


def test_a_missing_file_and_an_unreadable_image_exit_2(tmp_path):
    proc = detect(str(tmp_path / "nothing.jpg"))
    assert proc.returncode == 2 and "nothing.jpg: no such file" in proc.stderr
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not a jpeg at all")
    proc = detect(str(garbage))
    assert proc.returncode == 2 and "garbage.jpg: not an image OpenCV can decode" in proc.stderr


def test_an_unreachable_server_exits_2_naming_it(media):
    address = f"127.0.0.1:{free_port()}"
    for path in media:  # Detect, DetectStream
        proc = detect(str(path), "--server", address, "--timeout", "5")
        assert proc.returncode == 2, proc.stderr
        assert f"cannot reach the inference service at {address}" in proc.stderr
        assert "refused" in proc.stderr.lower() or "failed to connect" in proc.stderr.lower(), proc.stderr


@pytest.mark.data
def test_a_wrong_or_missing_token_is_refused_with_exit_2(server, media):
    image, video = media
    for extra in (("--token", "wrong"), ()):
        for path in (image, video):
            proc = detect(str(path), "--server", server, *extra, env={"EDGEFLEET_INFERENCE_TOKEN": ""})
            assert proc.returncode == 2, proc.stderr
            assert f"the inference service at {server} refused the call" in proc.stderr
