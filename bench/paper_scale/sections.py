"""The measured sections: checks, answers, the decode floor, the detail stage, the compiled tower."""

import contextlib
import statistics
import time
from typing import Callable, Sequence

import torch
from torch import nn

from rsfuse import MFRSVLM, MFRSVLMConfig
from rsfuse.generation import GenerationSession, SamplingParams
from paper_scale.authors import (
    authors_stage_for,
    detail_flops_per_image,
    hf_all_hidden_states,
    relative_difference,
    vit_pass_flops,
)
from paper_scale.common import (
    AUTHORS_REAL_CODE,
    PAPER_PASS_GFLOP,
    Recorder,
    SYSTEMS,
    median_seconds,
    peak_gib,
    release,
    rounded,
    synchronize,
)
from paper_scale.models import build_llava_hf, llava_shaped, random_mfrsvlm



# ----- prompts -----------------------------------------------------------------------------------------------------
def random_prompts(config: MFRSVLMConfig, batch: int, text_tokens: int, device: torch.device, seed: int):
    """``(pixels, rsfuse ids with one -200 placeholder after BOS, llava-hf ids with the image token × N)``."""
    generator = torch.Generator().manual_seed(seed)
    size = config.input_size
    pixels = torch.randn(batch, 3, size, size, generator=generator)
    text = torch.randint(3, config.llm.vocab_size - 1, (batch, text_tokens), generator=generator)
    text[:, 0] = config.llm.bos_token_id
    ours = torch.cat([text[:, :1], torch.full((batch, 1), config.image_token_index), text[:, 1:]], dim=1)
    image = torch.full((batch, config.num_visual_tokens), config.llm.vocab_size)  # llava_shaped's image token
    theirs = torch.cat([text[:, :1], image, text[:, 1:]], dim=1)
    return pixels.to(device), ours.to(device), theirs.to(device)


# ----- checks ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def logits_check(global_only: MFRSVLM, llava, device: torch.device, dtype: torch.dtype, text_tokens: int) -> dict:
    """rsfuse global-only vs transformers' LLaVA on the same weights and the same llava-hf ids."""
    config = global_only.config
    generator = torch.Generator().manual_seed(5)
    pixels = torch.randn(1, 3, config.input_size, config.input_size, generator=generator).to(device, dtype)
    text = torch.randint(3, config.image_token_index, (1, text_tokens), generator=generator)
    text[:, 0] = config.llm.bos_token_id
    ids = torch.cat([text[:, :1], torch.full((1, config.num_visual_tokens), config.image_token_index), text[:, 1:]], 1)
    ids = ids.to(device)
    output = global_only(pixels, ids)
    theirs = llava(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids)).logits.float()
    # rsfuse re-lays the ids out (right padding): the same sequence first, then one padding slot per removed
    # placeholder (masked); compare the real positions.
    length = theirs.shape[1]
    if not bool(output.attention_mask[:, :length].all()) or bool(output.attention_mask[:, length:].any()):
        raise AssertionError("rsfuse's layout of the llava-hf ids does not start with the same sequence")
    ours = output.logits[:, :length].float()
    text_rows = ids[0] != config.image_token_index
    difference = (ours - theirs).abs()
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "positions": int(ids.shape[1]),
        "max_abs_difference": rounded(difference.max(), 6),
        "max_abs_logit": rounded(theirs.abs().max(), 4),
        "relative_difference": rounded(difference.max() / theirs.abs().max(), 6),
        "top1_agreement_text_positions": rounded(
            (ours[0, text_rows].argmax(-1) == theirs[0, text_rows].argmax(-1)).float().mean(), 4
        ),
    }


def token_agreement(eager: torch.Tensor, compiled: torch.Tensor) -> dict:
    """Greedy tokens of two runs of the same prompts: position-wise agreement, identical rows, common prefix."""
    eager, compiled = eager.cpu(), compiled.cpu()
    width = min(eager.shape[1], compiled.shape[1])
    same = eager[:, :width] == compiled[:, :width]
    prefix = [int(row.long().cumprod(0).sum()) for row in same]
    return {
        "rows": int(eager.shape[0]),
        "tokens_per_row": width,
        "token_agreement": rounded(same.float().mean(), 4),
        "identical_rows": int(sum(p == width for p in prefix)),
        "mean_common_prefix": rounded(sum(prefix) / len(prefix), 2),
    }


# ----- answers -----------------------------------------------------------------------------------------------------
def answer_systems(model: MFRSVLM, llava, pixels, ours_ids, hf_ids, names: Sequence[str]) -> dict[str, Callable]:
    pad = model.pad_token_id

    def rsfuse(compile_: bool):
        return lambda n: model.generate(pixels, ours_ids, max_new_tokens=n, eos_token_id=[], compile=compile_)

    def transformers_generate(n: int):
        output = llava.generate(
            input_ids=hf_ids, pixel_values=pixels, attention_mask=torch.ones_like(hf_ids), max_new_tokens=n,
            min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=pad,
        )
        return output[:, hf_ids.shape[1]:]

    systems = {"llava-hf": transformers_generate, "rsfuse": rsfuse(False), "rsfuse-compile": rsfuse(True)}
    return {name: systems[name] for name in names if name in systems and (llava is not None or name != "llava-hf")}


@torch.no_grad()
def time_answers(systems: dict[str, Callable], new_tokens: int, repeats: int, device: torch.device) -> dict:
    """Per system: medians of 1-token and N-token answers (interleaved, alternating order), the decode step, the
    N-token answer's tokens, the warm-up time (compilation included)."""
    results = {}
    for name, run in systems.items():
        start = time.perf_counter()
        first, tokens = run(1), run(new_tokens)
        synchronize(device)
        if first.shape[1] != 1 or tokens.shape[1] != new_tokens:
            raise AssertionError(f"{name}: answers of {first.shape[1]} / {tokens.shape[1]} tokens, expected 1 / {new_tokens}")
        results[name] = {"warmup_s": round(time.perf_counter() - start, 2), "t1": [], "tn": [], "tokens": tokens}
    items = list(systems.items())
    for repeat in range(repeats):
        for name, run in items if repeat % 2 == 0 else items[::-1]:
            for key, count in (("t1", 1), ("tn", new_tokens)):
                synchronize(device)
                start = time.perf_counter()
                output = run(count)
                synchronize(device)
                results[name][key].append(time.perf_counter() - start)
                if count == new_tokens:
                    results[name]["tokens"] = output
    for entry in results.values():
        t1, tn = statistics.median(entry["t1"]), statistics.median(entry["tn"])
        entry.update(
            answer_1_s=round(t1, 4),
            answer_s=round(tn, 4),
            decode_step_ms=round(1000 * (tn - t1) / (new_tokens - 1), 3),
            answer_s_samples=[round(value, 4) for value in entry["tn"]],
            answer_1_s_samples=[round(value, 4) for value in entry["t1"]],
        )
    return results


@torch.no_grad()
def session_step_ms(model: MFRSVLM, pixels, ids, *, compile_: bool, steps: int, new_tokens: int,
                    device: torch.device) -> float:
    """Steady decode step of one warm ``GenerationSession``: ``steps`` steps timed together (no host syncs).

    The session has the shapes ``generate(max_new_tokens=new_tokens)`` gives it (a static cache of another length
    would be another compilation)."""
    warm = max(4, steps // 4)
    length = ids.shape[1] + model.config.num_visual_tokens + new_tokens
    session = GenerationSession(model, max_batch=ids.shape[0], max_length=length, compile=compile_)
    session.add(pixels, ids, params=SamplingParams(max_new_tokens=new_tokens, eos_token_ids=()))
    for _ in range(warm):
        session.step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        session.step()
    synchronize(device)
    return 1000 * (time.perf_counter() - start) / steps


def decoder_bytes_per_token(model: MFRSVLM) -> int:
    """Bytes of decoder weights a one-token step reads: every parameter of ``model.llm`` but the embedding table
    (one row is gathered), unless it is tied to the output head."""
    embedding = model.llm.get_input_embeddings().weight
    tied = embedding.data_ptr() == model.llm.lm_head.weight.data_ptr()
    return sum(
        p.numel() * p.element_size() for p in model.llm.parameters() if tied or p.data_ptr() != embedding.data_ptr()
    )


def dynamo_counters() -> dict:
    try:
        from torch._dynamo.utils import counters  # noqa: PLC0415
    except ImportError:
        return {}
    return {
        "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "cudagraph_skips": int(counters["inductor"].get("cudagraph_skips", 0)),
    }


# ----- sections ----------------------------------------------------------------------------------------------------
def section_checks(rec: Recorder, global_only, llava, args, device, dtype) -> None:
    rec.put("checks", "llava_logits", logits_check(global_only, llava, device, dtype, args.prompt_tokens))
    if not args.tiny:
        tiny_global = random_mfrsvlm(
            llava_shaped(MFRSVLMConfig.tiny(attention_backend=args.attention_backend)), device, torch.float32, seed=11
        )
        tiny_llava = build_llava_hf(tiny_global, device, torch.float32)
        rec.put("checks", "llava_logits_tiny_fp32", logits_check(tiny_global, tiny_llava, device, torch.float32, 16))
        del tiny_global, tiny_llava
        release(device)


def section_answers(rec: Recorder, name: str, model, llava, args, device, batch: int, repeats: int) -> dict:
    config = model.config
    pixels, ours_ids, hf_ids = random_prompts(config, batch, args.prompt_tokens, device, seed=batch)
    pixels = pixels.to(model.dtype)
    systems = answer_systems(model, llava, pixels, ours_ids, hf_ids, SYSTEMS)
    results = time_answers(systems, args.new_tokens, repeats, device)
    summary = {}
    for system, entry in results.items():
        summary[system] = {
            key: entry[key]
            for key in ("warmup_s", "answer_1_s", "answer_s", "decode_step_ms", "answer_s_samples", "answer_1_s_samples")
        }
        summary[system]["answers_per_s"] = round(batch / entry["answer_s"], 3)
    if "rsfuse" in results and "rsfuse-compile" in results:
        summary["compile_vs_eager_tokens"] = token_agreement(results["rsfuse"]["tokens"], results["rsfuse-compile"]["tokens"])
    summary["dynamo"] = dynamo_counters()
    summary["batch"], summary["new_tokens"], summary["prompt_text_tokens"] = batch, args.new_tokens, args.prompt_tokens
    summary["sequence_positions"] = int(hf_ids.shape[1])
    if batch == 1:
        for system, compile_ in (("rsfuse", False), ("rsfuse-compile", True)):
            if system in summary:
                summary[system]["session_step_ms"] = round(
                    session_step_ms(model, pixels, ours_ids, compile_=compile_, steps=args.session_steps,
                                    new_tokens=args.new_tokens, device=device), 3
                )
    rec.put(name, "answers", summary)
    return summary


def section_decode_floor(rec: Recorder, model, answers: dict, references: dict) -> None:
    weights = decoder_bytes_per_token(model)
    floor_ms = 1000 * weights / (references["read_gb_per_s"] * 1e9)
    record = {
        "decoder_bytes_per_token": weights,
        "decoder_gib_per_token": round(weights / 2**30, 3),
        "read_gb_per_s": references["read_gb_per_s"],
        "floor_ms": round(floor_ms, 3),
    }
    for system in SYSTEMS:
        if system in answers:
            step = answers[system]["decode_step_ms"]
            record[system] = {"step_ms": step, "ratio_to_floor": round(step / floor_ms, 3)}
            if "session_step_ms" in answers[system]:
                session = answers[system]["session_step_ms"]
                record[system].update(session_step_ms=session, session_ratio_to_floor=round(session / floor_ms, 3))
    rec.put("decode_floor", "decode", record)


@torch.no_grad()
def section_detail(rec: Recorder, model, clip, args, device, references: dict, *, name: str, batches: Sequence[int],
                   authors: bool) -> dict:
    config = model.config
    windows = model.canvas.windows_per_image
    flops = detail_flops_per_image(config, windows)
    stage = authors_stage_for(model, hf_all_hidden_states(clip)) if authors else None
    if authors:
        rec.put(name, "authors_real_code_reference", AUTHORS_REAL_CODE)
    out = {
        "windows_per_image": windows,
        "tower_passes_per_image": windows + 1,
        "matmul_gflop_per_pass": round(vit_pass_flops(config.vision, config.vision.num_hidden_layers) / 1e9, 1),
        "issue_gflop_per_paper_pass": PAPER_PASS_GFLOP,
        "matmul_tflop_per_image": round(flops / 1e12, 3),
    }
    for batch in batches:
        generator = torch.Generator().manual_seed(100 + batch)
        pixels = torch.randn(batch, 3, config.input_size, config.input_size, generator=generator).to(device, model.dtype)
        ours_s, ours_samples, (ours_global, ours_stacks) = median_seconds(
            lambda: model.vision_features(pixels), device, args.detail_repeats
        )
        entry = {
            "rsfuse_s": round(ours_s, 4),
            "rsfuse_ms_per_image": round(1000 * ours_s / batch, 2),
            "rsfuse_s_samples": [round(s, 4) for s in ours_samples],
            "rsfuse_peak_gib": peak_gib(lambda: model.vision_features(pixels), device),
            "tflops": round(flops * batch / ours_s / 1e12, 4),
            "fraction_of_matmul": round(flops * batch / ours_s / 1e12 / references["matmul_tflops"], 4),
        }
        if stage is not None:
            theirs_s, theirs_samples, (their_global, their_stacks) = median_seconds(
                lambda: stage(pixels), device, args.authors_repeats
            )
            their_stacks = torch.stack(their_stacks, dim=1)
            entry.update(
                authors_s=round(theirs_s, 4),
                authors_ms_per_image=round(1000 * theirs_s / batch, 2),
                authors_s_samples=[round(s, 4) for s in theirs_samples],
                authors_peak_gib=peak_gib(lambda: stage(pixels), device),
                speedup_vs_authors=round(theirs_s / ours_s, 3),
                agreement={
                    "global_relative_difference": rounded(relative_difference(ours_global, their_global), 6),
                    "stacks_relative_difference": rounded(relative_difference(ours_stacks, their_stacks), 6),
                },
            )
            del their_global, their_stacks
        del ours_global, ours_stacks, pixels
        release(device)
        out[f"batch{batch}"] = entry
        rec.put(name, f"batch{batch}", entry)
    rec.put(name, "per_image", {k: v for k, v in out.items() if not k.startswith("batch")})
    return out


@contextlib.contextmanager
def compiled_tower_blocks(tower):
    """Every block of ``tower`` wrapped in ``torch.compile`` for the duration (the modules are restored after)."""
    original = tower.encoder.layers
    tower.encoder.layers = nn.ModuleList([torch.compile(block) for block in original])
    try:
        yield
    finally:
        tower.encoder.layers = original


def section_tower(rec: Recorder, model, args, device, references: dict) -> None:
    """The detail stage with compiled tower blocks (the first call, which compiles, is timed apart)."""
    batch = args.tower_batch or max(args.detail_batches)
    config = model.config
    with compiled_tower_blocks(model.vision_tower), torch.no_grad():
        generator = torch.Generator().manual_seed(7)
        warm = torch.randn(batch, 3, config.input_size, config.input_size, generator=generator).to(device, model.dtype)
        start = time.perf_counter()
        model.vision_features(warm)
        synchronize(device)
        rec.put("tower", "compile_s", round(time.perf_counter() - start, 2))
        del warm
        section_detail(rec, model, None, args, device, references, name="tower", batches=[batch], authors=False)
        rec.put("tower", "dynamo", dynamo_counters())




# ----- continuous batching (issue 31's GPU goal) ---------------------------------------------------------------------
@torch.no_grad()
def section_serve(rec: Recorder, model, args, device, clients: int = 16) -> None:
    """What continuous batching can gain at ``clients`` simultaneous requests: the same prompts answered one at a time
    vs in one ``GenerationSession`` of ``clients`` rows (what ``rsfuse serve``'s worker drives), greedy,
    ``new_tokens`` each, EOS off. Issue 31's GPU goal: ratio >= 3 with the paper-size model (the server reaches >=
    0.95 of this bound on the CPU, ``bench/serve_load.py``)."""
    pixels, ids, _ = random_prompts(model.config, clients, args.prompt_tokens, device, seed=11)
    params = SamplingParams(max_new_tokens=args.new_tokens, eos_token_ids=())
    length = ids.shape[1] + model.config.num_visual_tokens + args.new_tokens

    def answer(rows: list[int]) -> float:
        synchronize(device)
        start = time.perf_counter()
        session = GenerationSession(model, max_batch=len(rows), max_length=length)
        session.add(pixels[rows], ids[rows], params=params)
        for _ in range(args.new_tokens - 1):
            session.step()
        session.poll()
        synchronize(device)
        return time.perf_counter() - start

    answer([0]), answer(list(range(clients)))  # warm-up
    one_at_a_time = sum(answer([row]) for row in range(clients))
    together = answer(list(range(clients)))
    rec.put("serve", f"clients{clients}", {
        "one_at_a_time_s": round(one_at_a_time, 3), "together_s": round(together, 3),
        "ratio": round(one_at_a_time / together, 3),
        "peak_gib_together": peak_gib(lambda: answer(list(range(clients))), device),
    })
