"""Vision encoders: the CLIP tower and the multi-scale canvas built on it."""

from rsfuse.encoders.canvas import MultiScaleCanvas
from rsfuse.encoders.clip import CLIPVisionTower
from rsfuse.encoders.clip_config import CLIPVisionConfig
