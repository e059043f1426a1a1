"""Exactly-once checks on the frames a controller stored, for tests with real agents.

A device's records share one sequence space: frames, object events, count batches and snapshots
(common.records.Record). The frames' sequences therefore have gaps where the other records went;
what must hold is that each frame is stored once, in the order produced, none lost."""
from __future__ import annotations

from collections.abc import Sequence


def assert_frames_once(sequences: Sequence[int], produced: int, acked: int, what: str = "") -> None:
    """`sequences`: the stored frames' sequences in storage order; `produced`: the frames the agent
    committed; `acked`: the highest sequence the controller acknowledged (of any kind)."""
    where = f"{what}: " if what else ""
    assert len(sequences) == len(set(sequences)), f"{where}a frame stored twice"
    assert list(sequences) == sorted(sequences), f"{where}frames stored out of the order produced"
    assert len(sequences) == produced, f"{where}{len(sequences)} frames stored of {produced} produced"
    assert not sequences or (sequences[0] >= 1 and sequences[-1] <= acked), \
        f"{where}frame sequences {sequences[0]}..{sequences[-1]} outside 1..{acked} (acked)"
