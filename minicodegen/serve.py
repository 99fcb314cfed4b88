"""A completion server for editors: OpenAI's ``/v1/completions`` over HTTP, batched across clients.

    python -m minicodegen serve --model Salesforce/codegen-350M-mono --port 18080

Routes (FauxPilot's and TurboPilot's, so editor plugins made for them work unchanged):

- ``POST /v1/completions`` and ``POST /v1/engines/{engine}/completions``: OpenAI's completion
  request and response, streamed as server-sent events with ``"stream": true``;
- ``GET /v1/models``, ``GET /health`` (rows decoding, requests waiting, counters);
- ``GET /copilot_internal/v2/token``: a dummy token, so the Copilot plugin can be pointed here;
- ``GET /``: the playground page (``data/playground.html``).

Requests are parsed here (``parse_completion``) into a ``batching.Job``; one ``batching.Engine``
thread decodes every running request together and hands events back to the request's
coroutine through an asyncio queue. A client that disconnects sets ``job.cancelled``, which frees
its rows at the next step.

Errors have OpenAI's body, ``{"error": {"message", "type", "param", "code"}}``, and a 4xx status
for anything the client sent wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .batching import Done, Engine, Failed, Job, Piece, Settings, TokenLogprob
from .model import Model

MAX_BODY = 1 << 20  # bytes of a request body (a 2,048-token prompt is about 8 KB of code)
MAX_N = 16  # choices per prompt
MAX_CHOICES = 64  # choices per request (prompts × n)
MAX_STOP = 4  # stop strings, as OpenAI allows
MAX_LOGPROBS = 5  # alternatives per token, as OpenAI allows
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` with OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


# ----------------------------------------------------------------------------- the request


@dataclass
class Completion:
    """A parsed completion request: what the engine runs and how the answer is shaped."""

    prompts: list[list[int]]  # token ids, each cut to fit the window
    dropped: list[int]  # tokens cut from the front of each prompt
    n: int
    settings: Settings
    seed: int | None
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with usage


def _field(body: dict[str, Any], name: str, kinds: tuple[type, ...], default: Any, what: str) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise ApiError(400, f"'{name}' must be {what}, got {json.dumps(value)[:60]}", name)
    return value


def _prompts(value: Any, tokenize: Any, vocab: int) -> list[list[int]]:
    """OpenAI's prompt: a string, a list of strings, a list of token ids, or a list of those."""
    what = "a string, a list of strings, a list of token ids or a list of lists of token ids"
    if isinstance(value, str):
        value = [value]
    elif isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ApiError(400, f"'prompt' must be {what}", "prompt")
    out = []
    for i, p in enumerate(value):
        if isinstance(p, str):
            ids = tokenize(p)
        elif isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            bad = [t for t in p if not 0 <= t < vocab]
            if bad:
                raise ApiError(400, f"'prompt'[{i}] holds token id {bad[0]}, outside the vocabulary [0, {vocab})", "prompt")
            ids = list(p)
        else:
            raise ApiError(400, f"'prompt'[{i}] must be a string or a list of token ids", "prompt")
        if not ids:
            raise ApiError(400, f"'prompt'[{i}] is empty: give at least one token", "prompt")
        out.append(ids)
    return out


def parse_completion(body: Any, model: Model) -> Completion:
    """Reads an OpenAI completion request, or raises ApiError(400) naming the field that is wrong.

    Honoured: prompt, max_tokens (default 16), temperature (default 1), top_p, n, stop, stream,
    stream_options.include_usage, echo, logprobs, seed; and, beyond OpenAI's, top_k,
    repetition_penalty and truncate_prompt. Fields the server cannot honour (suffix, best_of
    above n, presence/frequency penalties) are refused rather than ignored; unknown fields are
    ignored, as OpenAI does.

    A prompt longer than the window keeps its last ``n_positions - max_tokens`` tokens (an editor
    sends the text before the cursor, whose end is what matters), unless ``truncate_prompt`` is
    false: then it is refused."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    cfg, tok = model.config, model.tokenizer
    if "prompt" not in body:
        raise ApiError(400, "'prompt' is required", "prompt")
    prompts = _prompts(body["prompt"], tok.encode, tok.vocab_size)
    max_tokens = _field(body, "max_tokens", (int,), 16, "an integer")
    if not 1 <= max_tokens < cfg.n_positions:
        raise ApiError(400, f"'max_tokens' must be between 1 and {cfg.n_positions - 1} (the model's window is "
                            f"{cfg.n_positions} tokens), got {max_tokens}", "max_tokens")  # fmt: skip
    temperature = float(_field(body, "temperature", (int, float), 1.0, "a number"))
    if not 0 <= temperature <= 2:
        raise ApiError(400, f"'temperature' must be between 0 and 2, got {temperature}", "temperature")
    top_p = float(_field(body, "top_p", (int, float), 1.0, "a number"))
    if not 0 < top_p <= 1:
        raise ApiError(400, f"'top_p' must be in (0, 1], got {top_p}", "top_p")
    top_k = _field(body, "top_k", (int,), 0, "an integer")
    if top_k < 0:
        raise ApiError(400, f"'top_k' must be >= 0 (0 = off), got {top_k}", "top_k")
    penalty = float(_field(body, "repetition_penalty", (int, float), 1.0, "a number"))
    if not penalty > 0:
        raise ApiError(400, f"'repetition_penalty' must be > 0 (1 = off), got {penalty}", "repetition_penalty")
    n = _field(body, "n", (int,), 1, "an integer")
    if not 1 <= n <= MAX_N:
        raise ApiError(400, f"'n' must be between 1 and {MAX_N}, got {n}", "n")
    if len(prompts) * n > MAX_CHOICES:
        raise ApiError(400, f"{len(prompts)} prompts × n={n} asks for {len(prompts) * n} choices; at most "
                            f"{MAX_CHOICES} per request", "n")  # fmt: skip
    stop = _field(body, "stop", (str, list), [], "a string or a list of strings")
    stop = [stop] if isinstance(stop, str) else stop
    if len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, f"'stop' must be up to {MAX_STOP} non-empty strings", "stop")
    logprobs = body.get("logprobs")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                 or not 0 <= logprobs <= MAX_LOGPROBS):  # fmt: skip
        raise ApiError(400, f"'logprobs' must be an integer between 0 and {MAX_LOGPROBS}, got {json.dumps(logprobs)}",
                       "logprobs")  # fmt: skip
    seed = _field(body, "seed", (int,), None, "an integer")
    stream = _field(body, "stream", (bool,), False, "true or false")
    echo = _field(body, "echo", (bool,), False, "true or false")
    options = _field(body, "stream_options", (dict,), {}, "an object")
    keep_long = _field(body, "truncate_prompt", (bool,), True, "true or false")
    if body.get("suffix"):
        raise ApiError(400, "'suffix' (insertion) is not supported: CodeGen only continues text", "suffix")
    best_of = _field(body, "best_of", (int,), n, "an integer")
    if best_of != n:
        raise ApiError(400, f"'best_of' other than n is not supported, got {best_of}", "best_of")
    for name in ("presence_penalty", "frequency_penalty"):
        if _field(body, name, (int, float), 0, "a number") != 0:
            raise ApiError(400, f"'{name}' is not supported (use 'repetition_penalty', as transformers does)", name)
    room = cfg.n_positions - max_tokens
    if not keep_long:
        for i, p in enumerate(prompts):
            if len(p) > room:
                raise ApiError(400, f"'prompt'[{i}] has {len(p)} tokens; with max_tokens={max_tokens} the window of "
                                    f"{cfg.n_positions} leaves room for {room}", "prompt", "context_length_exceeded")  # fmt: skip
    dropped = [max(0, len(p) - room) for p in prompts]
    prompts = [p[d:] for p, d in zip(prompts, dropped)]
    settings = Settings(max_tokens, temperature, top_p, top_k, penalty, tuple(stop), False, logprobs, echo)
    return Completion(prompts, dropped, n, settings, seed, stream, bool(options.get("include_usage")))


# ----------------------------------------------------------------------------- the answer


class Choice:
    """What a choice has received so far: text, tokens with log-probabilities, how it ended."""

    def __init__(self) -> None:
        self.text, self.tokens, self.offsets = "", [], []
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self.offset = 0

    def add(self, piece: Piece) -> dict[str, Any] | None:
        """Takes a piece; returns its log-probabilities in OpenAI's shape (None if none were asked)."""
        self.text += piece.text
        offsets = []
        for t in piece.tokens:
            offsets.append(self.offset)
            self.offset += len(t.text)
        self.tokens += piece.tokens
        self.offsets += offsets
        return logprobs_body(piece.tokens, offsets)


def logprobs_body(tokens: list[TokenLogprob], offsets: list[int]) -> dict[str, Any]:
    return {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [t.top for t in tokens], "text_offset": offsets}  # fmt: skip


async def _events(engine: Engine, job: Job, queue: asyncio.Queue) -> AsyncIterator[Any]:
    """The job's events until every choice is done (or it failed)."""
    left = job.choices
    engine.submit(job)
    while left:
        ev = await queue.get()
        yield ev
        if isinstance(ev, Done):
            left -= 1
        elif isinstance(ev, Failed):
            return


def _job(c: Completion, loop: asyncio.AbstractEventLoop) -> tuple[Job, asyncio.Queue]:
    queue: asyncio.Queue = asyncio.Queue()

    def emit(ev: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the server is stopping
            loop.call_soon_threadsafe(queue.put_nowait, ev)

    return Job(c.prompts, c.n, c.settings, emit, c.seed), queue


HUNG_UP = "the client disconnected"


async def _watch_for_hang_up(request: Request, job: Job, queue: asyncio.Queue) -> None:
    """A plain (not streamed) request: asks every quarter second whether the client is still
    there; if not, its rows are freed and the handler stops waiting. (A stream needs no watcher:
    Starlette cancels it when the client disconnects, and its ``finally`` frees the rows.)"""
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)
    job.cancelled = True
    queue.put_nowait(Failed(HUNG_UP))


def _usage(c: Completion, choices: list[Choice]) -> dict[str, int]:
    prompt = sum(len(p) for p in c.prompts)
    done = sum(ch.completion_tokens for ch in choices)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done,
            "prompt_tokens_dropped": sum(c.dropped)}  # fmt: skip


async def complete(request: Request) -> Response:
    state = request.app.state
    body = await read_json(request)
    c = parse_completion(body, state.model)
    job, queue = _job(c, asyncio.get_running_loop())
    head = {"id": "cmpl-" + secrets.token_hex(12), "object": "text_completion", "created": int(time.time()),
            "model": state.name}  # fmt: skip
    headers = {"X-Prompt-Tokens-Dropped": str(sum(c.dropped))}
    choices = [Choice() for _ in range(job.choices)]
    want_lp = c.settings.logprobs is not None

    if c.stream:
        async def sse() -> AsyncIterator[str]:
            try:
                async for ev in _events(state.engine, job, queue):
                    if isinstance(ev, Failed):
                        err = {"message": ev.message, "type": "server_error", "param": None, "code": None}
                        yield f"data: {json.dumps({'error': err})}\n\n"
                        break
                    ch = choices[ev.choice]
                    if isinstance(ev, Piece):
                        lp = ch.add(ev)
                        if not ev.text and not ev.tokens:
                            continue
                        out = {"text": ev.text, "index": ev.choice, "logprobs": lp if want_lp else None, "finish_reason": None}
                    else:
                        ch.finish_reason, ch.completion_tokens = ev.finish_reason, ev.completion_tokens
                        out = {"text": "", "index": ev.choice, "logprobs": None, "finish_reason": ev.finish_reason}
                    yield f"data: {json.dumps(head | {'choices': [out]})}\n\n"
                if c.include_usage:
                    yield f"data: {json.dumps(head | {'choices': [], 'usage': _usage(c, choices)})}\n\n"
                yield "data: [DONE]\n\n"
            finally:  # the client went away (or the answer is complete): its rows leave the batch
                job.cancelled = True

        return StreamingResponse(sse(), media_type="text/event-stream", headers=headers)

    watcher = asyncio.ensure_future(_watch_for_hang_up(request, job, queue))
    try:
        async for ev in _events(state.engine, job, queue):
            if isinstance(ev, Failed):
                if ev.message == HUNG_UP:
                    return Response(status_code=499)  # nobody reads it
                raise ApiError(500, ev.message, kind="server_error")
            if isinstance(ev, Piece):
                choices[ev.choice].add(ev)
            else:
                choices[ev.choice].finish_reason = ev.finish_reason
                choices[ev.choice].completion_tokens = ev.completion_tokens
    finally:
        watcher.cancel()
        job.cancelled = True
    body = head | {
        "choices": [{"text": ch.text, "index": i, "finish_reason": ch.finish_reason,
                     "logprobs": logprobs_body(ch.tokens, ch.offsets) if want_lp else None}
                    for i, ch in enumerate(choices)],
        "usage": _usage(c, choices),
    }  # fmt: skip
    return JSONResponse(body, headers=headers)


async def read_json(request: Request) -> Any:
    """The body as JSON: 413 past MAX_BODY bytes (read no further), 400 if it is not JSON."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > MAX_BODY:
        raise ApiError(413, f"request body of {size} bytes is over the limit of {MAX_BODY}", code="body_too_large")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise ApiError(413, f"request body is over the limit of {MAX_BODY} bytes", code="body_too_large")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None


# ----------------------------------------------------------------------------- the other routes


async def models(request: Request) -> Response:
    name = request.app.state.name
    return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "minicodegen"}]})


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "model": request.app.state.name} | request.app.state.engine.stats())


async def copilot_token(request: Request) -> Response:
    """What FauxPilot answers the Copilot plugin's token request with: a token that is never checked."""
    return JSONResponse({"token": "minicodegen", "expires_at": int(time.time()) + 30 * 24 * 3600, "refresh_in": 900})


async def playground(request: Request) -> Response:
    page = resources.files("minicodegen").joinpath("data/playground.html").read_text(encoding="utf-8")
    return HTMLResponse(page.replace("{{MODEL}}", request.app.state.name))


OPEN_ROUTES = ("/", "/health")  # no API key needed: the page asks for the key itself


def create_app(model: Model, name: str, max_batch: int = 16, api_key: str | None = None) -> Starlette:
    """The ASGI application; its lifespan starts the engine's thread and stops it."""
    engine = Engine(model, max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = threading.Thread(target=engine.run, args=(stop,), name="minicodegen-engine", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=10)

    async def handle(request: Request, call) -> Response:  # noqa: ANN001
        try:
            if api_key is not None and request.url.path not in OPEN_ROUTES:
                if request.headers.get("authorization", "") != f"Bearer {api_key}":
                    raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                   code="invalid_api_key")  # fmt: skip
            return await call(request)
        except ApiError as e:
            return e.response()

    def route(path: str, fn, methods: list[str]) -> Route:  # noqa: ANN001
        async def endpoint(request: Request) -> Response:
            return await handle(request, fn)

        return Route(path, endpoint, methods=methods)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail)), code=None).response()

    app = Starlette(
        routes=[
            route("/v1/completions", complete, ["POST"]),
            route("/v1/engines/{engine}/completions", complete, ["POST"]),
            route("/v1/models", models, ["GET"]),
            route("/health", health, ["GET"]),
            route("/copilot_internal/v2/token", copilot_token, ["GET", "POST"]),
            route("/", playground, ["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.model, app.state.name, app.state.engine = model, name, engine
    return app


def serve(model: Model, name: str, host: str = "127.0.0.1", port: int = 18080, api_key: str | None = None,
          max_batch: int = 16) -> None:
    """Runs the server until interrupted (uvicorn handles Ctrl-C, then KeyboardInterrupt is raised
    again here for the command line's exit code 130)."""
    import uvicorn

    if host not in LOOPBACK and api_key is None:
        print(f"minicodegen: warning: serving on {host} without --api-key: anyone who can reach this address can "
              "use the model", file=sys.stderr)  # fmt: skip
    app = create_app(model, name, max_batch, api_key)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    print(f"minicodegen: serving {name} on http://{host}:{port} (playground at /, OpenAI API at /v1)",
          file=sys.stderr, flush=True)  # fmt: skip
    uvicorn.Server(config).run()
