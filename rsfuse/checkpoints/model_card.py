"""The model card ``save_pretrained`` writes beside the weights (``README.md``, the Hub's card format: YAML front
matter, then text): what the folder is (config summary), how it is laid out (files), and where it came from
(the folder or Hub snapshot it was loaded from). Pure: a config dict and the source description in, text out."""

import json
from pathlib import Path
from typing import Any, Mapping

__all__ = ["MODEL_CARD_FILE", "model_card"]

MODEL_CARD_FILE = "README.md"


def _summary(config: Mapping[str, Any]) -> list[str]:
    llm, vision = config.get("llm", {}), config.get("vision", {})
    injection = config.get("injection_layers") if config.get("detail", True) else None
    return [
        f"- decoder: {llm.get('num_hidden_layers')} layers, width {llm.get('hidden_size')}, vocabulary "
        f"{llm.get('vocab_size')}, context {llm.get('max_position_embeddings')}",
        f"- vision tower: CLIP ViT, image {vision.get('image_size')} px, patch {vision.get('patch_size')}, "
        f"{vision.get('num_hidden_layers')} layers, width {vision.get('hidden_size')}",
        f"- detail injection: {'layers ' + str(injection) if injection else 'off (global tokens only)'}",
        f"- window scales: {config.get('window_scales')}, detail layers: {config.get('detail_layers')}",
    ]


def model_card(folder: Path, config: Mapping[str, Any], *, source: str | None, template: str) -> str:
    """The card's text for the rsfuse folder ``folder`` (already written: its files are listed)."""
    files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()
                   and path.name != MODEL_CARD_FILE)
    front = ["---", "library_name: rsfuse", "pipeline_tag: image-text-to-text",
             "tags: [remote-sensing, vision-language, mf-rsvlm]", "---"]
    body = [
        "# MF-RSVLM (rsfuse folder)", "",
        "Load with `MFRSVLM.from_pretrained(...)` and `MFRSVLMProcessor.from_pretrained(...)` (rsfuse), from this "
        "folder or its Hub repository id; `quantization=\"int8\" | \"nf4\"` loads the decoder in fewer bytes.", "",
        "## Configuration", *_summary(config), f"- conversation template: {template}", "",
        "## Layout",
        "`config.json` (`model_type: rsfuse_mfrsvlm`, the full `MFRSVLMConfig`), safetensors shards with MFRSVLM's "
        "state-dict keys (`vision_tower.*`, `projector.*`, `llm.*`, `injectors.<layer>.*`), `tokenizer.model` "
        "(SentencePiece) and `processor_config.json`.", "",
        *[f"- `{name}`" for name in files], "",
        "## Provenance", f"- loaded from: {source or 'built in memory (not loaded from a folder)'}",
        "", "```json", json.dumps({key: config[key] for key in sorted(config) if key not in ("llm", "vision")},
                                  indent=1, default=str), "```", "",
    ]
    return "\n".join(front + body)
