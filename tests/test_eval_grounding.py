"""Grounding: box parsing, hand-computed IoU, rescaling from 0-1000, Acc@0.5 / Acc@0.75 / mIoU."""

import pytest

from rsfuse.eval import box_iou, grounding_scores, parse_box, to_pixels


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[100,200,300,400]]", [100, 200, 300, 400]),
        ("The object is at [ 10, 20 , 30, 40 ].", [10, 20, 30, 40]),
        ("{<12><5><40><60>}", [12, 5, 40, 60]),
        ("(1.5, 2, 3, 4)", [1.5, 2, 3, 4]),
        ("[300, 400, 100, 200]", [100, 200, 300, 400]),  # corners reordered
        ("bbox: 5 6 7 8", [5, 6, 7, 8]),  # last resort: first four numbers
        ([[1, 2, 3, 4]], [1, 2, 3, 4]),
        ((1, 2, 3, 4), [1, 2, 3, 4]),
        ("I cannot find it", None),
        ("[1, 2, 3]", None),
        ("", None),
        (None, None),
        ([1, 2, "a", 4], None),
    ],
)
def test_parse_box(text, expected):
    assert parse_box(text) == expected


def test_iou_by_hand():
    # Overlap 5x5 = 25; union 100 + 100 - 25 = 175.
    assert box_iou([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(25 / 175)
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching edges
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0  # empty union
    # Contained box: 4x4 inside 8x8 -> 16/64.
    assert box_iou([0, 0, 8, 8], [2, 2, 6, 6]) == pytest.approx(0.25)


def test_iou_is_scale_invariant_and_rescaling_clamps():
    assert to_pixels([100, 200, 500, 1100], (200, 100)) == [20.0, 20.0, 100.0, 100.0]
    a, b = [100, 100, 600, 400], [200, 150, 700, 500]
    pixels = [to_pixels(box, (640, 480)) for box in (a, b)]
    assert box_iou(*pixels) == pytest.approx(box_iou(a, b))


def test_grounding_scores_by_hand():
    records = [
        {"box": [0, 0, 100, 100], "prediction": "[[0,0,100,100]]"},  # IoU 1
        {"box": [0, 0, 100, 100], "prediction": "[[0,0,100,60]]"},  # IoU 0.6
        {"box": [0, 0, 100, 100], "prediction": "[[50,50,150,150]]"},  # IoU 2500/17500
        {"box": [0, 0, 100, 100], "prediction": "no idea"},  # unparseable -> 0
    ]
    scores = grounding_scores(records)
    assert scores["Acc@0.5"] == pytest.approx(2 / 4)
    assert scores["Acc@0.75"] == pytest.approx(1 / 4)
    assert scores["mIoU"] == pytest.approx((1 + 0.6 + 2500 / 17500 + 0) / 4)
    assert scores["unparseable"] == 1 and scores["total"] == 4
    assert "IoU" in scores["protocol"]


def test_grounding_scores_mixed_scales():
    # Pixel ground truth on a 200x100 image; prediction on 0-1000 -> [20, 10, 60, 50] pixels: exact hit.
    pixel = {"box": [20, 10, 60, 50], "box_scale": "pixel", "image_size": (200, 100), "prediction": "[100,100,300,500]"}
    # VRSBench referring ground truth on 0-100 vs prediction on 0-1000, no size needed.
    relative = {"box": "{<10><20><30><60>}", "box_scale": 100, "prediction": "[[100, 200, 300, 600]]"}
    scores = grounding_scores([pixel, relative])
    assert scores["mIoU"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="need image_size"):
        grounding_scores([{"box": [1, 2, 3, 4], "box_scale": "pixel", "prediction": "[1,2,3,4]"}])
    with pytest.raises(ValueError, match="ground-truth box cannot be parsed"):
        grounding_scores([{"box": "none", "prediction": "[1,2,3,4]"}])
