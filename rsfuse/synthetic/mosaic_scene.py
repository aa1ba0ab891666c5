"""``rsfuse synth OUT --large-scene --mosaic N``: a large georeferenced scene made of N × N synthetic benchmark images,
for measuring whole-scene answers of models trained on the benchmark (BENCHMARKS.md, "Whole scenes").

`rsfuse.synthetic.large_scene`'s scene draws objects at their real sizes in metres; a model trained on the
benchmark's 224-px images has never seen those. This scene is the benchmark's own images (``draw_image`` of dataset
``data_seed``, images 0 … N² − 1: another seed than the training data's gives images no model was trained on) laid
edge to edge in a GeoTIFF, so a model's tiles at native resolution, aligned with the grid, are benchmark images and
the whole-scene truth is every object of every image. It writes::

    OUT/scene.tif                   GeoTIFF: 3 bands (red, green, blue; colour interpretation set), uint8, no nodata,
                                    tiled by image, deflate; a projected CRS (default EPSG:32633) and a north-up
                                    affine transform (default origin 500 000 E, 5 000 000 N, ``gsd`` m pixels)
    OUT/objects.geojson             the ground truth, RFC 7946 (EPSG:4326): one polygon per object, with its kind,
                                    colour, image index and pixel box [x0, y0, x1, y1) in the raster
    OUT/objects.EPSG_<code>.geojson the same polygons in the raster's CRS
    OUT/scene.json                  the settings, the transform, counts per kind, and per image (row-major) its
                                    scene class, the kinds the benchmark asks counts of there, its counts

Written one row of images at a time (never the whole raster in memory).
"""

from pathlib import Path

import numpy as np

from rsfuse.synthetic.drawing import draw_image
from rsfuse.synthetic.large_scene import write_truth
from rsfuse.synthetic.scene import OBJECT_KINDS

__all__ = ["write_mosaic_scene"]


def write_mosaic_scene(out_dir, *, grid: int, image_size: int = 224, data_seed: int = 1, gsd: float = 0.5,
                       epsg: int = 32633, origin: tuple[float, float] = (500_000.0, 5_000_000.0)) -> dict:
    """Write the mosaic scene (see the module docstring) into ``out_dir``; returns ``scene.json``'s content."""
    import pyproj
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if grid < 1 or image_size < 112 or image_size % 16 or gsd <= 0:
        raise ValueError(f"mosaic scene: grid >= 1, image_size >= 112 and a multiple of 16, gsd > 0 (got grid {grid}, "
                         f"image_size {image_size}, gsd {gsd})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = grid * image_size
    transform = from_origin(origin[0], origin[1], gsd, gsd)
    crs = pyproj.CRS.from_epsg(epsg)
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=crs.to_wkt(),
                   transform=transform, tiled=True, blockxsize=image_size, blockysize=image_size, compress="deflate",
                   interleave="pixel", BIGTIFF="IF_SAFER")
    objects: list[dict] = []
    images: list[dict] = []
    with rasterio.open(out / "scene.tif", "w", **profile) as dataset:
        dataset.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
        for row in range(grid):
            strip = np.zeros((3, image_size, size), dtype=np.uint8)
            for col in range(grid):
                index = row * grid + col
                scene, pixels, _ = draw_image(data_seed, index, size=image_size, questions_per_image=1)
                strip[:, :, col * image_size:(col + 1) * image_size] = np.moveaxis(pixels, -1, 0)
                left, top = col * image_size, row * image_size
                images.append({"index": index, "scene": scene.scene_class, "candidate_kinds": list(scene.candidate_kinds),
                               "counts": {kind: scene.count(kind) for kind in OBJECT_KINDS}})
                for item in scene.objects:
                    x0, y0, x1, y1 = item.bbox
                    objects.append({"id": len(objects), "kind": item.kind, "colour": item.colour, "image": index,
                                    "pixels": [left + x0, top + y0, left + x1, top + y1],
                                    "metres": [(x1 - x0) * gsd, (y1 - y0) * gsd]})
            dataset.write(strip, window=Window(0, row * image_size, size, image_size))
    return write_truth(out, objects, transform, epsg,
                       {"mosaic": True, "grid": grid, "image_size": image_size, "data_seed": data_seed, "size": size,
                        "gsd": gsd, "epsg": epsg, "origin": list(origin)}, images=images)


def main(argv: list[str] | None = None) -> int:
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="rsfuse synth --large-scene --mosaic", description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--large-scene", action="store_true", required=True)
    parser.add_argument("--mosaic", type=int, required=True, help="images a side (the scene is N x N images)")
    parser.add_argument("--image-size", type=int, default=224, help="pixels a side of each image (default 224)")
    parser.add_argument("--data-seed", type=int, default=1, help="benchmark dataset seed of the images (default 1)")
    parser.add_argument("--gsd", type=float, default=0.5, help="metres per pixel (default 0.5)")
    parser.add_argument("--epsg", type=int, default=32633, help="projected CRS (default 32633, UTM 33N)")
    args = parser.parse_args(argv)
    try:
        meta = write_mosaic_scene(args.out, grid=args.mosaic, image_size=args.image_size, data_seed=args.data_seed,
                                  gsd=args.gsd, epsg=args.epsg)
    except (ValueError, OSError) as error:
        from rsfuse.recipes.errors import debug_requested, report_expected  # noqa: PLC0415  (CLI error path)

        return report_expected("rsfuse synth", error, debug=debug_requested(argv or []))
    print(f"wrote {args.out}/scene.tif ({meta['size']} x {meta['size']} px, {meta['grid']} x {meta['grid']} benchmark "
          f"images of seed {meta['data_seed']}, EPSG:{meta['epsg']}, {meta['objects']} objects: {meta['counts']})")
    return 0
