// The REST API as the page uses it: the same routes as curl, the key in a header.
// The key lives in this tab's sessionStorage only (gone when the tab closes).

const KEY = "finetune.api_key";

export const auth = {
  get: () => sessionStorage.getItem(KEY),
  set: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, code, message, fields = []) {
    super(message);
    this.status = status;
    this.code = code;
    this.fields = fields;
  }
}

function unauthorized(err) {
  auth.clear();
  window.dispatchEvent(new CustomEvent("finetune:unauthorized", { detail: err }));
}

// The service's {"error": {"code", "message"}} as an ApiError, message as it is.
function errorFromBody(status, statusText, text) {
  let code = `http_${status}`;
  let message = statusText ? `${status} ${statusText}` : `HTTP ${status}`;
  let fields = [];
  try {
    const body = JSON.parse(text);
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
      fields = body.error.fields || [];
    }
  } catch {
    // not JSON (a proxy's page): keep the status line
  }
  return new ApiError(status, code, message, fields);
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${auth.get() || ""}`, ...extra };
}

async function send(path, { method = "GET", json, body, headers: extra = {}, signal } = {}) {
  const h = headers({ Accept: "application/json", ...extra });
  if (json !== undefined) {
    h["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const res = await fetch(path, { method, headers: h, body, signal });
  if (!res.ok) {
    const err = errorFromBody(res.status, res.statusText, await res.text());
    if (res.status === 401) unauthorized(err);
    throw err;
  }
  return res;
}

export async function api(path, options) {
  const res = await send(path, options);
  return res.status === 204 ? null : res.json();
}

// A multipart upload with progress (fetch has no upload progress; XMLHttpRequest does).
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("Authorization", `Bearer ${auth.get() || ""}`);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded, e.total);
    };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(JSON.parse(xhr.responseText));
        return;
      }
      const err = errorFromBody(xhr.status, xhr.statusText, xhr.responseText);
      if (xhr.status === 401) unauthorized(err);
      reject(err);
    };
    xhr.onerror = () =>
      reject(new ApiError(0, "network_error", "The upload did not reach the service (network error)."));
    xhr.send(form);
  });
}

// A file download: the key is a header, so fetch the bytes and hand them over as a blob.
export async function download(path, fallbackName) {
  const res = await send(path, { headers: { Accept: "application/octet-stream" } });
  const disposition = res.headers.get("content-disposition") || "";
  const match = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
  const name = match ? decodeURIComponent(match[1]) : fallbackName;
  const blob = await res.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  return { name, size: blob.size };
}

// Server-sent events over fetch (EventSource cannot send an Authorization header).
// Calls onEvent({id, type, data}) for each event; resolves when the server ends the
// stream (the job is over). A dropped connection is resumed from the last id seen.
export async function streamEvents(path, onEvent, signal) {
  let last = 0;
  for (let attempt = 0; ; attempt++) {
    try {
      const res = await send(`${path}?after=${last}`, {
        headers: { Accept: "text/event-stream" },
        signal,
      });
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const ev = parseEvent(block);
          if (ev) {
            last = Math.max(last, ev.id);
            onEvent(ev);
            attempt = 0;
          }
        }
      }
    } catch (err) {
      if (signal?.aborted || err instanceof ApiError || attempt >= 5) throw err;
      await new Promise((r) => setTimeout(r, 1000 * (attempt + 1)));
    }
  }
}

function parseEvent(block) {
  let id = 0;
  let type = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("id:")) id = Number(line.slice(3).trim());
    else if (line.startsWith("event:")) type = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  if (!data.length) return null;
  const payload = JSON.parse(data.join("\n"));
  return { id, type, data: payload.data ?? payload, created_at: payload.created_at };
}

// A random key for Idempotency-Key (crypto.randomUUID needs a secure context).
export function randomKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "ui-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ---------------------------------------------------------------- one object per noun

const q = encodeURIComponent;

export const datasets = {
  list: ({ limit = 200, signal } = {}) => api(`/v1/datasets?limit=${limit}`, { signal }),
  get: (id, { signal } = {}) => api(`/v1/datasets/${q(id)}`, { signal }),
  // form: FormData with file (and name, task, label_column, text_column)
  create: (form, onProgress) => upload("/v1/datasets", form, onProgress),
  remove: (id) => api(`/v1/datasets/${q(id)}`, { method: "DELETE" }),
};

export const jobs = {
  list: ({ limit = 100, signal } = {}) => api(`/v1/jobs?limit=${limit}`, { signal }),
  get: (id, { signal } = {}) => api(`/v1/jobs/${q(id)}`, { signal }),
  create: (spec, idempotencyKey) =>
    api("/v1/jobs", { method: "POST", json: spec, headers: { "Idempotency-Key": idempotencyKey } }),
  cancel: (id) => api(`/v1/jobs/${q(id)}/cancel`, { method: "POST" }),
  // The live event stream; resolves when the job is over.
  stream: (id, onEvent, signal) => streamEvents(`/v1/jobs/${q(id)}/events`, onEvent, signal),
};

export const models = {
  list: ({ limit = 200, signal } = {}) => api(`/v1/models?limit=${limit}`, { signal }),
  get: (id, { signal } = {}) => api(`/v1/models/${q(id)}`, { signal }),
  // request: {body: FormData} for images, {json: {inputs, top_k}} for text and tabular
  predict: (id, request) => api(`/v1/models/${q(id)}/predict`, { method: "POST", ...request }),
  download: (id, format) => download(`/v1/models/${q(id)}/export?format=${q(format)}`, `${id}.${format}`),
};

export const baseModels = { list: ({ signal } = {}) => api("/v1/base-models", { signal }) };

// The service's own OpenAPI schema (the job form reads JobSpec's defaults from it).
export const schema = ({ signal } = {}) => api("/openapi.json", { signal });
