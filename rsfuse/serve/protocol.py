"""The OpenAI chat-completions request, checked field by field, and the response / stream-chunk bodies.

``parse_chat_request(body, limits)`` returns a `ChatRequest` or raises `APIError` (400, naming the field) for
malformed JSON, a known field of the wrong type or out of range, an unsupported value (``n > 1``, ``logprobs``,
roles or content parts the model cannot take), too many images, messages or stop strings. No field is silently
ignored: a field is either honoured (`HONOURED`), changes nothing about the answer (`NO_EFFECT`, e.g. ``user``), or
is accepted only at its neutral value and otherwise a 400 naming it (`NEUTRAL`: ``tools``, ``response_format``,
the penalties, ...); any other field is a 400 too. Images stay as URLs here; `rsfuse.serve.images` decodes them.
"""

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from rsfuse.serve.errors import APIError, bad_request
from rsfuse.serve.limits import ServeLimits

__all__ = ["ChatRequest", "ImageRef", "Turn", "parse_chat_request", "completion_body", "chunk_body", "new_id"]

IMAGE_PLACEHOLDER = "<image>"
HONOURED = frozenset({"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
                      "stream", "stream_options", "n", "seed", "logprobs", "top_logprobs"})
NO_EFFECT = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls", "safety_identifier",
                       "prompt_cache_key"})
# Fields that would change the answer: accepted only at a value that asks for nothing (the test says which).
NEUTRAL: dict[str, tuple[str, Any]] = {
    "tools": ("tool calling is not supported", lambda v: v == []),
    "functions": ("function calling is not supported", lambda v: v == []),
    "tool_choice": ("tool calling is not supported", lambda v: v in ("none", "auto")),  # no tools: asks nothing
    "function_call": ("function calling is not supported", lambda v: v in ("none", "auto")),
    "response_format": ("only free text is produced (response_format type 'text')",
                        lambda v: isinstance(v, dict) and v.get("type") == "text" and len(v) == 1),
    "presence_penalty": ("presence_penalty is not supported (only 0)", lambda v: v == 0 and not isinstance(v, bool)),
    "frequency_penalty": ("frequency_penalty is not supported (only 0)", lambda v: v == 0 and not isinstance(v, bool)),
    "logit_bias": ("logit_bias is not supported", lambda v: v == {}),
    "modalities": ("only text answers are produced (modalities ['text'])", lambda v: v == ["text"]),
    "audio": ("audio answers are not supported", lambda v: False),
    "prediction": ("predicted outputs are not supported", lambda v: False),
    "web_search_options": ("web search is not supported", lambda v: False),
    "reasoning_effort": ("reasoning_effort is not supported (the model does not reason in steps)", lambda v: False),
    "verbosity": ("verbosity is not supported", lambda v: False),
}
SEED_SPAN = 2**63  # the session's seeds are in [0, 2**63); OpenAI's are any 64-bit integer (taken modulo this)


@dataclass(frozen=True)
class ImageRef:
    url: str
    param: str  # e.g. "messages[0].content[1].image_url.url"


@dataclass
class Turn:
    """One conversation turn after merging consecutive messages of one role: ``role`` is system, user or
    assistant; ``image`` (user turns only) is where this turn's image comes from."""

    role: str
    text: str
    image: ImageRef | None = None


@dataclass
class ChatRequest:
    model: str | None
    turns: list[Turn]
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    seed: int | None = None  # in [0, 2**63)
    extra: dict[str, Any] = field(default_factory=dict)  # the route's own fields (``extra_fields``)

    @property
    def images(self) -> list[ImageRef]:
        return [turn.image for turn in self.turns if turn.image is not None]


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


# ----------------------------------------------------------------------------------------------------- checks


def _kind(value: Any) -> str:
    return "null" if value is None else {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


def _number(body: dict, name: str, low: float, high: float, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"'{name}' must be a number, got {_kind(value)}", name, "invalid_type")
    if not (math.isfinite(value) and low <= value <= high):
        raise bad_request(f"'{name}' must be in [{low:g}, {high:g}], got {value!r}", name)
    return float(value)


def _integer(body: dict, name: str, low: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'{name}' must be an integer, got {_kind(value)}", name, "invalid_type")
    if value < low:
        raise bad_request(f"'{name}' must be >= {low}, got {value}", name)
    return value


def _boolean(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad_request(f"'{name}' must be a boolean, got {_kind(value)}", name, "invalid_type")
    return value


def _stop(body: dict, limits: ServeLimits) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise bad_request(f"'stop' must be a string or an array of strings, got {_kind(value)}", "stop",
                          "invalid_type")
    if len(items) > limits.max_stop:
        raise bad_request(f"'stop' holds {len(items)} strings; at most {limits.max_stop}", "stop")
    for item in items:
        if not item or len(item) > limits.max_stop_chars:
            raise bad_request(f"each 'stop' string must have 1 to {limits.max_stop_chars} characters", "stop")
    return tuple(dict.fromkeys(items))


def _content(message: dict, index: int, role: str) -> tuple[str, list[ImageRef]]:
    """Text (parts joined by newlines) and image references of one message."""
    where = f"messages[{index}].content"
    content = message.get("content")
    if content is None and role == "assistant":
        return "", []
    if isinstance(content, str):
        parts: list[Any] = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        parts = content
    else:
        raise bad_request(f"'{where}' must be a string or an array of content parts, got {_kind(content)}", where,
                          "invalid_type")
    texts, images = [], []
    for number, part in enumerate(parts):
        at = f"{where}[{number}]"
        if not isinstance(part, dict):
            raise bad_request(f"'{at}' must be an object, got {_kind(part)}", at, "invalid_type")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise bad_request(f"'{at}.text' must be a string, got {_kind(text)}", f"{at}.text", "invalid_type")
            if IMAGE_PLACEHOLDER in text:
                raise bad_request(f"'{at}.text' contains {IMAGE_PLACEHOLDER!r}, the image placeholder; send images "
                                  "as image_url parts", f"{at}.text")
            texts.append(text)
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str) or not url:
                raise bad_request(f"'{at}.image_url.url' must be a non-empty string", f"{at}.image_url.url",
                                  "invalid_type")
            if role != "user":
                raise bad_request(f"images are taken in user messages only, not {role!r}", at)
            images.append(ImageRef(url, f"{at}.image_url.url"))
        else:
            raise bad_request(f"content part type {kind!r} is not supported (text, image_url)", f"{at}.type")
    return "\n".join(texts), images


def _turns(body: dict, limits: ServeLimits) -> list[Turn]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", "messages",
                          "invalid_type" if not isinstance(messages, list) else "invalid_value")
    if len(messages) > limits.max_messages:
        raise bad_request(f"{len(messages)} messages; at most {limits.max_messages}", "messages")
    turns: list[Turn] = []
    image_count = 0
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"'messages[{index}]' must be an object, got {_kind(message)}", f"messages[{index}]",
                              "invalid_type")
        role = message.get("role")
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant"):
            raise bad_request(f"'messages[{index}].role' {role!r} is not supported (system, user, assistant)",
                              f"messages[{index}].role")
        text, images = _content(message, index, role)
        image_count += len(images)
        if image_count > limits.max_images:
            raise bad_request(f"more than {limits.max_images} image(s) in one request; the model takes "
                              f"{limits.max_images} per conversation", "messages", "too_many_images")
        if role == "system" and turns:
            raise bad_request("a system message must come first", f"messages[{index}]")
        if turns and turns[-1].role == role:  # consecutive messages of one role form one turn
            turns[-1].text = "\n".join(part for part in (turns[-1].text, text) if part)
            turns[-1].image = turns[-1].image or (images[0] if images else None)
        else:
            turns.append(Turn(role, text, images[0] if images else None))
    if turns[-1].role != "user":
        raise bad_request("the last message must be a user message (the server answers it)", "messages")
    for index, turn in enumerate(turns):
        if turn.role == "user" and not turn.text.strip() and turn.image is None:
            raise bad_request("a user message has neither text nor an image", "messages")
    return turns


def _fields(data: dict, extra_fields: tuple[str, ...]) -> None:
    """Every field is honoured, changes nothing, or asks for nothing; anything else is a 400 naming it."""
    for name, value in data.items():
        if name in HONOURED or name in NO_EFFECT or name in extra_fields:
            continue
        if name not in NEUTRAL:
            raise bad_request(f"unknown field {name!r} (this server does not know what it would change)", name,
                              "unknown_parameter")
        reason, neutral = NEUTRAL[name]
        if value is not None and not neutral(value):
            raise bad_request(f"{name!r}: {reason}; got {json.dumps(value)[:80]}", name, "unsupported_parameter")


def parse_chat_request(body: bytes, limits: ServeLimits, extra_fields: tuple[str, ...] = ()) -> ChatRequest:
    """Check a ``POST /v1/chat/completions`` body (``extra_fields``: the route's own fields, kept in ``extra``)."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise APIError(400, f"the body is not valid JSON ({type(error).__name__}: {str(error)[:120]})",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the body must be a JSON object, got {_kind(data)}", code="invalid_json")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request(f"'model' must be a string, got {_kind(model)}", "model", "invalid_type")
    n = _integer(data, "n", 1)
    if n is not None and n != 1:
        raise bad_request(f"n={n} is not supported (one choice per request)", "n", "unsupported_value")
    if _boolean(data, "logprobs"):
        raise bad_request("logprobs are not supported", "logprobs", "unsupported_value")
    if _integer(data, "top_logprobs", 0):
        raise bad_request("top_logprobs are not supported", "top_logprobs", "unsupported_value")
    max_tokens = _integer(data, "max_tokens", 1)
    completion = _integer(data, "max_completion_tokens", 1)
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request(f"'stream_options' must be an object, got {_kind(options)}", "stream_options",
                          "invalid_type")
    request = ChatRequest(
        model=model,
        turns=_turns(data, limits),
        max_tokens=completion if completion is not None else max_tokens,
        temperature=_number(data, "temperature", 0.0, 2.0, 1.0),
        top_p=_number(data, "top_p", 0.0, 1.0, 1.0),
        stop=_stop(data, limits),
        stream=_boolean(data, "stream"),
        include_usage=_boolean(options or {}, "include_usage"),
    )
    if request.top_p == 0.0:
        raise bad_request("'top_p' must be > 0", "top_p")
    seed = _integer(data, "seed", -(2**63))
    if seed is not None and seed >= 2**64:
        raise bad_request(f"'seed' must be a 64-bit integer, got {seed}", "seed")
    request.seed = None if seed is None else seed % SEED_SPAN
    for name in ("presence_penalty", "frequency_penalty"):
        _number(data, name, -2.0, 2.0, 0.0)  # the type and range first, then `_fields` refuses a non-zero value
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise bad_request(f"'user' must be a string, got {_kind(user)}", "user", "invalid_type")
    _fields(data, extra_fields)
    request.extra = {name: data[name] for name in extra_fields if name in data}
    return request


# ---------------------------------------------------------------------------------------------------- responses


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(request_id: str, model: str, text: str, finish_reason: str, prompt_tokens: int,
                    completion_tokens: int) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                     "finish_reason": finish_reason}],
        "usage": usage_body(prompt_tokens, completion_tokens),
    }


def chunk_body(request_id: str, model: str, *, delta: dict[str, Any] | None = None, finish_reason: str | None = None,
               usage: dict[str, int] | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk``; with ``usage`` the final usage-only chunk (empty ``choices``)."""
    body: dict[str, Any] = {"id": request_id, "object": "chat.completion.chunk", "created": int(time.time()),
                            "model": model}
    if usage is not None:
        body["choices"] = []
        body["usage"] = usage
    else:
        body["choices"] = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}]
    return body
