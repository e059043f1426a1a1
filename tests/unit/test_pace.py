"""File sources at pace realtime: a video plays at its frame rate, a slow consumer gets the newest
frame and the rest are dropped and counted; at pace fast every frame comes as fast as it is read."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from edgefleet.agent.sources import FALLBACK_FPS, Source, open_source

FPS = 20.0
FRAMES = 30  # 1.5 s at 20 fps


def write_video(path, frames: int = FRAMES, fps: float = FPS) -> str:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((48, 64, 3), (i * 8) % 256, np.uint8))
    writer.release()
    return str(path)


def drain(source: Source, hold_s: float = 0.0) -> list:
    """Every frame the consumer gets, taking `hold_s` over each (a slow loop)."""
    frames = []
    source.start()
    try:
        while (frame := source.read(timeout=5)) is not None:
            frames.append(frame)
            time.sleep(hold_s)
    finally:
        source.stop()
    return frames


def timed(source: Source) -> tuple[float, list]:
    start = time.monotonic()
    frames = drain(source)
    return time.monotonic() - start, frames


def test_realtime_plays_at_the_video_frame_rate_and_fast_does_not(tmp_path):
    video = write_video(tmp_path / "clip.avi")
    realtime = open_source(video, pace="realtime")
    assert realtime.fps == pytest.approx(FPS)
    fast_s, fast_frames = timed(open_source(video, pace="fast"))
    realtime_s, realtime_frames = timed(realtime)
    assert [f.index for f in fast_frames] == list(range(FRAMES))
    assert [f.index for f in realtime_frames] == list(range(FRAMES)), "a quick consumer misses nothing"
    assert realtime.frames_dropped == 0
    # frame i is due i/fps after the first: the whole file takes (FRAMES-1)/FPS of the clock, with no drift
    span = realtime_frames[-1].capture_time - realtime_frames[0].capture_time
    assert span == pytest.approx((FRAMES - 1) / FPS, rel=0.15)
    assert realtime_s > 5 * fast_s, f"realtime {realtime_s:.3f}s vs fast {fast_s:.3f}s"


def test_capture_times_are_delivery_times_spaced_by_the_frame_period(tmp_path):
    frames = drain(open_source(write_video(tmp_path / "clip.avi"), pace="realtime"))
    gaps = np.diff([f.capture_time for f in frames])
    assert np.median(gaps) == pytest.approx(1 / FPS, rel=0.25)


def test_a_slow_consumer_gets_the_newest_frame_and_the_rest_are_counted_as_dropped(tmp_path):
    source = open_source(write_video(tmp_path / "clip.avi"), pace="realtime")
    frames = drain(source, hold_s=3 / FPS)  # takes one frame in three
    indices = [f.index for f in frames]
    assert indices == sorted(indices) and indices[-1] == FRAMES - 1, "the last frame is delivered"
    assert len(frames) < FRAMES * 0.6, "frames it could not take were not queued up"
    assert source.frames_dropped == FRAMES - len(frames)
    assert source.frames_read == FRAMES


def test_fast_gives_every_frame_to_a_slow_consumer(tmp_path):
    source = open_source(write_video(tmp_path / "clip.avi", frames=8), pace="fast")
    frames = drain(source, hold_s=3 / FPS)
    assert [f.index for f in frames] == list(range(8))
    assert source.frames_dropped == 0


def test_image_folder_plays_at_folder_fps(tmp_path):
    for i in range(6):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), np.full((40, 60, 3), i * 30, np.uint8))
    source = open_source(str(tmp_path), pace="realtime", folder_fps=10.0)
    assert source.fps == 10.0
    frames = drain(source)
    assert len(frames) == 6
    assert frames[-1].capture_time - frames[0].capture_time == pytest.approx(0.5, rel=0.2)
    assert open_source(str(tmp_path), pace="fast").fps == 0.0


def test_a_file_without_a_usable_frame_rate_plays_at_the_fallback(tmp_path, caplog):
    video = write_video(tmp_path / "odd.avi", frames=3, fps=1000.0)  # no camera sends 1000 fps
    source = open_source(video, pace="realtime")
    assert source.fps == FALLBACK_FPS
    assert "implausible" in caplog.text


def test_synthetic_scenes_stay_fast_at_realtime():
    assert open_source("synthetic://64x48?frames=5", pace="realtime").fps == 0.0


def test_a_realtime_source_stops_while_waiting_for_a_frame_time(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), np.full((40, 60, 3), i * 30, np.uint8))
    source = open_source(str(tmp_path), pace="realtime", folder_fps=0.1)  # the next frame is 10 s away
    source.start()
    assert source.read(timeout=5).index == 0
    source.stop(timeout=2.0)
    assert source.state == "ended"
    assert source.frames_read == 2, "the second image was read, then the wait for its time was cut short"
