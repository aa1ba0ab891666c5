"""Memory stays bounded: a subprocess answering a sparse 20 000 x 20 000 GeoTIFF (1.2 GB of pixels) at a coarse GSD
peaks, by ``ru_maxrss``, at most 500 MB above the same process answering one tile."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("rasterio")

from factories.mfrsvlm import make_model  # noqa: E402
from factories.tokenizer import tiny_tokenizer_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LIMIT_MB = 500

SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, rasterio
    from rasterio.enums import ColorInterp
    from rasterio.transform import from_origin
    from rasterio.windows import Window
    from rsfuse.model import MFRSVLM
    from rsfuse.processor import MFRSVLMProcessor
    from rsfuse.scene import ask_scene

    model_dir, folder = sys.argv[1], sys.argv[2]
    rgb = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
    def write(path, side, windows):
        profile = dict(driver="GTiff", width=side, height=side, count=3, dtype="uint8", nodata=0, crs="EPSG:32633",
                       transform=from_origin(500000, 5000000, 0.5, 0.5), tiled=True, blockxsize=512,
                       blockysize=512, compress="deflate", SPARSE_OK="TRUE")
        with rasterio.Env(GDAL_CACHEMAX=16 << 20), rasterio.open(path, "w", **profile) as dataset:
            dataset.colorinterp = rgb
            for x, y in windows:
                dataset.write(np.full((3, 512, 512), 120, dtype=np.uint8), window=Window(x, y, 512, 512))
    write(folder + "/tile.tif", 5000, [(0, 0)])
    write(folder + "/sparse.tif", 20000, [(x, y) for x in range(0, 20000, 4096) for y in range(0, 20000, 4096)])
    model = MFRSVLM.from_pretrained(model_dir)
    processor = MFRSVLMProcessor.from_pretrained(model_dir)
    options = dict(tile_size=32, gsd=78.125, overlap=0.0, kind="count", max_new_tokens=2, batch_size=4, model_id="m")
    one = ask_scene(model, processor, folder + "/tile.tif", "How many cars?", out_dir=folder + "/one", **options)
    after_one = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scene = ask_scene(model, processor, folder + "/sparse.tif", "How many cars?", out_dir=folder + "/all", **options)
    after_all = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"one_tiles": len(one.records), "tiles": len(scene.records), "summary": scene.summary,
                      "after_one_kb": after_one, "after_all_kb": after_all}))
""")


@pytest.mark.slow
def test_sparse_20000_px_scene_stays_within_500_mb_of_one_tile(tmp_path):
    model_dir = tmp_path / "model"
    make_model(seed=5).save_pretrained(model_dir, tokenizer=tiny_tokenizer_dir())
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(model_dir), str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["one_tiles"] == 1 and report["tiles"] == 16  # 5000-px tiles: a 4 x 4 grid
    assert report["summary"]["answered"] == 16 and report["summary"]["errors"] == 0
    growth_mb = (report["after_all_kb"] - report["after_one_kb"]) / 1024
    print(f"peak RSS: {report['after_one_kb'] / 1024:.0f} MB after one tile, {growth_mb:+.0f} MB after the scene")
    assert growth_mb <= LIMIT_MB, report
