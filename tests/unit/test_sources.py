from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from edgefleet.agent.errors import SourceError
from edgefleet.agent.sources import Source, open_source


def drain(source: Source, limit: int = 10_000) -> list:
    frames = []
    while len(frames) < limit:
        frame = source.read(timeout=5)
        if frame is None:
            break
        frames.append(frame)
    return frames


def test_synthetic_source_gives_every_frame_then_ends():
    source = open_source("synthetic://160x120?objects=3&frames=25&seed=4")
    source.start()
    try:
        frames = drain(source)
    finally:
        source.stop()
    assert [f.index for f in frames] == list(range(25))
    assert frames[0].image.shape == (120, 160, 3)
    assert not np.array_equal(frames[0].image, frames[5].image), "the boxes move"
    assert source.state == "ended"


def test_image_folder_in_name_order_skipping_unreadable_files(tmp_path):
    for i, value in enumerate((10, 20, 30)):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), np.full((40, 60, 3), value, np.uint8))
    (tmp_path / "img1b.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    source = open_source(str(tmp_path))
    source.start()
    try:
        frames = drain(source)
    finally:
        source.stop()
    assert [int(f.image[0, 0, 0]) for f in frames] == [10, 20, 30]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "source is empty"),
        ("/nonexistent/video.mp4", "no such file"),
        ("synthetic://10x10", "at least 32x32"),
        ("synthetic://64x64?speed=3", "unknown option"),
        ("synthetic://bad", "expected synthetic://"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(SourceError, match=message):
        open_source(spec)


def test_empty_folder_and_unreadable_video_are_refused(tmp_path):
    with pytest.raises(SourceError, match="has no images"):
        open_source(str(tmp_path))
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\0" * 1000)
    with pytest.raises(SourceError, match="cannot be opened"):
        open_source(str(bad)).start()


def test_files_that_decode_nothing_are_refused_at_start_and_good_ones_start_at_frame_zero(tmp_path):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(SourceError, match="yields no frame: none of its 1 image file"):
        open_source(str(garbage)).start()
    video = tmp_path / "one.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for value in (50, 150):
        writer.write(np.full((48, 64, 3), value, np.uint8))
    writer.release()
    source = open_source(str(video))
    source.start()  # the probe read a frame and opened the file again
    try:
        frames = drain(source)
    finally:
        source.stop()
    assert [f.index for f in frames] == [0, 1] and abs(int(frames[0].image[0, 0, 0]) - 50) < 10


class FlakyStream:
    """A live stream that drops after `drop_after` frames and comes back on the next open."""

    def __init__(self, drop_after: int, total: int):
        self.drop_after, self.total, self.opens, self.sent = drop_after, total, 0, 0
        self.spec = "flaky"

    def open(self):
        self.opens += 1
        self._this_open = 0

    def read(self):
        if self.sent >= self.total or (self.opens == 1 and self._this_open >= self.drop_after):
            return None
        self.sent += 1
        self._this_open += 1
        return np.full((8, 8, 3), self.sent, np.uint8)

    def close(self):
        pass


def test_a_live_source_reconnects_and_keeps_counting_frames():
    stream = FlakyStream(drop_after=3, total=6)
    source = Source("flaky", stream, live=True, reconnect_initial_s=0.01, reconnect_max_s=0.05)
    source.start()
    seen = []
    try:
        while not seen or seen[-1] < 5:
            try:
                frame = source.read(timeout=5)
            except TimeoutError:
                break
            seen.append(frame.index)
    finally:
        source.stop()
    assert stream.opens >= 2 and source.reconnects >= 1
    assert seen[-1] == 5, "indices continue across the reconnect"
    assert seen == sorted(set(seen))
    assert len(seen) + source.frames_dropped == 6, "every frame was either read or counted as dropped"


class Gate:
    """A reader that hands out a frame each time the test releases one, then ends."""

    def __init__(self, frames: int):
        self.released, self.left = threading.Semaphore(0), frames

    def open(self):
        pass

    def read(self):
        self.released.acquire()
        if not self.left:
            return None
        self.left -= 1
        return np.zeros((8, 8, 3), np.uint8)

    def close(self):
        self.released.release()


@pytest.mark.slow
@pytest.mark.parametrize("live", [False, True])
def test_sources_sharing_an_event_set_it_on_each_frame_and_at_the_end(live):
    """One event for several sources (the agent's streams): whichever delivers a frame, or a
    file's end, sets it; a source that delivers nothing leaves it alone."""
    ready = threading.Event()
    quiet, busy = Gate(1), Gate(1)
    sources = [Source("quiet", quiet, live=live), Source("busy", busy, live=live)]
    for source in sources:
        source.start(notify=ready)
    try:
        assert not ready.wait(0.2)
        busy.released.release()
        assert ready.wait(5)
        assert sources[1].read(timeout=0) is not None
        with pytest.raises(TimeoutError):
            sources[0].read(timeout=0)
        if not live:  # a live source reconnects instead of ending
            ready.clear()
            busy.released.release()  # the end
            assert ready.wait(5)
            assert sources[1].read(timeout=0) is None
    finally:
        for source in sources:
            source.stop()
