import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from edgefleet.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RawImage(_message.Message):
    __slots__ = ("pixels", "width", "height", "format")
    class Format(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        FORMAT_UNSPECIFIED: _ClassVar[RawImage.Format]
        BGR8: _ClassVar[RawImage.Format]
        RGB8: _ClassVar[RawImage.Format]
        GRAY8: _ClassVar[RawImage.Format]
    FORMAT_UNSPECIFIED: RawImage.Format
    BGR8: RawImage.Format
    RGB8: RawImage.Format
    GRAY8: RawImage.Format
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    pixels: bytes
    width: int
    height: int
    format: RawImage.Format
    def __init__(self, pixels: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., format: _Optional[_Union[RawImage.Format, str]] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("encoded", "raw")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawImage
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ...) -> None: ...

class DetectRequest(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: Image
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("detections", "width", "height")
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    detections: _containers.RepeatedCompositeFieldContainer[_types_pb2.Detection]
    width: int
    height: int
    def __init__(self, detections: _Optional[_Iterable[_Union[_types_pb2.Detection, _Mapping]]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class StreamFrame(_message.Message):
    __slots__ = ("stream_id", "frame_index", "capture_time", "image")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    frame_index: int
    capture_time: _timestamp_pb2.Timestamp
    image: Image
    def __init__(self, stream_id: _Optional[str] = ..., frame_index: _Optional[int] = ..., capture_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class FrameError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class StreamResult(_message.Message):
    __slots__ = ("stream_id", "frame_index", "capture_time", "detections", "error", "dropped", "width", "height", "server_ms")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_INDEX_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    SERVER_MS_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    frame_index: int
    capture_time: _timestamp_pb2.Timestamp
    detections: _containers.RepeatedCompositeFieldContainer[_types_pb2.Detection]
    error: FrameError
    dropped: int
    width: int
    height: int
    server_ms: float
    def __init__(self, stream_id: _Optional[str] = ..., frame_index: _Optional[int] = ..., capture_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., detections: _Optional[_Iterable[_Union[_types_pb2.Detection, _Mapping]]] = ..., error: _Optional[_Union[FrameError, _Mapping]] = ..., dropped: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., server_ms: _Optional[float] = ...) -> None: ...
