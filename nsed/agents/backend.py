"""Talking to models: the ChatBackend protocol and the OpenAI-compatible HTTP client.

Everything that calls a model goes through ``ChatBackend.complete``. The HTTP implementation
shares one ``httpx.AsyncClient`` and one concurrency limiter per endpoint (``EndpointPool``), so
agents on the same server reuse keep-alive connections and never exceed the server's slots.
Retries use exponential backoff with full jitter on connect errors, 429 and 5xx, and honour
``Retry-After``. Known quirks of llama.cpp's server are handled here, at the boundary:

* a request right after a streamed reply on a kept-alive connection may fail with "Server
  disconnected": retried at once on a fresh connection, without counting as a backoff step;
* with ``n > 1`` its usage counts one choice only: completion tokens are re-estimated;
* an unknown model id is accepted silently: ``preflight`` checks ``/models`` and warns.

Reasoning models (see ``reasoning.py``): the thinking is read from ``message.reasoning`` /
``reasoning_content`` or split off a leading ``<think>`` block, counted in ``reasoning_tokens``
and kept out of ``text``. With ``structured = "auto"`` a JSON schema is sent to a reasoning
model only once its server has shown that it returns the thinking apart (vLLM with
``--reasoning-parser`` applies the grammar to the answer only); until then, and for good when
a grammar came back without thinking or the thinking arrives inline, the call goes out as free
text for the tolerant parser. A request whose ``max_tokens`` does not fit the model's context
(vLLM answers 400 with both numbers) is sent once more with the cap that fits.

Every call is bounded (:mod:`nsed.agents.http_limits`): a total deadline of the model's
``timeout_s`` (or the deliberation's ``call_timeout_s``) over the whole call, retries included,
and a reply-size cap (``max_reply_bytes``); either is that agent's failed call.

API keys are sent as ``Authorization: Bearer`` and never logged or put in an error message
(an error body that echoes the key has it replaced); ``extra_headers`` are sent as configured
and never logged either; URLs become text only through :func:`nsed.errors.redact_url`.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import random
import re
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import anyio
import httpx
from pydantic import BaseModel, Field

from nsed.agents.http_limits import call_deadline, request_capped, seconds_left
from nsed.agents.reasoning import is_reasoning_model, split_thinking
from nsed.agents.replies import MalformedReply, read_reply
from nsed.config import ModelSpec, StructuredMode
from nsed.errors import BackendError, BackendTimeout, BackendUnreachable, redact_url

log = logging.getLogger("nsed.backend")

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 30.0


class Completion(BaseModel):
    """One successful chat completion, with its accounting.

    ``text`` is what the model answered (its content); ``reasoning`` is a reasoning model's
    separate thinking channel, kept apart so it never reaches reviewers unless a team asks.
    """

    text: str
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []  # native tool calls of the first choice, as sent
    reasoning: str = ""
    finish_reason: str | None = None
    reasoning_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    retries: int = 0
    usage_estimated: bool = False
    model: str = ""
    max_tokens: int | None = Field(default=None, description="the completion cap sent")
    structured: StructuredMode = Field(
        default="none", description="the response_format actually sent (none: free text)"
    )

    @property
    def truncated(self) -> bool:
        """The reply was cut at ``max_tokens`` (or the context end): it is not complete."""
        return self.finish_reason == "length"

    def followed_by(self, retry: Completion) -> Completion:
        """One completion for a call and its retry: the retry's answer, both calls' costs.

        A cut first attempt keeps the pair marked truncated: its budget was too small.
        """
        return retry.model_copy(
            update={
                "reasoning_tokens": self.reasoning_tokens + retry.reasoning_tokens,
                "prompt_tokens": self.prompt_tokens + retry.prompt_tokens,
                "completion_tokens": self.completion_tokens + retry.completion_tokens,
                "cost_usd": self.cost_usd + retry.cost_usd,
                "latency_s": self.latency_s + retry.latency_s,
                "retries": self.retries + retry.retries,
                "usage_estimated": self.usage_estimated or retry.usage_estimated,
                "finish_reason": "length" if self.truncated else retry.finish_reason,
                "max_tokens": self.max_tokens,
            }
        )


@runtime_checkable
class ChatBackend(Protocol):
    """The one interface between nsed and a model."""

    name: str
    model: str
    base_url: str

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        schema: dict[str, Any] | None = None,
        schema_name: str = "response",
        stop: list[str] | None = None,
        n: int = 1,
        tool_params: dict[str, Any] | None = None,
    ) -> Completion: ...

    async def preflight(self) -> None: ...


@dataclass
class RetryPolicy:
    """Backoff parameters; ``max_retries`` comes from the model spec."""

    base_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), MAX_RETRY_AFTER_S)
        cap = min(self.max_delay_s, self.base_delay_s * (2**attempt))
        return random.uniform(cap / 2, cap)  # "equal jitter": never retries instantly


@dataclass
class _Endpoint:
    client: httpx.AsyncClient
    limiter: anyio.CapacityLimiter
    checked_models: set[str] = field(default_factory=set)
    structured_downgrade: StructuredMode | None = None
    # structured = "auto" for reasoning models: what each model id's replies showed so far.
    thinking: dict[str, ThinkingSeen] = field(default_factory=dict)


# What replies of a reasoning model showed about its server (see the module docstring):
#   apart: the thinking came as a separate field, so a grammar can follow it;
#   combined: it still did under a JSON schema; inline: it came inside the content;
#   suppressed: a JSON schema reply came without any thinking.
ThinkingSeen = Literal["apart", "combined", "inline", "suppressed"]


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One verified TLS context per process: building it costs ~80 ms, so pools share it."""
    import certifi  # httpx's own CA bundle

    return ssl.create_default_context(cafile=certifi.where())


class EndpointPool:
    """One AsyncClient and one concurrency limiter per base URL, for one event loop.

    Create it inside the loop that uses it and close it with ``aclose`` (or ``async with``).
    """

    def __init__(self) -> None:
        self._endpoints: dict[str, _Endpoint] = {}

    def endpoint(self, spec: ModelSpec) -> _Endpoint:
        ep = self._endpoints.get(spec.base_url)
        if ep is None:
            limits = httpx.Limits(
                max_connections=spec.max_concurrency + 4,
                max_keepalive_connections=spec.max_concurrency,
                keepalive_expiry=4.0,  # below llama.cpp's keep-alive timeout of 5 s
            )
            ep = _Endpoint(
                client=httpx.AsyncClient(
                    limits=limits, timeout=httpx.Timeout(spec.timeout_s), verify=_ssl_context()
                ),
                limiter=anyio.CapacityLimiter(spec.max_concurrency),
            )
            self._endpoints[spec.base_url] = ep
        return ep

    async def aclose(self) -> None:
        endpoints, self._endpoints = self._endpoints, {}
        for ep in endpoints.values():
            await ep.client.aclose()

    async def __aenter__(self) -> EndpointPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def response_format_for(
    mode: StructuredMode, schema: dict[str, Any] | None, name: str
) -> dict[str, Any] | None:
    """The ``response_format`` field for a structured-output mode (None: send nothing);
    ``auto`` is resolved per call by the backend before it gets here."""
    if schema is None or mode in ("none", "auto"):
        return None
    if mode == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


_CONTEXT_LIMIT = re.compile(r"maximum context length is (\d+)")
_PROMPT_TOKENS = re.compile(r"(\d+) in the messages|has (\d+) input tokens")


def cap_that_fits(detail: str, max_tokens: int) -> int | None:
    """The largest ``max_tokens`` that fits, from a context-length error (None: cannot say).

    vLLM words it "maximum context length is 40960 tokens. However, you requested 45000
    tokens (6088 in the messages, 38912 in the completion)" or, newer, "... maximum context
    length is 40960 tokens and your request has 6088 input tokens".
    """
    limit, prompt = _CONTEXT_LIMIT.search(detail), _PROMPT_TOKENS.search(detail)
    if limit is None or prompt is None:
        return None
    room = int(limit.group(1)) - int(prompt.group(1) or prompt.group(2))
    return room if 0 < room < max_tokens else None


def _error_detail(response: httpx.Response, secret: str | None = None) -> str:
    """A short description of an error response, with ``secret`` masked should it echo it."""
    text = response.text
    try:
        body = response.json()
        if isinstance(body, dict):
            err = body.get("error", body)
            msg = err.get("message") if isinstance(err, dict) else err
            if msg:
                text = str(msg)
    except (ValueError, RecursionError):
        pass
    if secret:
        text = text.replace(secret, "***")
    return text[:300] or response.reason_phrase


class HTTPBackend:
    """An OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp, hosted APIs)."""

    def __init__(
        self,
        spec: ModelSpec,
        pool: EndpointPool,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.spec = spec
        self.name = name or spec.name
        self.model = spec.model
        self.base_url = spec.base_url
        self._pool = pool
        self._retry = retry or RetryPolicy()
        self._timeout_s = timeout_s or spec.timeout_s
        self._extra_headers = spec.resolved_headers()  # a missing variable fails here, once
        self._where = redact_url(spec.base_url)  # the endpoint as text (logs)

    @asynccontextmanager
    async def _slot(self, ep: _Endpoint) -> AsyncIterator[None]:
        """One of the endpoint's slots, then the call's total deadline (queueing not counted)."""
        async with ep.limiter:
            with call_deadline(self._timeout_s, self.base_url):
                yield

    def _detail(self, response: httpx.Response) -> str:
        """The error detail of ``response``, with our API key masked should it echo it."""
        return _error_detail(response, self.spec.resolved_api_key())

    def _headers(self) -> dict[str, str]:
        """Content type, the API key as a bearer token, then ``extra_headers`` (which win)."""
        headers = {"Content-Type": "application/json"}
        key = self.spec.resolved_api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        headers.update(self._extra_headers)
        return headers

    def _structured_mode(self, ep: _Endpoint) -> StructuredMode:
        """The structured-output form of the next call (``auto`` resolved)."""
        mode: StructuredMode = ep.structured_downgrade or self.spec.structured
        if mode != "auto":
            return mode
        if not is_reasoning_model(self.spec):
            return "json_schema"
        seen = ep.thinking.get(self.model)
        return "json_schema" if seen in ("apart", "combined") else "none"

    def _observe_thinking(
        self, ep: _Endpoint, mode: StructuredMode, *, apart: bool, inline: bool
    ) -> None:
        """Learn from one reply of a reasoning model under ``structured = "auto"``."""
        if self.spec.structured != "auto" or not is_reasoning_model(self.spec):
            return
        before = ep.thinking.get(self.model)
        if before in ("inline", "suppressed"):
            return
        seen: ThinkingSeen | None = before
        if inline:
            seen = "inline"
        elif mode == "json_schema":
            seen = "combined" if apart else "suppressed"
        elif apart:
            seen = "apart"
        if seen != before and seen is not None:
            ep.thinking[self.model] = seen
            log.info(
                "%s (%s): thinking %s; structured output now %s",
                self.base_url,
                self.model,
                seen,
                "json_schema" if seen in ("apart", "combined") else "free text",
            )

    async def preflight(self) -> None:
        """Check that the endpoint answers and knows the model id; warn if it does not.

        Raises BackendUnreachable when nothing listens at the URL. A missing ``/models`` route
        is fine (some gateways do not have it).
        """
        ep = self._pool.endpoint(self.spec)
        if self.model in ep.checked_models:
            return
        url = f"{self.base_url}/models"
        try:
            with call_deadline(10.0, self.base_url):
                response = await request_capped(
                    ep.client,
                    "GET",
                    url,
                    headers=self._headers(),
                    timeout=10.0,
                    max_bytes=self.spec.max_reply_bytes,
                    endpoint=self.base_url,
                )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise BackendUnreachable(
                f"cannot connect to {self.base_url} ({type(exc).__name__}): check that the "
                "server is running and base_url is right",
                endpoint=self.base_url,
            ) from None
        except (httpx.HTTPError, BackendError) as exc:
            log.warning("preflight of %s failed: %s", self._where, type(exc).__name__)
            return
        ep.checked_models.add(self.model)
        if response.status_code != 200:
            return
        try:
            ids = [m.get("id") for m in response.json().get("data", [])]
        except (ValueError, AttributeError):
            return
        if ids and self.model not in ids:
            log.warning(
                "model %r is not listed by %s (it lists %s); the server may silently serve "
                "another model",
                self.model,
                self._where,
                ", ".join(map(str, ids[:5])),
            )

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        schema: dict[str, Any] | None = None,
        schema_name: str = "response",
        stop: list[str] | None = None,
        n: int = 1,
        tool_params: dict[str, Any] | None = None,
    ) -> Completion:
        """One chat completion; ``tool_params`` (tools, tool_choice, parallel_tool_calls) go
        into the request as they are, for backends with native tool calling."""
        ep = self._pool.endpoint(self.spec)
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        temperature = temperature if temperature is not None else self.spec.temperature
        if temperature is not None:
            body["temperature"] = temperature
        for option in ("top_p", "frequency_penalty", "presence_penalty"):
            value = getattr(self.spec, option)
            if value is not None:
                body[option] = value
        max_tokens = max_tokens or self.spec.max_tokens
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        seed = seed if seed is not None else self.spec.seed
        if seed is not None:
            body["seed"] = seed
        if stop:
            body["stop"] = stop
        if n > 1:
            body["n"] = n
        body.update(tool_params or {})
        mode = self._structured_mode(ep)
        fmt = response_format_for(mode, schema, schema_name)
        if fmt is not None:
            body["response_format"] = fmt
        body.update(self.spec.extra_body)  # provider options; nsed's own keys are refused

        async with self._slot(ep):
            response, latency, retries = await self._post_with_retries(ep, body)
            fitted = (
                cap_that_fits(_error_detail(response), max_tokens)
                if response.status_code == 400 and max_tokens is not None
                else None
            )
            if fitted is not None:
                # The cap does not fit the model's context with this prompt: use what fits.
                log.info("%s: max_tokens %d does not fit; sending %d", self._where,
                         max_tokens, fitted)
                body["max_tokens"] = max_tokens = fitted
                response, latency2, retries2 = await self._post_with_retries(ep, body)
                latency += latency2
                retries += retries2 + 1
            if (
                response.status_code in (400, 422)
                and fmt is not None
                and "response_format" in response.text
            ):
                # The backend rejects this structured-output form: step down once and remember.
                downgrade: StructuredMode = "json_object" if mode == "json_schema" else "none"
                log.warning(
                    "%s rejects %s output; falling back to %s", self._where, mode, downgrade
                )
                ep.structured_downgrade = downgrade
                mode = downgrade
                new_fmt = response_format_for(downgrade, schema, schema_name)
                body.pop("response_format", None)
                if new_fmt is not None:
                    body["response_format"] = new_fmt
                response, latency2, retries2 = await self._post_with_retries(ep, body)
                latency += latency2
                retries += retries2 + 1
        if response.status_code != 200:
            raise BackendError(
                f"{self.base_url} answered HTTP {response.status_code}: {self._detail(response)}",
                endpoint=self.base_url,
                status=response.status_code,
                attempts=retries + 1,
            )
        sent: StructuredMode = mode if "response_format" in body else "none"
        completion, inline = self._completion(response, latency, retries, n)
        self._observe_thinking(ep, sent, apart=bool(completion.reasoning) and not inline,
                               inline=inline)
        return completion.model_copy(update={"max_tokens": max_tokens, "structured": sent})

    async def _post_with_retries(
        self, ep: _Endpoint, body: dict[str, Any]
    ) -> tuple[httpx.Response, float, int]:
        """POST until a final response; returns it with the total latency and retry count."""
        url = f"{self.base_url}/chat/completions"
        headers = self._headers()
        attempt = 0
        retries = 0
        fresh_connection_used = False
        started = time.perf_counter()
        while True:
            try:
                response = await request_capped(
                    ep.client,
                    "POST",
                    url,
                    json=body,
                    headers=headers,
                    timeout=self._timeout_s,
                    max_bytes=self.spec.max_reply_bytes,
                    endpoint=self.base_url,
                )
            except httpx.RemoteProtocolError:
                # llama.cpp keep-alive quirk: the pooled connection was closed under us.
                if not fresh_connection_used:
                    fresh_connection_used = True
                    retries += 1
                    continue
                error: BackendError = BackendError(
                    f"{self.base_url} closed the connection without a response",
                    endpoint=self.base_url,
                    attempts=attempt + 1,
                    retryable=True,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                error = BackendUnreachable(
                    f"cannot connect to {self.base_url} ({type(exc).__name__})",
                    endpoint=self.base_url,
                    attempts=attempt + 1,
                    retryable=True,
                )
            except httpx.TimeoutException:
                raise BackendTimeout(
                    f"{self.base_url} did not answer within {self._timeout_s:g} s",
                    endpoint=self.base_url,
                    attempts=attempt + 1,
                ) from None
            except httpx.HTTPError as exc:
                error = BackendError(
                    f"{self.base_url}: {type(exc).__name__}",
                    endpoint=self.base_url,
                    attempts=attempt + 1,
                    retryable=True,
                )
            else:
                if response.status_code not in RETRY_STATUSES:
                    return response, time.perf_counter() - started, retries
                error = BackendError(
                    f"{self.base_url} answered HTTP {response.status_code}: "
                    f"{self._detail(response)}",
                    endpoint=self.base_url,
                    status=response.status_code,
                    attempts=attempt + 1,
                    retryable=True,
                )
                wait = self._retry.delay(
                    attempt, parse_retry_after(response.headers.get("retry-after"))
                )
                if attempt >= self.spec.max_retries or wait >= seconds_left():
                    return response, time.perf_counter() - started, retries
                log.info("%s: HTTP %s, retry in %.2fs", self._where, response.status_code, wait)
                attempt += 1
                retries += 1
                await anyio.sleep(wait)
                continue
            wait = self._retry.delay(attempt, None)
            if attempt >= self.spec.max_retries or wait >= seconds_left():
                raise error
            log.info("%s: %s, retry in %.2fs", self._where, error, wait)
            attempt += 1
            retries += 1
            await anyio.sleep(wait)

    def _completion(
        self, response: httpx.Response, latency: float, retries: int, n: int
    ) -> tuple[Completion, bool]:
        """The one place a 200 reply becomes a Completion (and whether its thinking was inline).

        A body that is not a readable chat completion is a BackendError for this call only.
        """
        try:
            reply = read_reply(response.json())
        except (ValueError, MalformedReply) as exc:
            why = str(exc) if isinstance(exc, MalformedReply) else "the body is not JSON"
            raise BackendError(
                f"{self.base_url} returned a response that is not a chat completion: {why}",
                endpoint=self.base_url,
                status=response.status_code,
            ) from None
        opened = is_reasoning_model(self.spec)
        texts, reasoning, inline = [], reply.reasoning, False
        for index, raw in enumerate(reply.texts):
            thinking, text = split_thinking(raw, self.spec.think_tags, opened=opened)
            texts.append(text)
            if index == 0 and thinking:
                inline = True
                reasoning = f"{reasoning}\n\n{thinking}" if reasoning else thinking
        prompt_tokens = reply.prompt_tokens or 0
        completion_tokens = reply.completion_tokens or 0
        estimated = False
        if reply.prompt_tokens is None and reply.completion_tokens is None:
            completion_tokens = sum(estimate_tokens(t) for t in texts) + estimate_tokens(
                reasoning
            )
            estimated = True
        elif n > 1 and len(texts) > 1:
            # llama.cpp counts one choice only; when the reported figure looks like one choice,
            # scale it to all choices by their relative lengths.
            lengths = [max(1, estimate_tokens(t)) for t in texts]
            if completion_tokens <= 1.5 * max(lengths):
                completion_tokens = round(completion_tokens * sum(lengths) / lengths[0])
                estimated = True
        reasoning_tokens = reply.reasoning_tokens
        if reasoning_tokens is None:
            # Not reported (vLLM, llama.cpp): the thinking's share of the characters written.
            share = len(reasoning) / max(1, len(reasoning) + len(texts[0]))
            reasoning_tokens = round(completion_tokens * share) if reasoning else 0
        cost = (
            prompt_tokens * self.spec.input_price + completion_tokens * self.spec.output_price
        ) / 1e6
        completion = Completion(
            text=texts[0],
            texts=texts,
            reasoning=reasoning,
            tool_calls=reply.tool_calls,
            finish_reason=reply.finish_reason,
            reasoning_tokens=min(reasoning_tokens, completion_tokens),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
            latency_s=latency,
            retries=retries,
            usage_estimated=estimated,
            model=reply.model or self.model,
        )
        return completion, inline


def estimate_tokens(text: str) -> int:
    """A rough token count (about 4 characters per token) for budgets and missing usage."""
    return (len(text) + 3) // 4
