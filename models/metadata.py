"""What Ultralytics writes into an exported model's metadata, read without eval.

Ultralytics stores each metadata value as `str(python_value)`: `names` is a dict literal
("{0: 'person', ...}"), `imgsz` is [height, width], `args` the export arguments. An ONNX
export carries them as metadata_props, which come here as a dict of strings.
"""
from __future__ import annotations

import ast

from .errors import UnsupportedModel


def _literal(meta: dict[str, str], key: str, source: str):
    """A metadata value written with Python's str() (Ultralytics' way), read without eval."""
    try:
        return ast.literal_eval(meta[key])
    except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
        raise UnsupportedModel(f"{source}: metadata {key}={meta[key][:80]!r} is not a Python literal") from err


def ultralytics_metadata(meta: dict[str, str], source: str = "model") -> dict | None:
    """The metadata_props of an Ultralytics export, parsed; None when the file is not one.

    Returns names (list, by class index), imgsz ((height, width)), stride, task, end2end,
    batch and args (the export arguments: nms, dynamic, ...).
    """
    if not {"names", "task"} <= meta.keys() or not {"imgsz", "stride"} & meta.keys():
        return None
    names = _literal(meta, "names", source)
    if not isinstance(names, dict) or sorted(names) != list(range(len(names))) or not names:
        raise UnsupportedModel(f"{source}: metadata names must map class indices 0..n-1 to names, "
                               f"got {meta['names'][:80]!r}")
    imgsz = _literal(meta, "imgsz", source) if "imgsz" in meta else 640
    args = _literal(meta, "args", source) if "args" in meta else {}
    try:
        imgsz = (int(imgsz), int(imgsz)) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[-1]))
        numbers = {key: int(meta.get(key, default)) for key, default in (("stride", 32), ("batch", 1))}
    except (TypeError, ValueError, IndexError) as err:
        raise UnsupportedModel(f"{source}: metadata imgsz={meta.get('imgsz')!r}, stride={meta.get('stride')!r}, "
                               f"batch={meta.get('batch')!r} are not sizes") from err
    return {"names": [str(names[i]) for i in range(len(names))], "imgsz": imgsz, **numbers,
            "task": meta["task"], "end2end": meta.get("end2end") == "True",
            "args": args if isinstance(args, dict) else {}}
