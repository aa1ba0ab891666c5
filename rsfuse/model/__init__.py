"""The composed MF-RSVLM model: config, model, generation, checkpoint loading, and the predict / convert commands."""

from rsfuse.model.config import MFRSVLMConfig
from rsfuse.model.mfrsvlm import MFRSVLM, MFRSVLMOutput

__all__ = ["MFRSVLM", "MFRSVLMConfig", "MFRSVLMOutput"]
