// Talking to this nsed server: the API key (session storage only), JSON reads, and the
// streamed chat completion whose SSE chunks carry the deliberation's events.

const KEY_ITEM = "nsed-api-key";

export function apiKey() {
  return sessionStorage.getItem(KEY_ITEM) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

/** An error answer of the server (OpenAI-shaped JSON), with its HTTP status. */
export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code || null;
  }
  get needsKey() {
    return this.status === 401;
  }
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || null;
    }
  } catch (_) {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message, code);
}

export async function getJSON(path) {
  const response = await fetch(path, { headers: headers({ Accept: "application/json" }) });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/**
 * POST a streamed chat completion and call `onEvent(event)` for every nsed event, then
 * `onEvent({type: "answer", text, summary})` with the streamed answer. Returns the run id
 * (from x-nsed-run-id) once the stream ends. `onStart(runId)` runs when the headers arrive.
 */
export async function streamChat(body, { signal, onStart, onEvent }) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  if (!response.ok) throw await errorOf(response);
  const runId = response.headers.get("x-nsed-run-id");
  if (onStart) onStart(runId);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let answer = "";
  let summary = null;
  const handle = (data) => {
    if (data === "[DONE]") return true;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new ApiError(chunk.error.status || 500, chunk.error.message, chunk.error.code);
    if (chunk.nsed_event) onEvent(chunk.nsed_event);
    for (const choice of chunk.choices || []) {
      if (choice.delta && choice.delta.content) answer += choice.delta.content;
    }
    if (chunk.nsed) summary = chunk.nsed;
    return false;
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data && handle(data)) {
        onEvent({ type: "answer", text: answer, summary });
        return runId;
      }
    }
  }
  throw new ApiError(502, "the stream ended before the deliberation finished");
}
