// The controller's HTTP API. The bearer token lives in sessionStorage (this tab only) and goes out
// only in the Authorization header, never in a URL.

const TOKEN_KEY = 'lepton-edge.api-token';
let memoryToken = null; // when sessionStorage is unavailable (storage disabled)

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch (_) {
    return memoryToken;
  }
}

export function setToken(token) {
  memoryToken = token || null;
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch (_) { /* kept in memory only */ }
}

/** GET a JSON document; throws ApiError (status 0 when the controller cannot be reached). */
export async function getJson(path, {signal} = {}) {
  const headers = {Accept: 'application/json'};
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  let resp;
  try {
    resp = await fetch(path, {headers, cache: 'no-store', credentials: 'omit', redirect: 'error', signal});
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, 'the controller cannot be reached');
  }
  let body = null;
  try {
    body = await resp.json();
  } catch (_) { /* not JSON: the status says enough */ }
  if (!resp.ok) {
    const message = body && typeof body.error === 'string' ? body.error : `HTTP ${resp.status}`;
    throw new ApiError(resp.status, message);
  }
  return body;
}
