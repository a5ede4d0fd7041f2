// The administrator API as the UI calls it: the session is the HttpOnly cookie (the page
// never sees the token); every change carries the X-Lifeboat-Csrf header the appliance
// requires of cookie sessions. An error is thrown as ApiError (status, code, message,
// and the field its message names, for showing it beside that field).

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
    // Server messages about one field start with its name: "name: ...".
    const m = /^([a-z_][a-z0-9_]*(?:\[\d+\])?(?:\.[a-z_][a-z0-9_]*)*): /.exec(message || "");
    this.field = m ? m[1] : null;
  }
}

let onUnauthenticated = () => {};
export function whenLoggedOut(f) {
  onUnauthenticated = f;
}

export async function call(method, path, body, extraHeaders = {}, quiet = false) {
  const headers = { "X-Lifeboat-Csrf": "1", ...extraHeaders };
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "network", `the appliance did not answer (${e.message})`);
  }
  const text = await r.text();
  let v = null;
  try {
    v = text ? JSON.parse(text) : null;
  } catch {
    v = null;
  }
  if (!r.ok) {
    const e = new ApiError(r.status, v?.code || "error", v?.error || `HTTP ${r.status}`);
    if (r.status === 401 && !quiet && !path.endsWith("/login") && !path.endsWith("/setup")) onUnauthenticated(e);
    throw e;
  }
  return v;
}

// A GET started before the page knows it will need it (the dashboard's machines, while
// the session is being checked); `get` takes its answer if it is fresh, else asks again.
const early = new Map();
export function prefetch(path) {
  early.set(path, { at: Date.now(), answer: call("GET", path, undefined, {}, true).catch((e) => e) });
}

export async function get(path) {
  const e = early.get(path);
  if (e) {
    early.delete(path);
    if (Date.now() - e.at < 3000) {
      const v = await e.answer;
      if (!(v instanceof Error)) return v;
    }
  }
  return call("GET", path);
}
export const put = (path, body) => call("PUT", path, body);
export const post = (path, body) => call("POST", path, body);
export const del = (path) => call("DELETE", path);
// Setup and login ask for the session as a cookie.
export const openSession = (path, body) => call("POST", path, body, { "X-Lifeboat-Session": "cookie" });
