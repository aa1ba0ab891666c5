"""The ASGI application (FastAPI): the OpenAI routes, the page and its pictures, errors in OpenAI's format.

Routes: ``POST /v1/chat/completions`` (JSON or server-sent events), ``GET /v1/models``, ``GET /v1/models/{id}``,
``POST /v1/rsfuse/uploads`` (the page's image, sent once per conversation: an id and a preview, see
`rsfuse.serve.uploads`), ``POST /v1/rsfuse/viz`` (the page's pictures: router weights and gate maps for an image and
its answer, PNG), ``GET /health`` (no key needed; the limits the page checks before uploading), ``GET /`` (the page)
and ``GET /examples/...`` (the small example scenes shipped with the package). With an API key every ``/v1`` route
needs ``Authorization: Bearer KEY``. Only IP literals, localhost and ``--allow-host`` names are answered in the
``Host`` header; bodies must be ``application/json``. Request bodies are read with a size limit, parsed and checked
by hand (so every error is a 4xx naming the field), images decoded in pool threads and prompts encoded on the worker
thread, then handed to the `Scheduler`.
"""

import asyncio
import hmac
import ipaddress
import json
import logging
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from rsfuse.data import SAFE_FORMATS
from rsfuse.generation import SamplingParams
from rsfuse.serve.errors import APIError, bad_request, error_body
from rsfuse.serve.images import decode_image
from rsfuse.serve.inputs import EncodedPrompt, PromptEncoder, TextStream
from rsfuse.serve.limits import ServeLimits
from rsfuse.serve.pictures import draw_pictures
from rsfuse.serve.protocol import ChatRequest, chunk_body, completion_body, new_id, parse_chat_request, usage_body
from rsfuse.serve.scheduler import Job, Scheduler
from rsfuse.serve.uploads import ImageStore, preview_data_uri

__all__ = ["ServeSettings", "create_app", "ClosingStreamingResponse"]

log = logging.getLogger("rsfuse.serve")
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "stop"}


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    model_name: str = "rsfuse-mfrsvlm"
    aliases: tuple[str, ...] = ()  # other ids the API answers to (``--alias``)
    api_key: str | None = None
    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_length: int | None = None  # cache positions per row; None = the model's context
    max_queue: int = 256
    local_images: Path | None = None
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides IP literals and localhost ("*": any)
    limits: ServeLimits = ServeLimits()
    seed: int | None = None
    compile: bool = False


def create_app(model, encoder: PromptEncoder, settings: ServeSettings = ServeSettings()) -> FastAPI:
    """The app for a loaded ``model`` and its ``encoder``; the worker starts and stops with the app's lifespan.
    Raises ValueError (one line) for a tokenizer that cannot encode every text (see `PromptEncoder.check`)."""
    encoder.check()
    names = tuple(dict.fromkeys((settings.model_name, *settings.aliases)))
    context = model.config.llm.max_position_embeddings
    max_length = min(settings.max_length or context, context)
    scheduler = Scheduler(model, batch=encoder.batch, max_batch=settings.max_batch, max_length=max_length,
                          max_wait_ms=settings.max_wait_ms, decode=encoder.decode, max_queue=settings.max_queue,
                          sync_every=1 if model.device.type == "cpu" else 2, compile=settings.compile,
                          seed=settings.seed)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        scheduler.start()
        log.info("rsfuse serve: %s ready (max batch %d, %d positions per row)", settings.model_name,
                 settings.max_batch, max_length)
        try:
            yield
        finally:
            await run_in_threadpool(scheduler.stop)

    app = FastAPI(title="rsfuse serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def host_check(request: Request, call_next):
        """A page on another site can point its own name at this server (DNS rebinding) and, with no key, use it:
        only IP literals, localhost and the ``--allow-host`` names are answered."""
        host = request.headers.get("host", "")
        if not host_allowed(host, settings.allowed_hosts):
            error = APIError(403, f"Host {host[:100]!r} is not served here (start the server with --allow-host "
                             f"NAME to answer it)", code="host_not_allowed")
            return JSONResponse(error.body(), status_code=403)
        return await call_next(request)

    app.state.scheduler = scheduler
    uploads = ImageStore(max_pixels=2 * settings.limits.max_image_pixels)
    app.state.uploads = uploads
    figure_lock = threading.Lock()

    # ----- errors ------------------------------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, error: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
        return JSONResponse(error.body(), status_code=error.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if error.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(error.detail), type=kind, code=str(error.status_code)),
                            status_code=error.status_code)

    @app.exception_handler(Exception)
    async def _bug(_request: Request, error: Exception) -> JSONResponse:
        log.exception("rsfuse serve: unexpected error", exc_info=error)
        return JSONResponse(error_body("internal server error", type="server_error", code="internal_error"),
                            status_code=500)

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                           type="invalid_request_error", code="invalid_api_key")

    async def read_body(request: Request) -> bytes:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise APIError(415, f"the body must be sent as application/json, not {media or '(no Content-Type)'!r}",
                           code="unsupported_media_type")
        limit = settings.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise APIError(413, f"request body over the limit of {limit} bytes", code="body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(413, f"request body over the limit of {limit} bytes", code="body_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def request_image(chat: ChatRequest):
        """The request's image, decoded and checked against the limits (in a thread of the pool: no tensors)."""
        image = None
        for ref in chat.images:
            image = decode_image(ref.url, param=ref.param, limits=settings.limits, local_root=settings.local_images,
                                 uploads=uploads)
        return image

    async def prepare(chat: ChatRequest) -> tuple[EncodedPrompt, SamplingParams]:
        """Decode the image, then encode the prompt on the generation worker (the only thread that computes, see
        ``rsfuse.serve.scheduler``) and check it against the cache. A text that cannot fit whatever its tokens is
        refused before it reaches that thread (tokenising megabytes there would stall every client)."""
        if chat.model is not None and chat.model not in names:
            raise APIError(404, f"model {chat.model!r} is not served here (this server: "
                           f"{', '.join(map(repr, names))})", param="model", code="model_not_found")
        characters = sum(len(turn.text) for turn in chat.turns)
        if characters > max_length * encoder.longest_piece:
            raise APIError(400, f"the messages hold {characters} characters: at least "
                           f"{characters // encoder.longest_piece} tokens, beyond the server's context of "
                           f"{max_length}", param="messages", code="context_length_exceeded")
        image = await run_in_threadpool(request_image, chat)
        return await asyncio.wrap_future(scheduler.call(lambda: encode(chat, image)))

    def encode(chat: ChatRequest, image) -> tuple[EncodedPrompt, SamplingParams]:
        try:
            prompt = encoder.encode(chat.turns, image)
        except ValueError as error:  # the template or tokenizer refuses the conversation
            raise bad_request(f"cannot build the prompt: {error}", "messages") from None
        room = max_length - prompt.length
        if room < 1:
            raise APIError(400, f"the prompt takes {prompt.length} positions (text + image tokens); the server's "
                           f"context is {max_length}", param="messages", code="context_length_exceeded")
        max_tokens = room if chat.max_tokens is None else chat.max_tokens
        if max_tokens > room:
            raise APIError(400, f"max_tokens {max_tokens} + the prompt's {prompt.length} positions exceed the "
                           f"server's context of {max_length} (at most {room} here)", param="max_tokens",
                           code="context_length_exceeded")
        params = SamplingParams(max_new_tokens=max_tokens, temperature=chat.temperature, top_p=chat.top_p,
                                eos_token_ids=tuple(sorted(encoder.eos_ids)), stop_strings=chat.stop,
                                seed=chat.seed)
        return prompt, params

    # ----- routes ------------------------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> JSONResponse:
        status = 200 if scheduler.alive else 503
        limits = settings.limits
        return JSONResponse({"status": "ok" if status == 200 else "unavailable", "model": settings.model_name,
                             "auth": settings.api_key is not None, **scheduler.snapshot(),
                             "limits": {"max_image_bytes": limits.max_image_bytes,
                                        "max_image_pixels": limits.max_image_pixels,
                                        "max_body_bytes": limits.max_body_bytes, "context": max_length,
                                        "formats": list(SAFE_FORMATS)}},
                            status_code=status)

    static = resources.files("rsfuse.serve").joinpath("static")

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(static.joinpath("index.html").read_text("utf-8"))

    examples = json.loads(static.joinpath("examples/examples.json").read_text("utf-8"))["examples"]

    @app.get("/examples/")
    async def example_list() -> JSONResponse:
        return JSONResponse([{**item, "url": f"/examples/{item['file']}"} for item in examples])

    @app.get("/examples/{name}")
    async def example(name: str) -> Response:
        if name not in {item["file"] for item in examples}:
            raise APIError(404, f"no example {name!r}", code="not_found")
        return Response(static.joinpath(f"examples/{name}").read_bytes(), media_type="image/png",
                        headers={"Cache-Control": "max-age=3600"})

    @app.post("/v1/rsfuse/uploads")
    async def upload(request: Request) -> JSONResponse:
        """The page's image, once: decoded, checked and kept; answers its id, size and a preview PNG."""
        authorize(request)
        try:
            url = json.loads(await read_body(request)).get("image")
        except (ValueError, AttributeError):
            raise APIError(400, "the body must be a JSON object {\"image\": \"data:image/...;base64,...\"}",
                           code="invalid_json") from None
        if not isinstance(url, str) or not url.startswith("data:"):
            raise bad_request("'image' must be a data:image/...;base64, URI", "image", "invalid_image_url")

        def store() -> dict[str, Any]:
            image = decode_image(url, param="image", limits=settings.limits)
            key = ImageStore.key(url.encode())
            uploads.put(key, image)
            return {"id": key, "width": image.width, "height": image.height, "preview": preview_data_uri(image)}

        return JSONResponse(await run_in_threadpool(store))

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "rsfuse"}

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        authorize(request)
        return JSONResponse({"object": "list", "data": [model_card(name) for name in names]})

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str, request: Request) -> JSONResponse:
        authorize(request)
        if name not in names:
            raise APIError(404, f"model {name!r} is not served here (this server: {', '.join(map(repr, names))})",
                           param="model", code="model_not_found")
        return JSONResponse(model_card(name))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        authorize(request)
        chat = parse_chat_request(await read_body(request), settings.limits)
        prompt, params = await prepare(chat)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = Job(prompt, params, sink=lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        scheduler.submit(job)
        request_id, name = new_id(), settings.model_name
        if chat.stream:
            return ClosingStreamingResponse(_sse(scheduler, job, events, chat, prompt, encoder, request_id, name),
                                            media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        answer = asyncio.ensure_future(_collect(events, TextStream(encoder.decode, chat.stop)))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not answer.done():
                answer.cancel()
            scheduler.cancel(job)
        if not answer.done() or answer.cancelled():
            return Response(status_code=499)  # nobody is listening
        text, reason, count = answer.result()
        return JSONResponse(completion_body(request_id, name, text, FINISH[reason], prompt.length, count))

    @app.post("/v1/rsfuse/viz")
    async def viz(request: Request) -> Response:
        """Router weights and gate maps of the prefill for an image question (and its answer, in the caption)."""
        authorize(request)
        chat = parse_chat_request(await read_body(request), settings.limits, extra_fields=("answer",))
        answer = chat.extra.get("answer", "")
        if not isinstance(answer, str):
            raise bad_request("'answer' must be a string", "answer", "invalid_type")
        if not chat.images:
            raise bad_request("the pictures need an image in the messages", "messages")
        prompt, _ = await prepare(chat)
        question = next(turn.text for turn in reversed(chat.turns) if turn.role == "user")
        return Response(await draw_pictures(scheduler, model, encoder, prompt, question, answer, figure_lock),
                        media_type="image/png")

    return app


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """``host`` (a Host header, with or without its port) is an IP literal, localhost or one of ``allowed``."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host  # "[::1]:8000" keeps its brackets
    if name.startswith("[") and "]" in name:
        name = name[1:name.index("]")]
    name = name.lower().rstrip(".")
    if "*" in allowed or name == "localhost" or name in (item.lower() for item in allowed):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _collect(events: asyncio.Queue, stream: TextStream) -> tuple[str, str, int]:
    count = 0
    while True:
        kind, value = await events.get()
        if kind == "tokens":
            count += len(value)
            stream.push(value)
            if stream.stopped:
                return stream.text, "stop", count
        elif kind == "done":
            stream.push([], final=True)
            return stream.text, value, count
        else:
            raise value


def _sse_line(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


class ClosingStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` that closes its body generator however the response ends. When the client goes away
    while a chunk is being sent, Starlette stops iterating and leaves the generator suspended at its ``yield`` for the
    garbage collector; its ``finally`` (which frees the answer's row) then waited for a cycle collection while the row
    went on decoding."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


async def _sse(scheduler, job, events, chat, prompt, encoder, request_id, name) -> AsyncIterator[str]:
    stream = TextStream(encoder.decode, chat.stop)
    count = 0
    try:
        yield _sse_line(chunk_body(request_id, name, delta={"role": "assistant", "content": ""}))
        while True:
            kind, value = await events.get()
            if kind == "error":
                yield _sse_line(value.body())
                break
            final = kind == "done"
            if kind == "tokens":
                count += len(value)
            delta = stream.push(value if kind == "tokens" else [], final=final)
            if delta:
                yield _sse_line(chunk_body(request_id, name, delta={"content": delta}))
            if final or stream.stopped:
                reason = "stop" if stream.stopped else FINISH[value]
                yield _sse_line(chunk_body(request_id, name, finish_reason=reason))
                if chat.include_usage:
                    yield _sse_line(chunk_body(request_id, name, usage=usage_body(prompt.length, count)))
                break
        yield "data: [DONE]\n\n"
    finally:
        scheduler.cancel(job)  # a client that went away frees its row; a finished job is unaffected
