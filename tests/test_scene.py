"""``ask_scene`` / ``rsfuse scene`` end to end with a tiny random model: GeoJSON that shapely reads, footprints equal
to the tiles, nodata tiles skipped, resumed runs identical to uninterrupted ones, and bad inputs as one line."""

import json
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
shapely = pytest.importorskip("shapely")
pyproj = pytest.importorskip("pyproj")

from factories.mfrsvlm import make_model  # noqa: E402
from factories.scenes import corrupt_block, write_raster  # noqa: E402
from factories.tokenizer import tiny_tokenizer_dir  # noqa: E402
from rasterio.enums import ColorInterp  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402
from shapely.geometry import Polygon, shape  # noqa: E402

from rsfuse.cli import main as cli_main  # noqa: E402
from rsfuse.model import MFRSVLM  # noqa: E402
from rsfuse.processor import MFRSVLMProcessor  # noqa: E402
from rsfuse.scene import SceneError, ask_scene  # noqa: E402
from rsfuse.scene.answers import infer_kind, parse_answer  # noqa: E402
from rsfuse.scene.reading import SceneRaster  # noqa: E402
from rsfuse.synthetic.large_scene import write_large_scene  # noqa: E402

OUTPUTS = ("scene.geojson", "scene.EPSG_32633.geojson", "tiles.json", "tiles.csv", "summary.json", "overview.png")
RGB = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scene-model") / "model"
    make_model(seed=5).save_pretrained(folder, tokenizer=tiny_tokenizer_dir())
    return folder


@pytest.fixture(scope="module")
def loaded(model_dir):
    return MFRSVLM.from_pretrained(model_dir), MFRSVLMProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def scene_2000(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scene-2000")
    write_large_scene(folder, size=2000, seed=1, border=64, density=0.2)
    return folder / "scene.tif"


def test_kind_rule_and_answer_parsing():
    assert infer_kind("Is there a ship in the image?") == "existence"
    assert infer_kind("How many vehicles are there?") == "count"
    assert infer_kind("{VG} the red plane") == "grounding"
    assert infer_kind("Where are the storage tanks?") == "grounding"
    assert infer_kind("Describe the image.") == "free-form"
    assert parse_answer("Yes, there is.", "existence").present is True
    assert parse_answer("no", "existence").present is False
    assert parse_answer("maybe", "existence").present is None
    assert parse_answer("There are three.", "count").count == 3
    assert parse_answer("12 ships", "count").count == 12
    assert parse_answer("[[10, 20, 300, 400], [0,0,1000,1000]] and [5,5,2000,9]", "grounding").boxes == (
        (10.0, 20.0, 300.0, 400.0), (0.0, 0.0, 1000.0, 1000.0))


def test_synthetic_large_scene_is_georeferenced_with_its_objects(scene_2000):
    folder = scene_2000.parent
    meta = json.loads((folder / "scene.json").read_text())
    with rasterio.open(scene_2000) as dataset:
        assert (dataset.width, dataset.count, dataset.nodata, dataset.crs.to_epsg()) == (2000, 4, 0, 32633)
        assert tuple(dataset.transform)[:6] == (0.5, 0.0, 500000.0, 0.0, -0.5, 5000000.0)
        assert list(dataset.colorinterp)[:3] == RGB
        assert dataset.read(1, window=((0, 10), (0, 10))).max() == 0  # the nodata border
        truth = json.loads((folder / "objects.EPSG_32633.geojson").read_text())["features"]
        assert len(truth) == meta["objects"] > 10
        to_wgs84 = pyproj.Transformer.from_crs(32633, 4326, always_xy=True)
        wgs84 = json.loads((folder / "objects.geojson").read_text())["features"]
        for feature, lonlat in zip(truth, wgs84):
            x0, y0, x1, y1 = feature["properties"]["pixels"]
            polygon = shape(feature["geometry"])
            assert polygon.bounds == pytest.approx((500000 + 0.5 * x0, 5000000 - 0.5 * y1, 500000 + 0.5 * x1,
                                                    5000000 - 0.5 * y0))
            lon, lat = to_wgs84.transform(polygon.centroid.x, polygon.centroid.y)
            assert shape(lonlat["geometry"]).centroid.coords[0] == pytest.approx((lon, lat), abs=1e-7)
            pixel = dataset.read([1, 2, 3], window=((y0, y0 + 1), (x0, x0 + 1))).reshape(3) // 16
            colour = {"red": (200, 40, 40), "blue": (40, 60, 200), "white": (240, 240, 240),
                      "yellow": (230, 210, 40), "green": (40, 170, 60)}[feature["properties"]["colour"]]
            assert tuple(int(v) for v in pixel) == pytest.approx(colour, abs=1)


@pytest.mark.slow
def test_rsfuse_scene_writes_geojson_whose_footprints_are_the_tiles(model_dir, scene_2000, tmp_path, capsys):
    out = tmp_path / "out"
    # 32-px model tiles at GSD 7.8125 m = 500 native pixels: a 4 x 4 grid without overlap (a count question)
    code = cli_main(["scene", "--model", str(model_dir), "--image", str(scene_2000), "--question",
                     "How many ships are there?", "--out", str(out), "--gsd", "7.8125", "--max-new-tokens", "4",
                     "--batch-size", "5", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert all((out / name).is_file() for name in OUTPUTS)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["kind"], summary["tiles"], summary["tiling"]["side"]) == ("count", 16, 500)
    assert summary["complete"]
    native = json.loads((out / "scene.EPSG_32633.geojson").read_text())
    wgs84 = json.loads((out / "scene.geojson").read_text())
    assert "crs" not in wgs84 and native["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    tiles = [f for f in native["features"] if f["properties"]["feature"] == "tile"]
    assert len(tiles) == 16
    to_utm = pyproj.Transformer.from_crs(4326, 32633, always_xy=True)
    for feature, lonlat in zip(tiles, [f for f in wgs84["features"] if f["properties"]["feature"] == "tile"]):
        p = feature["properties"]
        polygon = shape(feature["geometry"])
        assert polygon.is_valid and polygon.exterior.is_ccw
        expected = Polygon([(500000 + 0.5 * x, 5000000 - 0.5 * y) for x, y in
                            ((p["x"], p["y"]), (p["x"] + 500, p["y"]), (p["x"] + 500, p["y"] + 500),
                             (p["x"], p["y"] + 500))])
        assert polygon.symmetric_difference(expected).area < 1e-6
        back = shape(lonlat["geometry"])
        assert back.is_valid and back.exterior.is_ccw
        xs, ys = to_utm.transform(*back.exterior.xy)
        assert Polygon(zip(xs, ys)).symmetric_difference(expected).area < 1e-3
    union = shapely.union_all([shape(f["geometry"]) for f in tiles])
    assert union.area == pytest.approx(1000.0 * 1000.0)  # every pixel of the 2000-px scene (0.5 m) is covered
    csv_rows = (out / "tiles.csv").read_text().splitlines()
    assert len(csv_rows) == 17 and csv_rows[0].startswith("key,index,row,col")


@pytest.mark.slow
def test_interrupted_and_resumed_run_gives_identical_outputs(loaded, scene_2000, tmp_path):
    model, processor = loaded
    options = dict(gsd=10.0, kind="existence", overlap=0.25, max_new_tokens=3, batch_size=4, model_id="m")
    whole = ask_scene(model, processor, scene_2000, "Is there a ship?", out_dir=tmp_path / "whole", **options)
    part = ask_scene(model, processor, scene_2000, "Is there a ship?", out_dir=tmp_path / "resumed", stop_after=2,
                     **options)
    assert not part.summary["complete"] and len(part.records) == 8
    lines = (tmp_path / "resumed" / "tiles.jsonl").read_text()
    (tmp_path / "resumed" / "tiles.jsonl").write_text(lines + '{"chunk": 2, "recor')  # torn by the interruption
    resumed = ask_scene(model, processor, scene_2000, "Is there a ship?", out_dir=tmp_path / "resumed", **options)
    assert resumed.summary["complete"] and len(resumed.records) == len(whole.records) == 16
    for name in OUTPUTS:
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    with pytest.raises(SceneError, match=r"differs in prompt_ids, question\)"):
        ask_scene(model, processor, scene_2000, "Is there a plane?", out_dir=tmp_path / "whole", **options)
    with pytest.raises(SceneError, match=r"differs in model\)"):
        ask_scene(model, processor, scene_2000, "Is there a ship?", out_dir=tmp_path / "whole",
                  **{**options, "model_id": "other"})
    with pytest.raises(SceneError, match=r"differs in tiling\)"):
        ask_scene(model, processor, scene_2000, "Is there a ship?", out_dir=tmp_path / "whole",
                  **{**options, "overlap": 0.5})
    again = ask_scene(model, processor, scene_2000, "Is there a plane?", out_dir=tmp_path / "whole", overwrite=True,
                      **options)
    assert again.summary["complete"] and again.question == "Is there a plane?"


def test_nodata_tiles_are_skipped_and_pixel_images_answer_in_pixels(loaded, tmp_path):
    model, processor = loaded
    data = np.full((3, 128, 256), 90, dtype=np.uint8)
    data[:, :, :128] = 0  # the left half is nodata
    tif = write_raster(tmp_path / "half.tif", data, nodata=0, colorinterp=RGB)
    result = ask_scene(model, processor, tif, "Describe it.", tile_size=64, overlap=0.0, max_new_tokens=2)
    status = {(r["row"], r["col"]): r["status"] for r in result.records}
    assert [status[(0, c)] for c in range(4)] == ["nodata", "nodata", "answered", "answered"]
    assert result.summary["nodata"] == 4 and result.summary["answered"] == 4
    from PIL import Image

    Image.fromarray(np.full((100, 150, 3), 120, dtype=np.uint8)).save(tmp_path / "plain.png")
    plain = ask_scene(model, processor, tmp_path / "plain.png", "Is there a car?", tile_size=64, overlap=0.0,
                      max_new_tokens=2, out_dir=tmp_path / "plain")
    assert not plain.info.georeferenced and not (tmp_path / "plain" / "scene.geojson").exists()
    features = json.loads((tmp_path / "plain" / "scene.pixel.geojson").read_text())["features"]
    assert shape(features[-1]["geometry"]).bounds == (86.0, 36.0, 150.0, 100.0)  # the last tile, shifted inward


def test_sixteen_bit_scene_gets_one_stretch_without_seams(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(1000, 3000, (3, 256, 256), dtype=np.uint16)
    data[:, 0:4, 0:4] = 2000
    data[:, 200:204, 200:204] = 2000
    tif = write_raster(tmp_path / "deep.tif", data, colorinterp=RGB)
    with SceneRaster(tif) as raster:
        low, high = raster.info.stretch[0]
        values = data[0][rng.random((256, 256)) < 1.0]
        assert low == pytest.approx(np.percentile(values, 2), rel=0.02)
        assert high == pytest.approx(np.percentile(values, 98), rel=0.02)
        first, _ = raster.read(0, 0, 4, 4, 4, 4)
        second, _ = raster.read(200, 200, 4, 4, 4, 4)
    assert (first == second).all() and 100 < int(first[0, 0, 0]) < 155


def _cli_error(args, capsys) -> str:
    code = cli_main(["scene", *args])
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rsfuse scene: "), captured.err
    return lines[0]


def test_bad_inputs_are_one_line_each(model_dir, tmp_path, capsys):
    base = ["--model", str(model_dir), "--question", "Is there a car?", "--out", str(tmp_path / "out"),
            "--tile-size", "64", "--no-progress"]
    four = write_raster(tmp_path / "four.tif", np.ones((4, 64, 64), dtype=np.uint16),
                        colorinterp=[ColorInterp.gray] + [ColorInterp.undefined] * 3)
    line = _cli_error([*base, "--image", str(four)], capsys)
    assert "no red/green/blue colour interpretation" in line and "3: undefined" in line
    assert "not three of its 4 band(s)" in _cli_error([*base, "--image", str(four), "--bands", "0,1,7"], capsys)
    local = 'LOCAL_CS["arbitrary",UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
    odd = write_raster(tmp_path / "odd.tif", np.ones((3, 64, 64), dtype=np.uint8), crs=local, colorinterp=RGB)
    assert "pyproj cannot" in _cli_error([*base, "--image", str(odd)], capsys)
    rgb = write_raster(tmp_path / "rgb.tif", np.ones((3, 64, 64), dtype=np.uint8), colorinterp=RGB)
    assert "finer than the raster's native 0.5" in _cli_error([*base, "--image", str(rgb), "--gsd", "0.1"], capsys)
    assert "over the scene limit of 1000" in _cli_error([*base, "--image", str(rgb), "--max-scene-pixels", "1000"],
                                                        capsys)
    (tmp_path / "notes.txt").write_text("not a raster")
    assert "not a GeoTIFF/COG" in _cli_error([*base, "--image", str(tmp_path / "notes.txt")], capsys)
    assert "file not found" in _cli_error([*base, "--image", str(tmp_path / "missing.tif")], capsys)


def test_corrupt_tile_is_an_error_for_that_tile_and_the_rest_go_on(model_dir, tmp_path, capsys):
    data = np.random.default_rng(0).integers(0, 255, (3, 512, 512), dtype=np.uint8)
    tif = write_raster(tmp_path / "broken.tif", data, colorinterp=RGB, block=128)
    corrupt_block(tmp_path / "broken.tif", 5)  # block row 1, column 1 of 4 x 4
    # at native GSD each tile is one block (a coarser read's resampling may also touch the neighbours' blocks)
    out = tmp_path / "out"
    code = cli_main(["scene", "--model", str(model_dir), "--image", str(tif), "--question", "Is there a car?",
                     "--out", str(out), "--tile-size", "128", "--overlap", "0", "--max-new-tokens",
                     "2", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    records = json.loads((out / "tiles.json").read_text())
    errors = [r for r in records if r["status"] == "error"]
    assert [(r["row"], r["col"]) for r in errors] == [(1, 1)]
    assert "window x=128 y=128 128x128 cannot be read" in errors[0]["error"]
    assert sum(r["status"] == "answered" for r in records) == 15
    assert json.loads((out / "summary.json").read_text())["errors"] == 1


def _scene_command(args: list[str], processes: int):
    import os
    import socket
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    if processes == 1:
        command = [sys.executable, "-m", "rsfuse", "scene", *args]
    else:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                   "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "rsfuse", "scene", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_torchrun_two_processes_write_what_one_writes(model_dir, scene_2000, tmp_path):
    common = ["--model", str(model_dir), "--image", str(scene_2000), "--question", "Where are the ships?",
              "--gsd", "10", "--max-new-tokens", "4", "--batch-size", "3", "--no-progress"]
    single = _scene_command([*common, "--out", str(tmp_path / "single")], 1)
    assert single.returncode == 0, single.stderr
    sharded = _scene_command([*common, "--out", str(tmp_path / "sharded")], 2)
    assert sharded.returncode == 0, sharded.stderr
    for name in OUTPUTS:
        assert (tmp_path / "sharded" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name
    ranks = sorted(path.name for path in (tmp_path / "sharded").glob("tiles.rank*.jsonl"))
    assert ranks == ["tiles.rank0.jsonl", "tiles.rank1.jsonl"]
    per_rank = [len((tmp_path / "sharded" / name).read_text().splitlines()) - 1 for name in ranks]
    assert per_rank == [3, 3]  # 16 tiles in 6 batches of 3: batches 0, 2, 4 on rank 0; 1, 3, 5 on rank 1


def test_dry_run_prints_tiles_and_an_estimate_and_writes_nothing(model_dir, tmp_path, capsys):
    data = np.full((3, 128, 256), 90, dtype=np.uint8)
    data[:, :, :128] = 0
    tif = write_raster(tmp_path / "half.tif", data, nodata=0, colorinterp=RGB)
    out = tmp_path / "out"
    code = cli_main(["scene", "--model", str(model_dir), "--image", str(tif), "--question", "Is there a car?",
                     "--out", str(out), "--tile-size", "64", "--overlap", "0", "--max-new-tokens", "2", "--dry-run"])
    printed = capsys.readouterr().out
    assert code == 0 and not out.exists()
    assert "8 tiles (2 rows x 4 cols) of 64 native px" in printed and "4 all nodata, 4 to answer" in printed
    assert "estimated time:" in printed


def test_window_over_the_per_window_limit_is_refused_for_that_tile(loaded, tmp_path):
    model, processor = loaded
    tif = write_raster(tmp_path / "rgb.tif", np.full((3, 256, 256), 90, dtype=np.uint8), colorinterp=RGB)
    result = ask_scene(model, processor, tif, "Is there a car?", tile_size=32, gsd=4.0, max_new_tokens=2,
                       max_window_pixels=100 * 100)  # a tile covers 256 x 256 native pixels (no overviews)
    assert result.summary["errors"] == 1
    assert "over the per-window limit of 10000 pixels" in result.records[0]["error"]
