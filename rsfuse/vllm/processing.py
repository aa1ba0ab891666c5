"""vLLM's multimodal processing for MF-RSVLM: what an image costs in tokens, dummy inputs for vLLM's memory
profiling, and the processor that turns an image into ``pixel_values`` (``MFRSVLMProcessor``'s image preprocessing)
and lays its visual slots out in the prompt as rsfuse's sequence layout (`rsfuse.model.layout`) does:

* ``"prefix"`` placement (MF-RSVLM): the ``N`` visual slots first, before BOS; image placeholders in the text are
  removed wherever they stand;
* ``"token"`` placement (llava-hf): the slots replace the image placeholder (after the text for a prompt without one).

The prompt reaches the processor as token ids (`rsfuse.vllm.tokenizer.RsfuseTokenizer.encode`, the placeholder id
where ``<image>`` stood); vLLM applies the updates below to them and records where each image's slots are.
"""

from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import torch
from transformers import BatchFeature
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageSize
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptIndexTargets,
    PromptInsertion,
    PromptReplacement,
    PromptUpdate,
)

from rsfuse.model.config import MFRSVLMConfig
from rsfuse.processor import MFRSVLMProcessor
from rsfuse.vllm.config import model_folder, placeholder_id, rsfuse_config

__all__ = ["MFRSVLMDummyInputsBuilder", "MFRSVLMMultiModalProcessor", "MFRSVLMProcessingInfo"]


class MFRSVLMProcessingInfo(BaseProcessingInfo):
    """The model's numbers for vLLM: one image per prompt, ``N`` visual tokens per image, images of any size
    (resized by the processor to the model's input size)."""

    @cached_property
    def model(self) -> MFRSVLMConfig:
        return rsfuse_config(self.ctx.model_config)

    @cached_property
    def processor(self) -> MFRSVLMProcessor:
        return MFRSVLMProcessor.from_pretrained(model_folder(self.ctx.model_config))

    @property
    def image_id(self) -> int:
        return placeholder_id(self.model)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": 1}  # one image per sample, as MFRSVLMProcessor takes it

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.model.num_visual_tokens}

    def get_image_size_with_most_features(self) -> ImageSize:
        size = self.processor.image_size
        return ImageSize(width=size, height=size)


class MFRSVLMDummyInputsBuilder(BaseDummyInputsBuilder[MFRSVLMProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return "<image>" * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Any = None) -> dict[str, Any]:
        size = self.info.get_image_size_with_most_features()
        overrides = None if mm_options is None else mm_options.get("image")
        return {"image": self._get_dummy_images(width=size.width, height=size.height,
                                                num_images=mm_counts.get("image", 0), overrides=overrides)}


class MFRSVLMMultiModalProcessor(BaseMultiModalProcessor[MFRSVLMProcessingInfo]):
    """Images → ``pixel_values [B, 3, S, S]`` by ``MFRSVLMProcessor``; visual slots laid out as rsfuse lays them."""

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        images = hf_data.get("images") or []
        images = images if isinstance(images, (list, tuple)) else [images]
        return BatchFeature({"pixel_values": self.info.processor.preprocess_images(images)}, tensor_type=None)

    def _get_mm_fields_config(self, hf_inputs: BatchFeature,
                              hf_processor_mm_kwargs: Mapping[str, object]) -> Mapping[str, MultiModalFieldConfig]:
        return {"pixel_values": MultiModalFieldConfig.batched("image")}

    def _postprocess_prompt(self, prompt: list[int]) -> list[int]:
        """Prefix placement: the text's placeholders go (the slots are inserted in front). Token placement: a prompt
        without a placeholder gets one after its text (rsfuse's layout puts the slots there)."""
        image_id = self.info.image_id
        if self.info.model.image_placement == "prefix":
            return [token for token in prompt if token != image_id]
        return prompt if image_id in prompt else [*prompt, image_id]

    def _get_prompt_updates(self, mm_items: Any, hf_processor_mm_kwargs: Mapping[str, object],
                            out_mm_kwargs: Any) -> Sequence[PromptUpdate]:
        slots = [self.info.image_id] * self.info.model.num_visual_tokens
        if self.info.model.image_placement == "prefix":
            return [PromptInsertion(modality="image", target=PromptIndexTargets.start(), insertion=slots)]
        return [PromptReplacement(modality="image", target=[self.info.image_id], replacement=slots)]


def pixel_values_of(kwargs: Mapping[str, Any]) -> torch.Tensor | None:
    """The batched ``pixel_values`` vLLM hands ``embed_multimodal`` (a tensor, or a list of per-image tensors)."""
    pixels = kwargs.get("pixel_values")
    if pixels is None or isinstance(pixels, torch.Tensor):
        return pixels
    return torch.stack([item[0] if item.ndim == 4 else item for item in pixels])
