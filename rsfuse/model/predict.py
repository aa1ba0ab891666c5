"""``rsfuse predict --model DIR --image FILE --question TEXT``: answer one question about one image.

Loads the model (any layout ``MFRSVLM.from_pretrained`` reads) and its ``MFRSVLMProcessor`` from DIR (tokenizer,
image settings, the recorded template or ``vicuna_v1``), which preprocesses the image as LLaVA does (pad to square
with the CLIP mean, resize, normalise) and lays out the prompt; generates with the KV cache and prints the answer.

An expected error (a checkpoint, image or template that cannot be used; a prompt plus ``--max-new-tokens`` beyond the
model's context; non-finite logits) prints one line naming the file or key and exits with status 2; ``--debug`` or
``RSFUSE_DEBUG=1`` adds the traceback.
"""

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from rsfuse.options import DEFAULT_TEMPLATE, QUANTIZATIONS

__all__ = ["answer", "main"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def answer(
    model,
    tokenizer,
    image: "str | Path | Any",
    question: str,
    *,
    template: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    processor=None,
) -> str:
    """The model's answer to ``question`` about ``image`` (a file, a PIL image or an array; None for a text-only
    question), through ``MFRSVLMProcessor`` (``processor``, else one built from ``model`` and ``tokenizer``;
    ``template`` None = the template the model folder records, else ``vicuna_v1``)."""
    from rsfuse.processor import MFRSVLMProcessor  # noqa: PLC0415

    if processor is None:
        processor = MFRSVLMProcessor.from_model(model, tokenizer, template=template)
    inputs = processor(images=[image], text=[question]).to(model.device, model.dtype)
    generator = torch.Generator(device=model.device).manual_seed(seed) if temperature > 0 else None
    tokens = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        eos_token_id=list(processor.eos_token_ids),
        generator=generator,
    )
    return processor.batch_decode(tokens)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rsfuse predict", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder (rsfuse, released MF-RSVLM, llava-hf) with tokenizer.model, or a Hub repository id")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) when --model is an id")
    parser.add_argument("--quantization", default=None, choices=QUANTIZATIONS,
                        help="decoder linears weight-only: int8 (torchao) | int4 (torchao, CUDA) | nf4 (bitsandbytes)")
    parser.add_argument("--image", required=True, help="image file (RGB, RGBA, L, 16-bit or TIFF)")
    parser.add_argument("--question", required=True, help="question about the image")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (temperature > 0)")
    parser.add_argument("--template", default=None,
                        help=f"conversation template (default: the folder's, else {DEFAULT_TEMPLATE})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an expected error")
    args = parser.parse_args(argv)
    from rsfuse.model.mfrsvlm import MFRSVLM  # noqa: PLC0415
    from rsfuse.processor import MFRSVLMProcessor  # noqa: PLC0415
    from rsfuse.recipes.errors import debug_requested, expected_errors, report_expected  # noqa: PLC0415

    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    try:
        model = MFRSVLM.from_pretrained(args.model, revision=args.revision, quantization=args.quantization,
                                        dtype=dtype, device=args.device)
        processor = MFRSVLMProcessor.from_pretrained(args.model, template=args.template, revision=args.revision)
        text = answer(
            model,
            processor.tokenizer,
            args.image,
            args.question,
            processor=processor,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
        )
    except (*expected_errors(), ValueError) as error:  # ValueError: generation limits (context, vocabulary, NaN)
        return report_expected("rsfuse predict", error, debug=args.debug or debug_requested())
    except OSError as error:
        if error.filename is None:
            raise
        return report_expected("rsfuse predict", error, debug=args.debug or debug_requested())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
