"""The low-memory schemes at paper scale: per scheme (full precision, int8, nf4, int4), a copy of the model quantized
in place (`rsfuse.model.quantization.quantize_model`), its weight bytes, the peak device memory of a greedy answer
and the answer's time; schemes the device cannot run are recorded with the reason. The section stops starting
schemes once ``cap_s`` (90 s) of it has been used."""

import copy
import time

import torch

from rsfuse import MFRSVLM
from rsfuse.model.footprint import measured_bytes
from rsfuse.model.quantization import QuantizationError, check_quantization, quantize_model
from paper_scale.common import Recorder, median_seconds, peak_gib, release, rounded, synchronize
from paper_scale.sections import random_prompts

SCHEMES = ("full", "int8", "nf4", "int4")  # full: the run's dtype (bf16 on the GPU)


@torch.no_grad()
def section_quantization(rec: Recorder, model: MFRSVLM, args, device: torch.device, *, cap_s: float = 90.0) -> None:
    pixels, ids = random_prompts(model.config, 1, args.prompt_tokens, device, seed=5)[:2]
    reference = model.generate(pixels, ids, max_new_tokens=args.new_tokens, eos_token_id=[])
    model.compiled_sessions.clear()  # compiled graphs and their caches are not copied with the weights
    started = time.perf_counter()
    for scheme in SCHEMES:
        if time.perf_counter() - started > cap_s:
            rec.put("quantization", scheme, {"not_run": f"the section's {cap_s:.0f} s were used"})
            continue
        if scheme != "full":
            try:
                check_quantization(scheme, device)
            except QuantizationError as error:
                rec.put("quantization", scheme, {"not_run": str(error)})
                continue
        variant = model if scheme == "full" else quantize_model(copy.deepcopy(model), scheme)
        answer = lambda: variant.generate(pixels, ids, max_new_tokens=args.new_tokens, eos_token_id=[])  # noqa: E731
        seconds, _, tokens = median_seconds(answer, device, repeats=max(1, args.repeats // 2))
        rec.put("quantization", scheme, {
            "weight_gb": rounded(sum(measured_bytes(variant).values()) / 1e9, 3),
            "answer_peak_gib": rounded(peak_gib(answer, device), 3),
            "answer_s": rounded(seconds, 4),
            "token_agreement_with_full": rounded((tokens == reference).float().mean().item(), 4),
        })
        if variant is not model:
            del variant
            release(device)
        synchronize(device)
