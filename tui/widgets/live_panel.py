"""The device screen's live part: each stream's latest annotated frame, today's zone and line counts,
the newest objects and the selected one's best crop. It draws what `tui.live.LivePoller` brought."""
from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static, TabbedContent, TabPane

from ..errors import ControllerError
from ..format import clock_time
from ..live import LiveResults
from ..views import CountsView, PictureView, TrackedObjectView
from .picture import Picture

if TYPE_CHECKING:
    from ..app import FleetApp


def counts_text(counts: CountsView | None, errors: dict[str, str]) -> Text:
    """Today's counts of the device, a line per stream and zone or line: `cam0 line door  in 12 · out 9`."""
    head = Text.assemble(("Today     ", "bold"))
    if counts is None:
        head.append(errors.get("counts", "asking…"), style="red" if "counts" in errors else "dim")
        return head
    by_shape: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for b in counts.buckets:
        by_shape[(b.stream_id, b.kind, b.name)][b.direction] += b.count
    head.append(f"{counts.total} counted" if by_shape else "nothing counted yet (no zones or lines crossed)")
    lines = [head]
    for (stream, kind, name), directions in sorted(by_shape.items()):
        numbers = " · ".join(f"{d} {n}" for d, n in sorted(directions.items()))
        lines.append(Text.assemble(f"  {stream} {kind} ", (name, "bold cyan"), f"  {numbers}"))
    if "counts" in errors:
        lines.append(Text(f"  ({errors['counts']})", style="red"))
    return Text("\n").join(lines)


def object_cells(o: TrackedObjectView) -> tuple[Text, ...]:
    crossed = ", ".join(f"{line} {d}" for line, d in o.crossings) or ", ".join(o.zones)
    return (Text(clock_time(o.last_seen)), Text(o.label), Text(f"#{o.track_id}", justify="right"),
            Text(f"{o.best_score:.2f}", justify="right"), Text(crossed or "-", style="cyan" if crossed else "dim"),
            Text("" if o.ended else "●", style="green"))


def frame_caption(stream: str, picture: PictureView | None) -> str:
    if picture is None:
        return f"{stream or 'frame'}"
    return f"{picture.stream_id} {clock_time(picture.time)}"


class LivePanel(Horizontal):
    """Frames on the left; counts, objects (with the selected one's crop) and recent tracks on the right."""

    def __init__(self, device_id: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.device_id = device_id
        self.objects: dict[str, TrackedObjectView] = {}
        self.crop_of = ""  # the object whose crop is shown or asked for

    def compose(self) -> ComposeResult:
        with Vertical(id="device-frames"):
            yield Picture("frame", id="frame-0")
        with Vertical(id="device-side"):
            yield Static(id="device-counts")
            with TabbedContent(id="device-tabs"):
                with TabPane("Objects", id="objects-pane"), Horizontal():
                    yield DataTable(id="objects", cursor_type="row", zebra_stripes=True)
                    yield Picture("crop", id="crop")
                with TabPane("Tracks", id="tracks-pane"):
                    yield DataTable(id="tracks", cursor_type="none", zebra_stripes=True)

    def on_mount(self) -> None:
        objects = self.query_one("#objects", DataTable)
        for label, width in (("Seen", 8), ("Label", 7), ("Track", 5), ("Score", 5), ("Crossed", 14), ("", 1)):
            objects.add_column(label, width=width, key=label.lower() or "live")
        self.query_one("#frame-0", Picture).say("asking the device for its latest frame…")
        self.query_one("#crop", Picture).say("select an object")
        self.query_one("#device-counts", Static).update(counts_text(None, {}))

    @property
    def fleet(self) -> FleetApp:
        return self.app  # type: ignore[return-value]

    def apply(self, results: LiveResults) -> None:
        self._show_frames(results)
        self.query_one("#device-counts", Static).update(counts_text(results.counts, results.errors))
        if results.objects is not None:
            self._show_objects(results.objects)

    def _show_frames(self, results: LiveResults) -> None:
        pictures = list(self.query_one("#device-frames").query(Picture))
        streams = sorted(results.frames) or sorted(k.removeprefix("frame").strip()
                                                    for k in results.errors if k.startswith("frame"))
        for i in range(len(pictures), len(streams)):
            picture = Picture(id=f"frame-{i}")
            self.query_one("#device-frames").mount(picture)
            pictures.append(picture)
        for picture, stream in zip(pictures, streams):
            frame = results.frames.get(stream)
            error = results.errors.get(f"frame {stream}".strip())
            if frame is not None:
                picture.show(frame.jpeg, frame_caption(stream, frame) + (" (stale)" if error else ""))
            elif error:
                picture.say(f"no frame: {error}", "red", caption=frame_caption(stream, None))

    def _show_objects(self, objects: list[TrackedObjectView]) -> None:
        table = self.query_one("#objects", DataTable)
        keep = table.cursor_row
        self.objects = {o.object_id: o for o in objects}
        table.clear()
        for o in objects:
            table.add_row(*object_cells(o), key=o.object_id)
        if objects:
            table.move_cursor(row=min(max(keep, 0), len(objects) - 1))
        else:
            self.query_one("#crop", Picture).say("no objects yet")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id != "objects" or event.row_key.value is None:
            return
        event.stop()
        obj = self.objects.get(event.row_key.value)
        if obj is None or obj.object_id == self.crop_of:
            return
        self.crop_of = obj.object_id
        crop = self.query_one("#crop", Picture)
        caption = f"{obj.label} #{obj.track_id}"
        if not obj.has_snapshot:
            crop.say("no snapshot of this object", caption=caption)
            return
        crop.say("fetching…", caption=caption)
        self._fetch_crop(obj, caption)

    def _fetch_crop(self, obj: TrackedObjectView, caption: str) -> None:
        client = self.fleet.client

        def work() -> None:
            try:
                picture = client.get_snapshot(obj.object_id, obj.device_id)
            except ControllerError as err:
                self.app.call_from_thread(self._crop_failed, obj.object_id, err.details or err.code)
                return
            self.app.call_from_thread(self._crop_arrived, obj.object_id, picture, caption)

        self.run_worker(work, thread=True, group="crop", exclusive=True, exit_on_error=False)

    def _crop_arrived(self, object_id: str, picture: PictureView, caption: str) -> None:
        if object_id == self.crop_of:
            self.query_one("#crop", Picture).show(picture.jpeg, caption)

    def _crop_failed(self, object_id: str, why: str) -> None:
        if object_id == self.crop_of:
            self.query_one("#crop", Picture).say(f"no snapshot: {why}", "red")
