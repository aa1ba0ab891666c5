"""Per quantization scheme on a CPU-sized model: decoder weight bytes, answer tokens per second and greedy agreement
with full precision over the synthetic benchmark's test questions (the same prompts, batched, greedy, EOS off).

By default the model is ``MFRSVLMConfig.tiny()`` with seeded random weights (no trained model is needed) and a
SentencePiece tokenizer trained on the benchmark's questions; ``--model DIR`` measures a folder instead (a trained
model gives the agreement that matters: a random model's logits have tiny margins, so it is a pessimistic figure).
Agreement: "answers" = share of answers whose every token equals full precision's; "tokens" = share of positions
whose token equals full precision's. Example (BENCHMARKS.md):

    python bench/quantization.py --threads 1 --questions 48 --new-tokens 16
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from rsfuse import MFRSVLM, MFRSVLMConfig, MFRSVLMProcessor
from rsfuse.llm.templates import build_prompt
from rsfuse.llm.tokenizer import train_sentencepiece
from rsfuse.model.footprint import measured_bytes
from rsfuse.model.quantization import QuantizationError, check_quantization
from rsfuse.synthetic import generate
from rsfuse.synthetic.task import synthetic


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: a seeded random tiny model)")
    parser.add_argument("--data", default=None, help="synthetic benchmark folder (default: 160 images, seed 0: 48 test questions)")
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--schemes", default="none,int8,nf4,int4")
    return parser.parse_args()


def random_tiny_model(folder: Path, questions: list[str]) -> Path:
    prompts = [build_prompt("vicuna_v1", question) for question in questions]
    train_sentencepiece(prompts * 4, folder / "tokenizer", vocab_size=512)
    torch.manual_seed(0)
    model = MFRSVLM(MFRSVLMConfig.tiny().with_overrides({"llm.vocab_size": 512})).eval()
    return model.save_pretrained(folder / "model", tokenizer=folder / "tokenizer" / "tokenizer.model")


@torch.no_grad()
def answers(model, processor, records, *, batch: int, new_tokens: int) -> tuple[torch.Tensor, float]:
    outputs, seconds = [], 0.0
    for start in range(0, len(records), batch):
        chunk = records[start : start + batch]
        images = [Image.open(record["image_path"]).convert("RGB") for record in chunk]
        inputs = processor(images=images, text=[record["prompt"] for record in chunk])
        began = time.perf_counter()
        tokens = model.generate(**inputs, max_new_tokens=new_tokens, eos_token_id=-1)
        seconds += time.perf_counter() - began
        outputs.append(tokens)
    return torch.cat(outputs), seconds


def main() -> None:
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="rsfuse-bench-quant-"))
    data = Path(args.data) if args.data else Path(generate(scratch / "data", n_images=160, seed=0, size=224)["out_dir"])
    records = synthetic(data / "test.json")[: args.questions]
    folder = Path(args.model) if args.model else random_tiny_model(scratch, [record["prompt"] for record in records])
    processor = MFRSVLMProcessor.from_pretrained(folder)
    reference = None
    print(f"model {folder} | {len(records)} questions from {data} | {args.new_tokens} new tokens, batch {args.batch}, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"{'scheme':<8}{'decoder bytes':>15}{'model bytes':>13}{'tokens/s':>10}{'answers':>10}{'tokens':>9}")
    for scheme in args.schemes.split(","):
        quantization = None if scheme == "none" else scheme
        try:
            check_quantization(quantization, "cpu")
        except QuantizationError as error:
            print(f"{scheme:<8}not run: {error}")
            continue
        model = MFRSVLM.from_pretrained(folder, quantization=quantization)
        sizes = measured_bytes(model)
        answers(model, processor, records[: args.batch], batch=args.batch, new_tokens=2)  # warm-up
        tokens, seconds = answers(model, processor, records, batch=args.batch, new_tokens=args.new_tokens)
        if reference is None:
            reference = tokens
        same_answer = (tokens == reference).all(dim=1).float().mean().item()
        same_token = (tokens == reference).float().mean().item()
        print(f"{scheme:<8}{sizes['decoder_layers']:>15,}{sum(sizes.values()):>13,}{tokens.numel() / seconds:>10.1f}"
              f"{same_answer:>10.1%}{same_token:>9.1%}")


if __name__ == "__main__":
    main()
