"""rsfuse's vLLM plugin (`rsfuse.vllm`) against rsfuse itself: tiny MF-RSVLM folders (decoder head size 64, which
vLLM's CPU attention takes) served through ``vllm.LLM`` in the vLLM environment that ``tools/vllm_env.sh`` builds
(``.ci/run`` builds it first; this module builds it when it is missing and fails, never skips, when it cannot).

Reference: ``MFRSVLM.generate`` on the processor's left-padded batch, in this environment. Checked: the same greedy
tokens for prompts with and without images and of different lengths (the rsfuse, released and llava-hf layouts),
vLLM's prompt ids equal to the processor's laid-out ids, the chat path's prompt and answer text equal to what the
processor and ``decode`` give, and the engine settings and refusals of the plugin.
"""

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from factories.llava_hf import write_hf_llava
from factories.mfrsvlm import micro_config, micro_llm, randomize, write_released_checkpoint
from factories.tokenizer import tiny_tokenizer_dir
from rsfuse.model import MFRSVLM
from rsfuse.processor import MFRSVLMProcessor
from rsfuse.processor.prompts import prompt_text, template_and_rounds

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
DECODER_64 = dict(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1)
MAX_TOKENS = 10
QUESTIONS = [
    "How many ships are in the harbour?",
    "Describe the image in detail with all the buildings, roads and the river please.",
    "What is in the image?",
    "Yes",
]


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The vLLM environment's interpreter (built by tools/vllm_env.sh if needed; a failure to build fails)."""
    result = subprocess.run(["bash", str(ROOT / "tools" / "vllm_env.sh")], cwd=ROOT, capture_output=True, text=True,
                            timeout=1800)
    if result.returncode != 0:
        pytest.fail("tools/vllm_env.sh could not build the vLLM environment:\n" + (result.stdout + result.stderr)[-3000:])
    venv = Path(os.environ.get("RSFUSE_VLLM_VENV", ".venv-vllm"))
    return (venv if venv.is_absolute() else ROOT / venv) / "bin" / "python"


def _answer(vllm_python: Path, folder: Path, requests: dict, tmp_path: Path) -> dict:
    requests_path, out_path = tmp_path / "requests.json", tmp_path / "answers.json"
    requests_path.write_text(json.dumps({"max_tokens": MAX_TOKENS, **requests}))
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "PYTHONPATH": ""}
    result = subprocess.run([str(vllm_python), str(ROOT / "tests" / "vllm_side" / "answer.py"), str(folder),
                             str(requests_path), str(out_path)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=900, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return json.loads(out_path.read_text())


def _images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for index, (height, width) in enumerate([(48, 40), (64, 64)]):
        path = folder / f"image{index}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _cut(ids: list[int], eos: set[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in eos:
            return ids[: position + 1]
    return ids


def _reference(folder: Path, images: list[Path | None]) -> tuple[MFRSVLMProcessor, list[list[int]], list[dict]]:
    """rsfuse's greedy tokens for QUESTIONS with ``images`` (one left-padded batch) and the prompts for vLLM."""
    processor = MFRSVLMProcessor.from_pretrained(folder)
    model = MFRSVLM.from_pretrained(folder).eval()
    pictures = [None if path is None else Image.open(path).convert("RGB") for path in images]
    inputs = processor(images=pictures, text=QUESTIONS)
    new = model.generate(**inputs, max_new_tokens=MAX_TOKENS)
    eos = set(processor.eos_token_ids)
    reference = [_cut(row, eos) for row in new.tolist()]
    prompts = []
    for question, path in zip(QUESTIONS, images):
        template, rounds = template_and_rounds(processor.template, [{"from": "human", "value": question}], "q",
                                               has_image=path is not None)
        prompts.append({"prompt": prompt_text(template, rounds, open_turn=True),
                        "image": None if path is None else str(path)})
    return processor, reference, prompts


def _laid_out(processor: MFRSVLMProcessor, image: Path | None, text, placeholder: int) -> list[int]:
    """The processor's laid-out ids of one sample without its padding (the attention mask's zeros), the image token
    written as vLLM's placeholder id."""
    picture = None if image is None else Image.open(image).convert("RGB")
    inputs = processor(images=[picture], text=[text])
    ids = inputs["input_ids"][0][inputs["attention_mask"][0].bool()].tolist()
    return [placeholder if token == processor.image_token_index else token for token in ids]


def _check_generation(answers: dict, reference: list[list[int]], processor, images, placeholder, eos) -> None:
    for row, (answer, expected) in enumerate(zip(answers["prompts"], reference)):
        assert _cut(answer["token_ids"], eos) == expected, f"prompt {row}: vLLM {answer['token_ids']} vs {expected}"
        assert answer["prompt_token_ids"] == _laid_out(processor, images[row], QUESTIONS[row], placeholder), row


@pytest.fixture(scope="module")
def rsfuse_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vllm") / "rsfuse_model"
    torch.manual_seed(0)
    model = MFRSVLM(micro_config(llm=micro_llm(**DECODER_64)))
    randomize(model, 0)
    model.save_pretrained(folder, tokenizer=tiny_tokenizer_dir())
    return folder


def test_rsfuse_folder_generate_and_chat_match_rsfuse(vllm_python, rsfuse_folder, tmp_path):
    images = [*_images(tmp_path), None, None]
    processor, reference, prompts = _reference(rsfuse_folder, images)
    encoded = base64.b64encode(images[0].read_bytes()).decode()
    chats = [
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{encoded}"}},
                                      {"type": "text", "text": QUESTIONS[0]}]}],
        [{"role": "user", "content": "What is in the image?"}, {"role": "assistant", "content": "An airport."},
         {"role": "user", "content": "How many planes?"}],
    ]
    checks = [{}, {"enable_prefix_caching": True}, {"max_num_batched_tokens": 32}]
    answers = _answer(vllm_python, rsfuse_folder, {"prompts": prompts, "chats": chats, "checks": checks}, tmp_path)
    eos = set(processor.eos_token_ids)
    _check_generation(answers, reference, processor, images, 0, eos)
    # The chat path: the processor's prompt for the same messages, and the same answer (tokens and text).
    model = MFRSVLM.from_pretrained(rsfuse_folder).eval()
    for chat, answer, image in zip(chats, answers["chats"], [images[0], None]):
        assert answer["prompt_token_ids"] == _laid_out(processor, image, chat, 0)
        picture = None if image is None else Image.open(image).convert("RGB")
        expected = _cut(model.generate(**processor(images=[picture], text=[chat]), max_new_tokens=MAX_TOKENS)[0].tolist(),
                        eos)
        assert _cut(answer["token_ids"], eos) == expected
        assert answer["text"].strip() == processor.decode(expected)
    # Engine settings: whole visual spans per step, no prefix cache (even when asked), a too-small step refused.
    default, asked_cache, small = answers["checks"]
    assert default["error"] is None and default["disable_chunked_mm_input"] and not default["enable_prefix_caching"]
    assert asked_cache["error"] is None and not asked_cache["enable_prefix_caching"]
    # vLLM's config (pydantic) wraps the plugin's one line; the line names the folder and the setting.
    (line,) = [line for line in small["error"].splitlines() if "max_num_batched_tokens 32" in line]
    assert str(rsfuse_folder) in line and "visual span" in line


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_vllm_openai_server_answers_the_official_client_as_rsfuse_does(vllm_python, rsfuse_folder, tmp_path):
    """vLLM's OpenAI server (what `vllm serve` runs) with the plugin, asked by the official `openai` client."""
    from openai import OpenAI

    port, log = _free_port(), (tmp_path / "server.log").open("w")
    command = [str(vllm_python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(rsfuse_folder),
               "--tokenizer-mode", "rsfuse", "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "tiny",
               "--dtype", "float32", "--enforce-eager", "--max-model-len", "256", "--max-num-seqs", "4",
               "--gpu-memory-utilization", "0.1"]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                              env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "PYTHONPATH": ""})
    try:
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "vLLM's server did not answer /health in 600 s"
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        image = _images(tmp_path)[1]
        encoded = base64.b64encode(image.read_bytes()).decode()
        messages = [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{encoded}"}},
            {"type": "text", "text": QUESTIONS[1]}]}]
        reply = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none").chat.completions.create(
            model="tiny", messages=messages, max_tokens=MAX_TOKENS, temperature=0)
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    processor = MFRSVLMProcessor.from_pretrained(rsfuse_folder)
    model = MFRSVLM.from_pretrained(rsfuse_folder).eval()
    inputs = processor(images=[Image.open(image).convert("RGB")], text=[messages])
    expected = _cut(model.generate(**inputs, max_new_tokens=MAX_TOKENS)[0].tolist(), set(processor.eos_token_ids))
    assert reply.choices[0].message.content.strip() == processor.decode(expected)
    assert reply.usage.prompt_tokens == int(inputs["attention_mask"][0].sum())


def test_released_and_llava_hf_folders_match_rsfuse(vllm_python, tmp_path):
    images = [*_images(tmp_path), None, None]
    released, _ = write_released_checkpoint(tmp_path / "released", seed=1, llm_overrides=DECODER_64)
    llava_hf, _ = write_hf_llava(tmp_path / "llava_hf", seed=2, image_token=512,
                                 text_overrides={**DECODER_64, "vocab_size": 520, "max_position_embeddings": 256})
    shutil.copyfile(tiny_tokenizer_dir() / "tokenizer.model", llava_hf / "tokenizer.model")
    engines = {released: {}, llava_hf: {"hf_overrides": {"architectures": ["MFRSVLMForConditionalGeneration"]}}}
    for folder, placeholder in ((released, 0), (llava_hf, 512)):
        processor, reference, prompts = _reference(folder, images)
        work = tmp_path / f"{folder.name}_run"
        work.mkdir()
        answers = _answer(vllm_python, folder, {"prompts": prompts, "engine": engines[folder]}, work)
        _check_generation(answers, reference, processor, images, placeholder, set(processor.eos_token_ids))


def test_refuses_a_head_size_cpu_attention_cannot_run(vllm_python, tmp_path):
    folder = tmp_path / "head16"
    MFRSVLM(micro_config(llm=micro_llm(hidden_size=32, num_attention_heads=2, num_key_value_heads=1))).save_pretrained(
        folder, tokenizer=tiny_tokenizer_dir())
    (check,) = _answer(vllm_python, folder, {"checks": [{}]}, tmp_path)["checks"]
    (line,) = [line for line in check["error"].splitlines() if "decoder head size 16" in line]
    assert str(folder) in line
