"""An MJPEG-over-HTTP camera for tests: `multipart/x-mixed-replace` JPEG frames at a steady rate,
the way IP cameras serve `/stream.mjpg`. OpenCV (FFmpeg's mpjpeg demuxer) reads it as a live URL.

    camera = MjpegServer(frames, fps=15).start()   # frames: BGR images, served in a loop
    camera.url                                      # http://127.0.0.1:PORT/stream.mjpg
    camera.stop()                                   # the stream dies: every client sees EOF
    camera.start()                                  # back on the same port
"""
from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

BOUNDARY = "edgefleetframe"


class MjpegServer:
    def __init__(self, frames: list[np.ndarray], fps: float = 15.0, port: int = 0):
        self.jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes() for f in frames]
        self.fps = fps
        self.port = port
        self.frames_sent = 0
        self.clients = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._sending = threading.Event()
        self._sending.set()
        self._next = 0  # frames keep counting across restarts: the scene goes on

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> MjpegServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # http.server's name
                if self.path != "/stream.mjpg":
                    self.send_error(404)
                    return
                owner.clients += 1
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                try:
                    while not owner._stop.is_set():
                        if not owner._sending.wait(0.05):
                            continue  # stalled: the connection stays open, nothing comes
                        jpeg = owner.jpegs[owner._next % len(owner.jpegs)]
                        owner._next += 1
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                        self.wfile.flush()
                        owner.frames_sent += 1
                        owner._stop.wait(1.0 / owner.fps)
                except OSError:
                    pass  # the client went away
                self.close_connection = True

        self._stop.clear()
        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stall(self) -> None:
        """Stop sending, keep every connection open: a camera that hangs rather than hangs up."""
        self._sending.clear()

    def resume(self) -> None:
        self._sending.set()

    def stop(self) -> None:
        """End every stream (clients see EOF) and stop listening: new connections are refused."""
        self._stop.set()
        self._sending.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None
        time.sleep(0.2)  # the handlers notice the stop and close their sockets


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
