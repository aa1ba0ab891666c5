"""``bench/gpu_paper_scale.py --tiny``: the GPU session's one script runs end to end on the CPU and writes every figure.

The script is what a session lent a GPU runs first, in one call; this test keeps it working between such sessions:
every section runs (tiny sizes, fp32, few repeats), the JSON holds every headline figure, and the cheap correctness
checks that do not depend on the machine hold exactly in fp32 (rsfuse global-only == transformers' LLaVA on the same
weights; the authors' detail stage == rsfuse's; compiled == eager greedy tokens).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_paper_scale.py"
SYSTEMS = ("llava-hf", "rsfuse", "rsfuse-compile")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_paper_scale")
    command = [
        sys.executable, str(SCRIPT), "--tiny", "--out", str(out), "--threads", "1",
        "--new-tokens", "8", "--prompt-tokens", "8", "--repeats", "1", "--batch", "2", "--batch-repeats", "1",
        "--detail-batches", "1,2", "--detail-repeats", "1", "--authors-repeats", "1", "--session-steps", "4",
    ]
    # As on the GPU: shape checks off (the tests' conftest turns them on; their wrappers break compiled graphs).
    env = {**os.environ, "RSFUSE_TYPECHECK": "0"}
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert (out / "table.md").read_text().startswith("# gpu_paper_scale")
    return json.loads((out / "gpu_paper_scale.json").read_text()), completed.stdout


@pytest.mark.slow
def test_every_figure_is_there(results):
    data, _ = results
    assert data["skipped"] == {}
    figures = data["figures"]
    for key in ("matmul_tflops", "read_gb_per_s", "decode_floor_ms", "llava_logits_relative_difference",
                "llava_logits_top1_agreement"):
        assert isinstance(figures[key], (int, float)), key
    for key in ("answer_b1_s", "first_token_b1_s", "decode_step_b1_ms", "answers_per_s_batch",
                "decode_step_over_floor"):
        assert all(isinstance(figures[key][system], (int, float)) for system in SYSTEMS), key
    assert all(isinstance(value, float) for value in figures["session_step_b1_ms"].values())
    assert set(figures["answer_b1_over_llava"]) == {"rsfuse", "rsfuse-compile"}
    assert set(figures["detail"]) == {"eager_batch1", "eager_batch2", "compiled_batch2"}
    for name, entry in figures["detail"].items():
        assert entry["rsfuse_ms_per_image"] > 0 and 0 < entry["fraction_of_matmul"], name
        if name.startswith("eager"):
            assert entry["authors_ms_per_image"] > 0 and entry["speedup_vs_authors"] > 0
    goals = {row["goal"]: row["value"] for row in data["goals"]}
    assert len(goals) == 6 and all(value is not None for value in goals.values())


@pytest.mark.slow
def test_checks_hold_exactly_in_fp32(results):
    data, _ = results
    figures, sections = data["figures"], data["sections"]
    assert figures["llava_logits_relative_difference"] < 1e-5
    assert figures["llava_logits_top1_agreement"] == 1.0
    for name in ("eager_batch1", "eager_batch2"):
        agreement = figures["detail"][name]["agreement"]
        assert agreement["global_relative_difference"] < 1e-5 and agreement["stacks_relative_difference"] < 1e-5
    assert figures["compile_vs_eager_token_agreement"] == {"answers1": 1.0, "batch": 1.0}
    assert sections["answers1"]["answers"]["dynamo"]["graph_breaks"] == 0
    per_image = sections["detail"]["per_image"]
    assert per_image["tower_passes_per_image"] == 59 and per_image["windows_per_image"] == 58


def test_paper_pass_flops_match_the_issue():
    """One ViT-L/14-336 pass ≈ 381 GFLOP of matmuls; 59 of them ≈ 22.5 TFLOP per image."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from paper_scale import authors as script
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from rsfuse import MFRSVLMConfig

    config = MFRSVLMConfig.paper()
    assert round(script.vit_pass_flops(config.vision, 24) / 1e9) in (381, 382)
    assert abs(script.detail_flops_per_image(config, 58) / 1e12 - 22.5) < 0.1
