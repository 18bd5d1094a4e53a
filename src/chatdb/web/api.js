// The chatdb HTTP API, as any other client uses it: JSON, a bearer token,
// application/problem+json errors.

/** The server answered with an error (problem+json: status, code, detail). */
export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.code = code;
    this.detail = detail || `HTTP ${status}`;
  }

  /** Worth retrying as is: the server was busy or unreachable behind a proxy. */
  get transient() {
    return this.status >= 500 || this.status === 408 || this.status === 429;
  }
}

/** No answer: offline, connection refused or cut. The request may or may not have arrived. */
export class NetworkError extends Error {}

export class Api {
  constructor() {
    this.token = null;
    this.onUnauthorized = () => {};
  }

  async request(method, path, { body, headers = {}, signal } = {}) {
    const sent = { Accept: "application/json", ...headers };
    if (this.token) sent.Authorization = `Bearer ${this.token}`;
    const init = { method, headers: sent, signal, cache: "no-store" };
    if (body !== undefined) {
      sent["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new NetworkError(`${method} ${path}: no answer (${error.message})`);
    }
    let data = null;
    if (response.status !== 204) {
      try {
        data = await response.json();
      } catch {
        // The connection dropped mid-body, or a proxy answered with HTML.
        if (response.ok) throw new NetworkError(`${method} ${path}: the answer was cut off`);
      }
    }
    if (!response.ok) {
      if (response.status === 401 && this.token) this.onUnauthorized();
      throw new ApiError(response.status, data?.code, data?.detail);
    }
    return data;
  }

  get(path, options) {
    return this.request("GET", path, options);
  }

  post(path, body, options = {}) {
    return this.request("POST", path, { ...options, body });
  }

  patch(path, body, options = {}) {
    return this.request("PATCH", path, { ...options, body });
  }

  delete(path, options) {
    return this.request("DELETE", path, options);
  }

  /** The user with this username, or null. */
  async findUser(username) {
    if (!/^[A-Za-z0-9_.-]{1,50}$/.test(username)) return null; // no account can have it
    const users = await this.get(`/v1/users?username=${encodeURIComponent(username)}`);
    return users[0] ?? null;
  }
}
