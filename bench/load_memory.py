"""Peak host memory (RSS) while loading MF-RSVLM-7B in bf16, int8 and nf4 on the CPU: the streaming loader's goal is
peak <= the quantized size + one shard + 1 GB.

Writes once (``--folder``, default ``/tmp/rsfuse-mfrsvlm-7b-random``) a random-weight MF-RSVLM-7B in the released
layout (``config.json`` with ``model_type: mfrsvlm``, bf16 safetensors shards of ``--shard-gb``, the tower in
``vision_tower/``, about 14.8 GB), then loads it once per scheme, each in a fresh process, and reports that process's
peak RSS (``VmHWM``) beside the computed device bytes (`rsfuse.model.footprint`) and the largest shard.

It needs ~15 GB of free disk and, for bf16, ~16 GB of free RAM: it checks both first and stops with one line when
they are short (``--force`` skips the check). Example:

    python bench/load_memory.py --schemes bf16,int8,nf4
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from rsfuse.checkpoints.mfrsvlm import _INJECTOR_PARTS

GB = 1e9


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/rsfuse-mfrsvlm-7b-random"))
    parser.add_argument("--schemes", default="bf16,int8,nf4")
    parser.add_argument("--shard-gb", type=float, default=2.0)
    parser.add_argument("--force", action="store_true", help="skip the free disk / RAM check")
    parser.add_argument("--preset", default="paper", help="MFRSVLMConfig preset (tiny: a seconds-long smoke run)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def available_ram() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def released_name(key: str, injection_indices: tuple[int, ...]) -> str | None:
    """The released layout's name of an rsfuse key (None: the tower, written to vision_tower/, and residual scales)."""
    if key.startswith("vision_tower.") or key.endswith("residual_scale"):
        return None
    if key.startswith("projector."):
        return "model.mm_" + key
    if key.startswith("llm."):
        return key.removeprefix("llm.")
    _, layer, rest = key.split(".", 2)
    part = next(name for name, mapped in _INJECTOR_PARTS.items() if rest.startswith(mapped + "."))
    return f"model.{part}.{injection_indices.index(int(layer))}.{rest[len(_INJECTOR_PARTS[part]) + 1:]}"


def write_random_release(folder: Path, shard_bytes: int, config) -> None:
    """The released layout, random bf16 weights, written one shard at a time (never the whole model in memory)."""
    from safetensors.torch import save_file

    from rsfuse import MFRSVLM
    from rsfuse.checkpoints.clip import save_clip_vision

    with torch.device("meta"):
        model = MFRSVLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    random = lambda shape: (0.02 * torch.randn(tuple(shape), generator=generator)).to(torch.bfloat16)  # noqa: E731
    shard, size, weight_map, tower = {}, 0, {}, {}
    for key, tensor in model.state_dict().items():
        if key.startswith("vision_tower."):
            tower[key.removeprefix("vision_tower.")] = random(tensor.shape)
            continue
        name = released_name(key, config.injection_layer_indices)
        if name is None:
            continue
        shard[name] = random(tensor.shape)
        size += tensor.numel() * 2
        if size >= shard_bytes:
            file = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
            save_file(shard, str(folder / file), metadata={"format": "pt"})
            weight_map.update({key: file for key in shard})
            shard, size = {}, 0
    shard["model.deepstack_residual_scale"] = torch.ones(len(config.injection_layers), dtype=torch.bfloat16)
    file = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
    save_file(shard, str(folder / file), metadata={"format": "pt"})
    weight_map.update({key: file for key in shard})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    depth = config.vision.num_hidden_layers
    data = {**config.llm.to_dict(), "model_type": "mfrsvlm", "architectures": ["MFRSVLMLlamaForCausalLM"],
            "mm_vision_select_layer": [config.global_layer], "mm_projector_type": "mlp2x_gelu",
            "mm_hidden_size": config.vision.hidden_size, "deepstack_injection_layers": list(config.injection_layers),
            "deepstack_detail_layers": [layer / depth for layer in config.detail_layers],
            "deepstack_window_scales": list(config.window_scales), "deepstack_downsample_factor": config.stack_factor,
            "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(data, indent=2))
    save_clip_vision(folder / "vision_tower", config.vision, tower)


def peak_rss() -> int:
    """This process's peak RSS in bytes: ``VmHWM`` (Linux; counted from this program's start) else ``ru_maxrss``
    (which Linux carries over an ``exec`` from the parent's memory at ``fork``: a parent that had just written the
    folder made the child's figure its own)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(folder: Path, scheme: str) -> None:
    from rsfuse import MFRSVLM
    from rsfuse.model.footprint import measured_bytes

    quantization = None if scheme == "bf16" else scheme
    if quantization == "nf4":
        import bitsandbytes  # noqa: F401, PLC0415  (the runtime the load needs, counted in the baseline)
    elif quantization:
        import torchao.quantization  # noqa: F401, PLC0415
    baseline = peak_rss()
    model = MFRSVLM.from_pretrained(folder, quantization=quantization, dtype=torch.bfloat16)
    peak = peak_rss()
    print(json.dumps({"scheme": scheme, "peak_rss": peak, "baseline_rss": baseline,
                      "model_bytes": sum(measured_bytes(model).values())}))


def main() -> None:
    args = parse_args()
    if args.child:
        child(args.folder, args.child)
        return
    if not (args.folder / "config.json").is_file():
        free_disk = shutil.disk_usage(args.folder.parent).free
        if args.preset == "paper" and not args.force and (free_disk < 16 * GB or available_ram() < 18 * GB):
            raise SystemExit(f"bench/load_memory.py: needs ~16 GB free disk and ~18 GB free RAM, found "
                             f"{free_disk / GB:.1f} GB and {available_ram() / GB:.1f} GB (--force to run anyway)")
        from rsfuse import MFRSVLMConfig

        write_random_release(args.folder, int(args.shard_gb * GB), MFRSVLMConfig.preset(args.preset))
    largest = max(path.stat().st_size for path in args.folder.glob("*.safetensors"))
    print(f"{args.folder}: largest shard {largest / GB:.2f} GB; peak RSS per scheme (fresh process each)")
    for scheme in args.schemes.split(","):
        done = subprocess.run([sys.executable, __file__, "--folder", str(args.folder), "--child", scheme],
                              capture_output=True, text=True, env={**os.environ})
        if done.returncode != 0:
            print(f"{scheme}: failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        goal = result["model_bytes"] + largest + GB
        print(f"{scheme:<5} peak {result['peak_rss'] / GB:6.2f} GB | model {result['model_bytes'] / GB:6.2f} GB | "
              f"goal (model + shard + 1 GB) {goal / GB:6.2f} GB | {'met' if result['peak_rss'] <= goal else 'missed'} "
              f"| before the load (torch and the scheme's library imported) {result['baseline_rss'] / GB:5.2f} GB, "
              f"the load's own peak {(result['peak_rss'] - result['baseline_rss']) / GB:6.2f} GB")


if __name__ == "__main__":
    main()
