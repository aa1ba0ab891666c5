"""Whole scenes: a GeoTIFF (or a plain image) in, georeferenced answers out.

`ask_scene(model, processor, path, question, **options)` reads the raster window by window (`reading`), cuts it
into tiles of the model's input size at a chosen ground sample distance (`tiling`), answers every tile through the
processor and the step-wise generation session (`answering`), aggregates the answers by the question's kind
(`answers`, `aggregate`), maps tile footprints and boxes through the affine transform and the CRS (`geometry`) and
writes GeoJSON, tile tables and an overview picture (`outputs`); answers are resumable (`store`). ``rsfuse scene``
is `cli`. Needs the ``geo`` extra (rasterio, pyproj, shapely).
"""

from rsfuse.scene.answering import SceneResult, ask_scene, plan_scene
from rsfuse.scene.answers import KINDS, infer_kind, parse_answer
from rsfuse.scene.reading import SceneError, SceneInfo, SceneRaster
from rsfuse.scene.tiling import Tile, TilePlan, plan_tiles

__all__ = ["KINDS", "SceneError", "SceneInfo", "SceneRaster", "SceneResult", "Tile", "TilePlan", "ask_scene",
           "infer_kind", "parse_answer", "plan_scene", "plan_tiles"]
