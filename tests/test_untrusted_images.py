"""Issue 32, defects 1 and 6: images are opened only with in-process raster decoders (an EPS file named .png never
reaches PIL's Ghostscript plugin, through `load_image`, `rsfuse predict` and `rsfuse eval`), and a many-band image
is refused by width x height x bands from its header, before its pixels are decoded."""

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import EpsImagePlugin, Image

from factories.console import one_line
from factories.eval_data import write_image
from factories.mfrsvlm import make_model
from factories.tokenizer import tiny_tokenizer_dir
from rsfuse.cli import main as rsfuse_main
from rsfuse.data import SAFE_FORMATS, ImageLoadError, load_image, open_image
from rsfuse.data.images import probe_image
from rsfuse.recipes import evaluate as eval_recipe

EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 16 16
%%EndComments
newpath 0 0 moveto 16 16 lineto stroke
showpage
%%EOF
"""


@pytest.fixture
def eps_calls(monkeypatch) -> list:
    """Every time PIL's EPS plugin is asked to read a file (it would run Ghostscript on load)."""
    calls: list = []
    original = EpsImagePlugin.EpsImageFile._open

    def recording(self):
        calls.append(self)
        return original(self)

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", recording)
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "load", lambda self, *a, **k: pytest.fail("EPS decoded"))
    return calls


def _eps(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(EPS)
    return path


def test_pil_would_open_the_fixture_as_eps(tmp_path):
    with Image.open(_eps(tmp_path / "x.png")) as image:  # what an unrestricted open does
        assert image.format == "EPS"


def test_eps_named_png_is_refused_by_load_image_and_open_image(tmp_path, eps_calls):
    path = _eps(tmp_path / "scene.png")
    for call in (lambda: load_image(path), lambda: probe_image(path), lambda: open_image(path),
                 lambda: open_image(path.read_bytes(), name="request image")):
        with pytest.raises(ImageLoadError, match="PostScript/EPS is not an accepted image format") as error:
            call()
        assert "\n" not in str(error.value)
    assert eps_calls == []


def test_open_image_accepts_the_safe_formats_and_checks_the_header(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    for suffix in (".png", ".jpg", ".tif", ".webp", ".bmp", ".jp2"):
        Image.fromarray(array).save(tmp_path / f"a{suffix}")
        with open_image(tmp_path / f"a{suffix}") as image:
            assert image.format in SAFE_FORMATS and image.size == (5, 6)
        with open_image((tmp_path / f"a{suffix}").read_bytes()) as image:
            assert image.size == (5, 6)
    Image.fromarray(array).save(tmp_path / "a.gif")
    with pytest.raises(ImageLoadError, match="a.gif: not a recognised image file"):
        open_image(tmp_path / "a.gif")
    with pytest.raises(ImageLoadError, match="30 pixels exceeds the limit of 29"):
        open_image(tmp_path / "a.png", max_pixels=29)
    with pytest.raises(ImageLoadError, match="request: 5x6 pixels x 3 bands = 90 samples exceeds the limit of 89"):
        open_image((tmp_path / "a.png").read_bytes(), max_samples=89, name="request")


def test_eps_image_through_rsfuse_predict_is_one_line_exit_2(tmp_path, eps_calls, capsys):
    model = tmp_path / "model"
    make_model(seed=1).save_pretrained(model, tokenizer=tiny_tokenizer_dir())
    image = _eps(tmp_path / "scene.png")
    code = rsfuse_main(["predict", "--model", str(model), "--image", str(image), "--question", "What is it?",
                        "--max-new-tokens", "2"])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and "scene.png" in line and "PostScript/EPS" in line
    assert eps_calls == []


def test_eps_image_through_rsfuse_eval_is_one_line_exit_2(tmp_path, eps_calls, capsys):
    model = tmp_path / "model"
    make_model(seed=1).save_pretrained(model, tokenizer=tiny_tokenizer_dir())
    data = tmp_path / "data"
    write_image(data / "good.png")
    _eps(data / "bad.png")
    entries = [{"id": f"r{index}", "image": name, "question_type": "count", "answer": "3",
                "conversations": [{"from": "human", "value": "<image>\nHow many?"}, {"from": "gpt", "value": "3"}]}
               for index, name in enumerate(["good.png", "bad.png"])]
    (data / "bench.json").write_text(json.dumps(entries))
    code = eval_recipe.main([f"model={model}", "task=synthetic", f"data={data / 'bench.json'}",
                             f"output_dir={tmp_path / 'out'}", "max_new_tokens=2", "progress=false"])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and "bad.png" in line and "PostScript/EPS" in line
    assert eps_calls == []


def _many_band_tiff(path: Path, bands: int, side: int = 40) -> Path:
    tifffile.imwrite(path, np.zeros((side, side, bands), dtype=np.uint8), planarconfig="contig",
                     photometric="minisblack", compression="zlib")
    return path


def test_many_band_tiff_is_refused_by_samples_before_decoding(tmp_path, monkeypatch):
    path = _many_band_tiff(tmp_path / "cube.tif", bands=40)  # 1600 pixels, 64 000 samples
    decoded: list = []
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", lambda self, *a, **k: decoded.append(self))
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda self, *a, **k: decoded.append(self))
    message = "40x40 pixels x 40 bands = 64000 samples exceeds the limit of 8000"
    for call in (lambda: load_image(path, bands=(0, 1, 2), max_pixels=2000),
                 lambda: probe_image(path, bands=(0, 1, 2), max_pixels=2000),
                 lambda: load_image(path, bands=(0, 1, 2), max_samples=8000)):
        with pytest.raises(ImageLoadError, match=f"cube.tif: {message}"):
            call()
    assert decoded == []


def test_few_band_tiff_within_the_samples_limit_loads(tmp_path):
    path = _many_band_tiff(tmp_path / "cube.tif", bands=4, side=10)
    assert load_image(path, bands=(0, 1, 2), max_pixels=100).size == (10, 10)  # 400 samples = 4 x 100
    with pytest.raises(ImageLoadError, match="400 samples exceeds the limit of 399"):
        load_image(path, bands=(0, 1, 2), max_samples=399)
