"""``rsfuse synth --large-scene --mosaic N``: the benchmark's own images laid out as one georeferenced scene."""

import json

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")

from rsfuse.synthetic.benchmark import main as synth_main  # noqa: E402
from rsfuse.synthetic.drawing import draw_image  # noqa: E402


def test_mosaic_tiles_are_the_benchmark_images_and_the_truth_is_their_objects(tmp_path):
    out = tmp_path / "mosaic"
    assert synth_main([str(out), "--large-scene", "--mosaic", "3", "--image-size", "112", "--data-seed", "5",
                       "--gsd", "2.0"]) == 0
    meta = json.loads((out / "scene.json").read_text())
    scenes = [draw_image(5, index, size=112, questions_per_image=1) for index in range(9)]
    with rasterio.open(out / "scene.tif") as dataset:
        assert (dataset.width, dataset.height, dataset.count, dataset.dtypes[0]) == (336, 336, 3, "uint8")
        for index, (_, pixels, _) in enumerate(scenes):
            row, col = divmod(index, 3)
            window = rasterio.windows.Window(col * 112, row * 112, 112, 112)
            assert np.array_equal(np.moveaxis(dataset.read(window=window), 0, -1), pixels), index
        transform = dataset.transform
    expected = {kind: sum(scene.count(kind) for scene, _, _ in scenes) for kind in meta["counts"]}
    assert meta["counts"] == expected and meta["objects"] == sum(expected.values())
    for index, (scene, _, _) in enumerate(scenes):
        assert meta["images"][index] == {"index": index, "scene": scene.scene_class,
                                         "candidate_kinds": list(scene.candidate_kinds),
                                         "counts": {kind: scene.count(kind) for kind in meta["counts"]}}
    features = json.loads((out / "objects.EPSG_32633.geojson").read_text())["features"]
    first = next(feature for feature in features if feature["properties"]["image"] == 4)  # the centre image
    scene = scenes[4][0]
    x0, y0, x1, y1 = scene.objects[0].bbox
    # 2 m pixels from (500 000 E, 5 000 000 N), north up: the object's corner in map coordinates, computed by hand
    assert first["properties"]["pixels"] == [112 + x0, 112 + y0, 112 + x1, 112 + y1]
    xs = [point[0] for point in first["geometry"]["coordinates"][0]]
    ys = [point[1] for point in first["geometry"]["coordinates"][0]]
    assert min(xs) == 500_000 + 2.0 * (112 + x0) and max(ys) == 5_000_000 - 2.0 * (112 + y0)
    assert transform.a == 2.0 and transform.e == -2.0
