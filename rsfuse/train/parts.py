"""The model's trainable parts: which part a parameter belongs to, freezing / full training / peft LoRA per part,
merging LoRA back into plain layers, and the FSDP2 units."""

import re
from typing import Sequence

from torch import nn

from rsfuse.recipes.config import ConfigError

__all__ = ["PART_PREFIXES", "part_of", "lora_targets", "configure_trainable", "merge_lora", "fsdp_units"]

PART_PREFIXES: dict[str, tuple[str, ...]] = {
    "vit": ("vision_tower.",),
    "projector": ("projector.",),
    "injector": ("injectors.",),
    "llm": ("llm.",),
}


def part_of(name: str) -> str:
    """Which trainable part (vit | projector | injector | llm) a parameter name belongs to."""
    for part, prefixes in PART_PREFIXES.items():
        if name.startswith(prefixes):
            return part
    raise ConfigError(f"parameter {name!r} belongs to no trainable part ({', '.join(PART_PREFIXES)})")


def lora_targets(model: nn.Module, parts: Sequence[str]) -> list[str]:
    """Full names of the ``nn.Linear`` modules LoRA wraps: every linear layer of the given parts, except the
    decoder's output head."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not name.endswith("lm_head") and part_of(name + ".") in parts:
            names.append(name)
    return names


def configure_trainable(model: nn.Module, trainable, lora) -> dict[str, str]:
    """Freeze / unfreeze each part and inject peft LoRA adapters where ``lora`` is asked; returns part → mode.
    ``trainable`` has one attribute per part (frozen | full | lora), ``lora`` the attributes r, alpha, dropout
    (the recipe's ``train.trainable`` and ``train.lora`` sections)."""
    modes = {part: getattr(trainable, part) for part in PART_PREFIXES}
    settings = lora
    lora_parts = [part for part, mode in modes.items() if mode == "lora"]
    if lora_parts:
        from peft import LoraConfig, inject_adapter_in_model

        targets = lora_targets(model, lora_parts)
        if not targets:
            raise ConfigError(f"train.trainable: no linear layers to put LoRA on in {lora_parts}")
        pattern = "^(" + "|".join(re.escape(name) for name in targets) + ")$"
        lora = LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=pattern,
            bias="none",
        )
        inject_adapter_in_model(lora, model)
    for name, parameter in model.named_parameters():
        mode = modes[part_of(name)]
        parameter.requires_grad_(mode == "full" or (mode == "lora" and "lora_" in name))
    return modes


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base linear layer and put the plain layer back (original key names)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    return model


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The FSDP2 units: each decoder layer, each vision-tower block, each injector (the root is sharded last)."""
    units: list[nn.Module] = list(model.llm.model.layers)
    units += [module for name, module in model.vision_tower.named_modules() if re.fullmatch(r".*layers\.\d+", name)]
    units += list(model.injectors.values())
    return units
