// The console's one way to the gateway's JSON API: fetch with the user's gateway key (kept in localStorage), and
// errors as ApiError carrying the API's envelope ({"error": {message, type, param, code}}). A 401 also tells
// the shell, which asks for a key.

const KEY_NAME = "rewardgate.apiKey";
let unauthorized = () => {};

export class ApiError extends Error {
  constructor(status, body, fallback) {
    const error = (body && body.error) || {};
    super(typeof error.message === "string" ? error.message : fallback);
    this.name = "ApiError";
    this.status = status;
    this.type = error.type || null;
    this.param = error.param || null;
    this.code = error.code || null;
    this.body = body;
  }
}

export function getKey() {
  return localStorage.getItem(KEY_NAME) || "";
}

export function setKey(key) {
  if (key) localStorage.setItem(KEY_NAME, key);
  else localStorage.removeItem(KEY_NAME);
}

/** `handler(error)` runs on every 401 (the shell shows its key prompt). */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

/**
 * api("GET", "/v1/logs", {query: {limit: 50}}) -> the parsed JSON body.
 * Options: json (a body sent as JSON), body + contentType (sent as is), query (added to the URL; empty values
 * dropped), raw (return the Response, e.g. for a download).
 */
export async function api(method, path, { json, body, contentType, query, raw } = {}) {
  const headers = { Accept: "application/json" };
  const key = getKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (json !== undefined) {
    body = JSON.stringify(json);
    contentType = "application/json";
  }
  if (contentType) headers["Content-Type"] = contentType;
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== "") params.set(k, v);
    if ([...params].length) url += `?${params}`;
  }
  let response;
  try {
    response = await fetch(url, { method, headers, body });
  } catch (err) {
    throw new ApiError(0, null, `the gateway did not answer (${err.message})`);
  }
  if (!response.ok) {
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    const reason = response.status === 404 && !data ? "this gateway does not serve" : response.statusText || "failed";
    const err = new ApiError(response.status, data, `${response.status} ${reason}: ${method} ${path}`);
    if (response.status === 401) unauthorized(err);
    throw err;
  }
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

/** Every page of a cursor-paged list route, up to `max` items. */
export async function listAll(path, query = {}, max = 1000) {
  const items = [];
  let cursor = null;
  do {
    const page = await api("GET", path, { query: { ...query, cursor } });
    items.push(...page.data);
    cursor = page.has_more ? page.next_cursor : null;
  } while (cursor && items.length < max);
  return items;
}
