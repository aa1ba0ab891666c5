"""Visual grounding: box parsing, IoU, and Acc@0.5 / Acc@0.75 / mIoU.

Conventions:
- Boxes are ``[x1, y1, x2, y2]``. Model outputs use the 0-1000 scale of the instruction data (``[[x1,y1,x2,y2]]``).
- IoU is continuous (area = (x2 - x1) * (y2 - y1), no "+1 pixel"), as in the MF-RSVLM authors' ``evaluate_vg.py``;
  VRSBench's ``computeIoU`` adds 1 to each side (a pixel-inclusive convention) and gives slightly larger IoUs on
  small boxes.
- With an ``image_size`` (width, height) both boxes are brought to pixels (0-1000 values times size / 1000) and
  clamped to the image; without one, relative boxes (0-1000, 0-100, ...) are each divided by their scale (IoU is
  scale-invariant), and a pixel box can only be compared with another pixel box.
- Acc@t counts IoU >= t. A prediction that cannot be parsed scores IoU 0 and is counted in ``unparseable``.
"""

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rsfuse.eval.matching import record_field

__all__ = ["box_iou", "grounding_scores", "parse_box", "to_pixels"]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_BRACKETED_FOUR = re.compile(
    r"[\[\(\{<]\s*(-?\d+(?:\.\d+)?)\s*[,;\s>]\s*<?\s*(-?\d+(?:\.\d+)?)\s*[,;\s>]\s*<?\s*(-?\d+(?:\.\d+)?)"
    r"\s*[,;\s>]\s*<?\s*(-?\d+(?:\.\d+)?)\s*>?\s*[\]\)\}]"
)


def parse_box(text: Any) -> list[float] | None:
    """The first box in ``text`` as ``[x1, y1, x2, y2]`` floats, or ``None`` when there is none.

    Accepts ``"[[x1,y1,x2,y2]]"``, ``"[x1, y1, x2, y2]"``, ``"(x1,y1,x2,y2)"``, VRSBench's ``"{<x1><y1><x2><y2>}"``,
    a list/tuple of four numbers, and as a last resort the first four numbers of the text. Corners are reordered so
    that x1 <= x2 and y1 <= y2. Non-finite values give ``None``.
    """
    if isinstance(text, (list, tuple)):
        flat = list(text)
        while len(flat) == 1 and isinstance(flat[0], (list, tuple)):
            flat = list(flat[0])
        if len(flat) != 4 or not all(isinstance(value, (int, float)) for value in flat):
            return None
        values = [float(value) for value in flat]
    elif isinstance(text, str):
        match = _BRACKETED_FOUR.search(text)
        if match is not None:
            values = [float(group) for group in match.groups()]
        else:
            numbers = _NUMBER.findall(text)
            if len(numbers) < 4:
                return None
            values = [float(number) for number in numbers[:4]]
    else:
        return None
    if not all(math.isfinite(value) for value in values):
        return None
    x1, y1, x2, y2 = values
    return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]


def to_pixels(box: Sequence[float], image_size: Sequence[float], *, scale: float = 1000.0) -> list[float]:
    """Rescale a box from ``[0, scale]`` to pixels of an image of ``(width, height)``, clamped to the image."""
    width, height = float(image_size[0]), float(image_size[1])
    x1, y1, x2, y2 = (float(value) for value in box)
    return [
        min(max(x1 / scale * width, 0.0), width),
        min(max(y1 / scale * height, 0.0), height),
        min(max(x2 / scale * width, 0.0), width),
        min(max(y2 / scale * height, 0.0), height),
    ]


def box_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """Continuous IoU of two ``[x1, y1, x2, y2]`` boxes; 0 when the union is empty."""
    ax1, ay1, ax2, ay2 = (float(value) for value in box_a)
    bx1, by1, bx2, by2 = (float(value) for value in box_b)
    intersection = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1) + max(0.0, bx2 - bx1) * max(0.0, by2 - by1) - intersection
    return intersection / union if union > 0 else 0.0


def _scale_of(value: Any, *, index: int, field: str) -> float | None:
    if value in (None, "pixel", "pixels"):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"record {index}: {field} must be 'pixel' or a number such as 1000, got {value!r}") from None


def grounding_scores(records: Iterable[Mapping[str, Any]], *, thresholds: Sequence[float] = (0.5, 0.75)) -> dict:
    """Acc@t for each threshold, mIoU, and the count of unparseable predictions.

    Each record: ``box`` (ground truth, list or text), ``prediction`` (text or list), optional ``image_size``
    ``(width, height)``, ``box_scale`` of the ground truth (default 1000; ``"pixel"`` for pixel boxes) and
    ``prediction_scale`` (default 1000). Pixel-scale boxes need ``image_size`` when the other box is not in pixels.
    """
    ious: list[float] = []
    unparseable = 0
    for index, record in enumerate(records):
        truth = parse_box(record_field(record, ("box", "bbox", "ground_truth"), index=index, what="ground-truth box"))
        if truth is None:
            raise ValueError(f"record {index} ({record.get('id', 'no id')}): ground-truth box cannot be parsed")
        predicted = parse_box(record_field(record, ("prediction", "pred"), index=index, what="prediction"))
        if predicted is None:
            unparseable += 1
            ious.append(0.0)
            continue
        truth_scale = _scale_of(record.get("box_scale", 1000), index=index, field="box_scale")
        prediction_scale = _scale_of(record.get("prediction_scale", 1000), index=index, field="prediction_scale")
        image_size = record.get("image_size")
        if image_size is not None:
            if truth_scale is not None:
                truth = to_pixels(truth, image_size, scale=truth_scale)
            if prediction_scale is not None:
                predicted = to_pixels(predicted, image_size, scale=prediction_scale)
        elif truth_scale is not None and prediction_scale is not None:
            truth = [value / truth_scale for value in truth]
            predicted = [value / prediction_scale for value in predicted]
        elif truth_scale != prediction_scale:
            raise ValueError(
                f"record {index} ({record.get('id', 'no id')}): a pixel box and a relative box "
                f"(box_scale={record.get('box_scale', 1000)}, prediction_scale={record.get('prediction_scale', 1000)})"
                " need image_size to be compared"
            )
        ious.append(box_iou(truth, predicted))
    if not ious:
        raise ValueError("grounding_scores: no records")
    result: dict[str, Any] = {
        "protocol": "grounding (continuous IoU; boxes rescaled from 0-1000 to pixels when sizes given)"
    }
    for threshold in thresholds:
        result[f"Acc@{threshold:g}"] = sum(iou >= threshold for iou in ious) / len(ious)
    result["mIoU"] = sum(ious) / len(ious)
    result["unparseable"] = unparseable
    result["total"] = len(ious)
    result["notes"] = {
        "Acc@t": "fraction of records with IoU >= t",
        "mIoU": "mean IoU over all records; unparseable predictions count as IoU 0",
    }
    return result
