// The JSON API, from the browser: same-origin fetches with the session cookie; writes
// are JSON (the API refuses other bodies, and writes from another origin). An error
// answer becomes an ApiError carrying the API's code and message.

export class ApiError extends Error {
  constructor(status, code, message, field, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
    this.retryAfter = retryAfter;
  }
}

async function send(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { accept: "application/json" } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "network", "Sandbar cannot be reached; check the connection.");
  }
  if (!response.ok) {
    let error = {};
    try {
      error = (await response.json()).error || {};
    } catch {
      // (not JSON: a proxy's page)
    }
    throw new ApiError(response.status, error.code || "error",
      error.message || response.statusText, error.field, response.headers.get("retry-after"));
  }
  return response;
}

export async function api(method, path, body) {
  const response = await send(method, path, body);
  if (response.status === 204) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path) => api("GET", path);

// The next page's address from an RFC 8288 Link header (rel="next"), or null.
export function nextLink(header) {
  if (!header) return null;
  for (const part of header.split(",")) {
    const match = part.match(/<([^>]*)>\s*;(.*)/);
    if (match && /(^|;)\s*rel\s*=\s*"?([^";]*\s)?next(\s[^";]*)?"?\s*(;|$)/i.test(match[2])) {
      const url = new URL(match[1], window.location.href);
      if (url.origin === window.location.origin) return url.pathname + url.search;
    }
  }
  return null;
}

// One page of a list and the address of the next (null: the last).
export async function page(path) {
  const response = await send("GET", path);
  return { rows: await response.json(), next: nextLink(response.headers.get("link")) };
}

// Every row of a list, following rel="next" links while there are any, in the largest
// pages the API gives (1,000 rows), so a list of 1,000 sandboxes is one request.
export async function all(path, maxPages = 1000) {
  let rows = [];
  let next = /[?&]limit=/.test(path) ? path : `${path}${path.includes("?") ? "&" : "?"}limit=1000`;
  for (let i = 0; next && i < maxPages; i += 1) {
    const got = await page(next);
    rows = rows.concat(got.rows);
    next = got.next;
  }
  return rows;
}

// A refusal in words, for people.
export function explain(error) {
  if (!(error instanceof ApiError)) return `Something went wrong: ${error.message}`;
  const message = error.message || "";
  switch (error.status) {
    case 0: return message;
    case 401: return `Please sign in. ${message}`;
    case 403: return `Not allowed: ${message}`;
    case 404: return `Not found: ${message}`;
    case 409: return `Not now: ${message}`;
    case 422: return `Please check the form: ${message}`;
    case 429: return `Too many attempts: ${message}${error.retryAfter ? ` Try again in ${error.retryAfter} s.` : ""}`;
    default: return `The server refused (${error.status}): ${message}`;
  }
}
