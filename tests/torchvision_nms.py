"""Test and benchmark shim: a `torchvision.ops.nms` in plain torch, for a torchvision whose C++ ops do not load.

Not product code. Ultralytics' predict imports torchvision and calls `torchvision.ops.nms`
(its exporter traces `torchvision::nms` for `nms=True` graphs). The development environment
here installs a torchvision wheel built for another torch (a CUDA torchvision beside the CPU-only
torch), so its `_C.so` fails to link and `import torchvision` itself fails on its fake
registration of `torchvision::nms`. The product refuses such an environment with a clear
`BackendUnavailable` (`models.backends.ultralytics.check_torchvision_nms`); the real fix is a
torchvision built for the installed torch.

So that the Ultralytics tests and benchmarks still run here, `install_torchvision_nms_fallback`
then, and only then:
1. defines the `torchvision::nms` operator with `torch.library`, implemented by `torch_nms`
   below (greedy NMS in plain torch), and a schema-only `torchvision::qnms`: torchvision's
   import registers fake kernels for both, so it imports again;
2. routes `torchvision.ops.nms` to that operator (torchvision's wrapper refuses to call any op
   while its `_C` is missing), and says so in a WARNING.
Every other torchvision C++ op stays unavailable. With a working torchvision nothing is touched.
The same operator lets an `nms=True` ONNX export trace: torchvision's ONNX symbolic for
`torchvision::nms` turns it into NonMaxSuppression. Tests install it from the `ultralytics_env`
session fixture (tests/ultralytics_env.py); scripts/bench/detector.py installs it and records
which NMS ran ("torchvision" or "test-shim") in its JSON.

Ultralytics' NMS time is not representative under the shim: `torch_nms` steps in Python once
per kept box where torchvision's kernel runs in C++.
"""
from __future__ import annotations

import importlib.util
import logging
import threading

logger = logging.getLogger(__name__)

NATIVE, SHIM = "torchvision", "test-shim"


def torch_nms(boxes, scores, iou_threshold: float):
    """Greedy NMS in plain torch with `torchvision.ops.nms` semantics.

    boxes (n, 4) xyxy, scores (n,): returns int64 indices of the kept boxes, best score first.
    A box is dropped when its IoU with a better-scoring kept box is above `iou_threshold`
    (0/0 IoU of empty boxes counts as no overlap, as in torchvision). One vectorized step per
    kept box, like `models.yolo.nms`; class-aware callers offset boxes per class, as Ultralytics does.
    """
    import torch

    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = torch.argsort(scores, descending=True, stable=True)
    keep = []
    while order.numel():
        best, rest = order[0], order[1:]
        keep.append(best)
        inter = ((torch.minimum(x2[best], x2[rest]) - torch.maximum(x1[best], x1[rest])).clamp(min=0)
                 * (torch.minimum(y2[best], y2[rest]) - torch.maximum(y1[best], y1[rest])).clamp(min=0))
        iou = inter / (areas[best] + areas[rest] - inter)
        order = rest[~(iou > iou_threshold)]
    return torch.stack(keep)


_LOCK = threading.Lock()
_library = None  # the torch.library.Library holding our definitions; alive for the process


def _op_exists(name: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _define_ops() -> None:
    """Define torchvision::nms (our `torch_nms`) and torchvision::qnms (schema only), once."""
    global _library
    import torch

    if _library is not None or _op_exists("nms"):
        return
    library = torch.library.Library("torchvision", "FRAGMENT")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.impl("nms", torch_nms, "CompositeExplicitAutograd")
    if not _op_exists("qnms"):  # torchvision registers a fake kernel for it at import; no kernel here
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library = library


def _nms_through_registered_op(boxes, scores, iou_threshold: float):
    """`torchvision.ops.nms` without its `_assert_has_ops` gate: calls the torchvision::nms operator."""
    import torch

    return torch.ops.torchvision.nms(boxes, scores, float(iou_threshold))


def install_torchvision_nms_fallback() -> str:
    """Make `torchvision.ops.nms` work; returns "torchvision" (its own op, untouched) or "test-shim".

    Idempotent and thread-safe. Raises ModuleNotFoundError when torchvision is not installed,
    and lets any other import error of torchvision's through.
    """
    with _LOCK:
        if importlib.util.find_spec("torchvision") is None:
            raise ModuleNotFoundError("torchvision is not installed", name="torchvision")
        import torch  # torchvision needs torch imported first

        try:
            import torchvision
        except RuntimeError as err:
            if "torchvision::nms" not in str(err):
                raise
            _define_ops()  # its import registers fake kernels for these two operators
            import torchvision
        if torchvision.extension._has_ops():
            return NATIVE
        _define_ops()
        if torchvision.ops.nms is not _nms_through_registered_op:
            torchvision.ops.nms = torchvision.ops.boxes.nms = _nms_through_registered_op
            logger.warning("torchvision %s has no C++ ops here (its build does not match torch %s); "
                           "torchvision.ops.nms now runs the test shim tests.torchvision_nms.torch_nms",
                           torchvision.__version__, torch.__version__)
        return SHIM
