"""``LlamaConfig``: the Llama decoder's hyper-parameters, with Hugging Face's field names.

``from_dict`` reads an HF ``config.json`` (Llama, Vicuna, LLaVA-Llama, MF-RSVLM: unknown keys are ignored). RoPE
settings are read from either layout HF has used: transformers 4 (``rope_theta`` + ``rope_scaling``) and
transformers 5 (``rope_parameters`` holding ``rope_theta``, ``rope_type`` and the scaling fields).
"""

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LlamaConfig", "SUPPORTED_ROPE_TYPES"]

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3")
_REQUIRED_SCALING_FIELDS = {
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


_POSITIVE_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
)
_BOOL_FIELDS = ("tie_word_embeddings", "attention_bias", "mlp_bias")
_SCALING_NUMBERS = ("factor", "low_freq_factor", "high_freq_factor")


def _field_error(key: str, requirement: str, value: Any) -> ValueError:
    return ValueError(f"LlamaConfig field {key!r} {requirement}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_fields(values: dict[str, Any], prefix: str, *, theta_key: str, scaling_key: str) -> None:
    """A ValueError naming the first field (``prefix`` + its key in the file) of the wrong type or range."""
    for name in _POSITIVE_INT_FIELDS:
        if name in values and not (_is_int(values[name]) and values[name] > 0):
            raise _field_error(prefix + name, "must be a positive int", values[name])
    for name, key in (("rms_norm_eps", "rms_norm_eps"), ("rope_theta", theta_key)):
        if name in values and not (_is_number(values[name]) and values[name] > 0):
            raise _field_error(prefix + key, "must be a positive number", values[name])
    if "initializer_range" in values and not (_is_number(values["initializer_range"]) and values["initializer_range"] >= 0):
        raise _field_error(prefix + "initializer_range", "must be a non-negative number", values["initializer_range"])
    for name in _BOOL_FIELDS:
        if name in values and not isinstance(values[name], bool):
            raise _field_error(prefix + name, "must be true or false", values[name])
    if "hidden_act" in values and not isinstance(values["hidden_act"], str):
        raise _field_error(prefix + "hidden_act", "must be a string", values["hidden_act"])
    for name in ("bos_token_id", "pad_token_id"):
        if values.get(name) is not None and not _is_int(values[name]):
            raise _field_error(prefix + name, "must be a token id (an int) or null", values[name])
    eos = values.get("eos_token_id")
    if eos is not None and not (_is_int(eos) or (isinstance(eos, list) and all(_is_int(item) for item in eos))):
        raise _field_error(prefix + "eos_token_id", "must be a token id, a list of token ids or null", eos)
    vocab = values.get("vocab_size", 32000)
    pad = values.get("pad_token_id")
    if pad is not None and not -vocab <= pad < vocab:
        raise _field_error(prefix + "pad_token_id", f"must be a token id of the {vocab}-token vocabulary", pad)
    scaling = values.get("rope_scaling")
    if scaling is None:
        return
    if not isinstance(scaling, dict):
        raise _field_error(prefix + scaling_key, "must be an object or null", scaling)
    for name in _SCALING_NUMBERS:
        if name in scaling and not (_is_number(scaling[name]) and scaling[name] > 0):
            raise _field_error(f"{prefix}{scaling_key}.{name}", "must be a positive number", scaling[name])
    original = scaling.get("original_max_position_embeddings")
    if original is not None and not (_is_int(original) and original > 0):
        raise _field_error(f"{prefix}{scaling_key}.original_max_position_embeddings", "must be a positive int", original)


def _normalise_rope_scaling(rope_scaling: dict[str, Any] | None) -> dict[str, Any] | None:
    """HF ``rope_scaling`` dict with the type under ``rope_type`` (legacy ``type`` accepted); None for plain RoPE."""
    if rope_scaling is None:
        return None
    if not isinstance(rope_scaling, dict):
        raise ValueError(f"LlamaConfig.rope_scaling must be None or a dict, got {type(rope_scaling).__name__}")
    scaling = {key: value for key, value in rope_scaling.items() if key not in ("type", "rope_theta")}
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"LlamaConfig.rope_scaling: unsupported RoPE type {rope_type!r} (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    if rope_type == "default":
        return None
    missing = [name for name in _REQUIRED_SCALING_FIELDS[rope_type] if name not in scaling]
    if missing:
        raise ValueError(f"LlamaConfig.rope_scaling: RoPE type {rope_type!r} needs the field(s) {missing}")
    scaling["rope_type"] = rope_type
    return scaling


@dataclass(kw_only=True)
class LlamaConfig:
    """Llama / Vicuna decoder configuration (HF field names).

    ``head_dim`` defaults to ``hidden_size // num_attention_heads``; ``num_key_value_heads`` to ``num_attention_heads``.
    ``rope_scaling`` is None or an HF dict whose ``rope_type`` is one of "linear", "dynamic", "llama3".
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    initializer_range: float = 0.02
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads != 0:
                raise ValueError(
                    f"LlamaConfig: hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                    f"{self.num_attention_heads}; set head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"LlamaConfig: num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"LlamaConfig: head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.hidden_act != "silu":
            raise ValueError(f"LlamaConfig: hidden_act {self.hidden_act!r} is not supported (only 'silu')")
        self.rope_scaling = _normalise_rope_scaling(self.rope_scaling)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The ids generation stops at (the one EOS rule): ``eos_token_id`` as a tuple (empty when None)."""
        eos = self.eos_token_id
        if eos is None:
            return ()
        return (int(eos),) if isinstance(eos, int) else tuple(int(token) for token in eos)

    @property
    def pad_id(self) -> int:
        """The id that fills padding and finished rows (the one pad rule): ``pad_token_id``, else the first EOS id,
        else 0."""
        if self.pad_token_id is not None:
            return int(self.pad_token_id)
        return self.eos_token_ids[0] if self.eos_token_ids else 0

    @property
    def rope_type(self) -> str:
        """"default" for plain RoPE, else the scaling type."""
        return "default" if self.rope_scaling is None else self.rope_scaling["rope_type"]

    @classmethod
    def vicuna_7b(cls) -> "LlamaConfig":
        """Vicuna-7B-v1.5 (Llama-2-7B shape, 4k context)."""
        return cls(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            max_position_embeddings=4096,
            pad_token_id=0,
        )

    @classmethod
    def tiny(cls) -> "LlamaConfig":
        """A few-hundred-kilobyte decoder for tests and CPU smoke runs (GQA on: 4 query heads, 2 key/value heads)."""
        return cls(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            max_position_embeddings=512,
            pad_token_id=0,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, key_prefix: str = "") -> "LlamaConfig":
        """Build from an HF ``config.json`` dict; unknown keys are kept in ``extra`` and otherwise ignored.

        Every known field is checked for its type and range first (sizes and layer / head counts positive ints,
        never bools, floats or strings; numbers finite; flags bools; token ids ints): a ValueError names the key
        as it appears in the file, prefixed with ``key_prefix`` (e.g. ``"llm."``, ``"text_config."``).
        """
        if not isinstance(data, dict):
            raise ValueError(f"LlamaConfig.from_dict expects an object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {key: value for key, value in data.items() if key in names}
        values.pop("rope_scaling", None)
        rope_scaling = data.get("rope_scaling")
        scaling_key = "rope_scaling"
        rope_parameters = data.get("rope_parameters")
        if rope_parameters is not None and not isinstance(rope_parameters, dict):
            raise _field_error(key_prefix + "rope_parameters", "must be an object", rope_parameters)
        if isinstance(rope_parameters, dict):
            if "rope_theta" in rope_parameters:
                values["rope_theta"] = rope_parameters["rope_theta"]
            rope_scaling, scaling_key = rope_parameters, "rope_parameters"
        if rope_scaling is not None:
            values["rope_scaling"] = rope_scaling
        if values.get("rope_theta") is None:
            values.pop("rope_theta", None)
        for key in ("num_key_value_heads", "head_dim"):
            if key in values and values[key] is None:
                values.pop(key)
        in_parameters = isinstance(rope_parameters, dict) and "rope_theta" in rope_parameters
        theta_key = "rope_parameters.rope_theta" if in_parameters else "rope_theta"
        _check_fields(values, key_prefix, theta_key=theta_key, scaling_key=scaling_key)
        if in_parameters and data.get("rope_theta") is not None:  # the transformers-4 copy beside rope_parameters
            _check_fields({"rope_theta": data["rope_theta"]}, key_prefix, theta_key="rope_theta", scaling_key="")
        if scaling_key == "rope_parameters" and data.get("rope_scaling") is not None:
            _check_fields({"rope_scaling": data["rope_scaling"]}, key_prefix, theta_key="", scaling_key="rope_scaling")
        extra = {key: value for key, value in data.items() if key not in names and key != "rope_parameters"}
        try:
            return cls(**values, extra=extra)
        except TypeError as error:
            raise ValueError(f"LlamaConfig.from_dict: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        """HF-style ``config.json`` dict, readable by transformers 4 and 5 and by ``from_dict``."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        data["rope_scaling"] = None if self.rope_scaling is None else dict(self.rope_scaling)
        data["rope_parameters"] = {"rope_theta": self.rope_theta, "rope_type": self.rope_type, **(self.rope_scaling or {})}
        data["model_type"] = "llama"
        data["architectures"] = ["LlamaForCausalLM"]
        return data
