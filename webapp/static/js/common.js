/* Shared by the fleet and node pages: the token, REST calls, the Socket.IO connection, formatting
 * and small DOM helpers. Plain ES2017, no build step; exposes one global, `Thermal`.
 * The page's CSP forbids inline script and style attributes: build the DOM with these helpers
 * (textContent, never innerHTML with data) and style through classes and data- attributes. */
"use strict";

(function () {
  const TOKEN_KEY = "thermal.token";
  const body = document.body;
  const tokensRequired = body.dataset.tokensRequired === "true";
  const readsOpen = body.dataset.readsOpen !== "false";
  // Sockets and writes need a token when tokens are configured; reads too when not left open.
  const needsToken = tokensRequired || !readsOpen;

  // --- DOM -----------------------------------------------------------------------------------

  /** Find an element by id; a missing one is a template bug worth a clear message. */
  function $(id) {
    const found = document.getElementById(id);
    if (!found) throw new Error(`the page has no element #${id}`);
    return found;
  }

  /** Create an element: el("li", {class: "x", testid: "y", text: "z", data: {a: 1}}, child...). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "testid") node.dataset.testid = value;
      else if (key === "data") Object.assign(node.dataset, value);
      else if (key === "hidden") node.hidden = Boolean(value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setText(node, text) {
    const value = text === null || text === undefined ? "—" : String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  // --- formatting ----------------------------------------------------------------------------

  function isNumber(value) {
    return typeof value === "number" && Number.isFinite(value);
  }

  /** 33.3 -> "33.3 °C"; null -> "—". Temperatures come with one decimal (DESIGN.md). */
  function temp(value) {
    return isNumber(value) ? `${value.toFixed(1)} °C` : "—";
  }

  function percent(fraction) {
    return isNumber(fraction) ? `${Math.round(fraction * 100)} %` : "—";
  }

  const timeOnly = new Intl.DateTimeFormat(undefined, {
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
  const dateTime = new Intl.DateTimeFormat(undefined, {
    day: "numeric", month: "short", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });

  /** An ISO 8601 time as local time: the time of day for today, else the date too. */
  function time(iso) {
    if (!iso) return "—";
    const at = new Date(iso);
    if (Number.isNaN(at.getTime())) return String(iso);
    return at.toDateString() === new Date().toDateString() ? timeOnly.format(at) : dateTime.format(at);
  }

  /** Fill a <time> element: the text for people, the datetime attribute for machines. */
  function setTime(node, iso) {
    setText(node, time(iso));
    if (iso) node.setAttribute("datetime", iso);
    else node.removeAttribute("datetime");
  }

  function seconds(iso) {
    const ms = new Date(iso).getTime();
    return Number.isNaN(ms) ? null : ms / 1000;
  }

  function duration(secondsValue) {
    if (!isNumber(secondsValue)) return "a while";
    if (secondsValue < 90) return `${Math.round(secondsValue)} s`;
    if (secondsValue < 90 * 60) return `${Math.round(secondsValue / 60)} min`;
    return `${(secondsValue / 3600).toFixed(1)} h`;
  }

  /** An alarm event in words. */
  function alarmText(alarm) {
    switch (alarm.kind) {
      case "over_threshold":
        return `Hot: ${temp(alarm.value)}, over the ${temp(alarm.limit)} threshold`;
      case "non_uniform":
        return `Uneven: ${isNumber(alarm.value) ? alarm.value.toFixed(1) : "?"} °C between coldest and hottest pixel (limit ${isNumber(alarm.limit) ? alarm.limit.toFixed(1) : "?"} °C)`;
      case "rate_of_rise":
        return `Rising fast: hottest pixel up ${isNumber(alarm.value) ? alarm.value.toFixed(1) : "?"} °C (limit ${isNumber(alarm.limit) ? alarm.limit.toFixed(1) : "?"} °C)`;
      case "offline":
        return `Offline: silent for ${duration(alarm.value)}`;
      default:
        return `${alarm.kind}: ${alarm.value}`;
    }
  }

  /** An active alarm as a list item: severity badge, words, and whether it was acknowledged. */
  function alarmItem(alarm, withDevice) {
    const severity = alarm.severity || "warning";
    return el("li", {
      class: `alarm severity-${severity}`,
      data: { kind: alarm.kind, severity, alarmId: String(alarm.alarm_id) },
      testid: "alarm",
    },
    el("span", { class: `severity ${severity}`, testid: "alarm-severity", text: severity }),
    " ",
    withDevice ? el("a", { href: `/devices/${encodeURIComponent(alarm.device_id)}`, text: alarm.device_id }) : null,
    withDevice ? " " : null,
    el("span", { text: alarmText(alarm) }),
    alarm.acked_at ? el("span", { class: "muted", text: ` · acked by ${alarm.acked_by || "?"}` }) : null);
  }

  /** Critical first, then the newest. */
  function byUrgency(a, b) {
    const rank = (x) => (x.severity === "critical" ? 0 : 1);
    return rank(a) - rank(b) || String(b.opened_at).localeCompare(String(a.opened_at));
  }

  // --- the token -----------------------------------------------------------------------------

  function getToken() {
    try {
      return window.localStorage.getItem(TOKEN_KEY);
    } catch (e) {
      return null;
    }
  }

  function setToken(token) {
    try {
      window.localStorage.setItem(TOKEN_KEY, token);
    } catch (e) {
      // Private browsing may refuse storage: the token then lives until the page closes.
    }
    memoryToken = token;
    showSignOut();
  }

  function clearToken() {
    try {
      window.localStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      // nothing stored
    }
    memoryToken = null;
    showSignOut();
  }

  let memoryToken = null;
  let waiting = [];

  function currentToken() {
    return getToken() || memoryToken;
  }

  function showSignOut() {
    const button = document.getElementById("forget-token");
    if (button) button.hidden = !(needsToken && currentToken());
  }

  /** Show the token form (once, however many callers wait) and resolve with what is typed. */
  function askToken(reason) {
    const form = $("token-form");
    if (reason) setText($("token-reason"), reason);
    form.hidden = false;
    $("token-input").focus();
    return new Promise((resolve) => waiting.push(resolve));
  }

  function setupTokenForm() {
    const form = document.getElementById("token-form");
    if (!form) return;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("token-input");
      const token = input.value.trim();
      if (!token) return;
      setToken(token);
      input.value = "";
      form.hidden = true;
      const resolvers = waiting;
      waiting = [];
      for (const resolve of resolvers) resolve(token);
    });
    const forget = document.getElementById("forget-token");
    if (forget) {
      forget.addEventListener("click", () => {
        clearToken();
        window.location.reload();
      });
    }
    showSignOut();
  }

  /** The token to use: none when the server needs none; else the stored one, or ask once. */
  function ensureToken() {
    if (!needsToken) return Promise.resolve(null);
    const token = currentToken();
    return token ? Promise.resolve(token) : askToken();
  }

  // --- REST ----------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, data) {
      super(message);
      this.status = status;
      this.data = data;
    }
  }

  function authHeaders() {
    const token = currentToken();
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  /** A token refused by the server is forgotten and asked for again; then the page starts over
   * with the new one. `used` is the token the refused request carried: a refusal that arrives
   * after a newer token was typed (the socket's often comes late) is stale and ignored, or it
   * would throw away the good token. */
  let refused = false;

  function tokenRefused(message, used) {
    const current = currentToken();
    if (current && current !== used) return;
    clearToken();
    const ask = askToken(`The server refused the token (${message}). Enter a valid one.`);
    if (!refused) {
      refused = true; // the socket and a REST call may both be refused: start over once
      ask.then(() => window.location.reload());
    }
  }

  /** Call the REST API; resolves with the JSON body, rejects with an ApiError in words. */
  async function api(path, options) {
    const opts = options || {};
    const used = currentToken();
    const headers = Object.assign({ Accept: "application/json" }, authHeaders());
    let payload;
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(opts.json);
    }
    let response;
    try {
      response = await fetch(path, {
        method: opts.method || "GET",
        headers,
        body: payload,
        credentials: "same-origin",
        cache: "no-store",
      });
    } catch (e) {
      throw new ApiError(0, "the server cannot be reached; check the connection");
    }
    let data = null;
    if ((response.headers.get("Content-Type") || "").includes("json")) {
      try {
        data = await response.json();
      } catch (e) {
        data = null;
      }
    }
    if (!response.ok) {
      const message = (data && (data.error || data.msg)) ||
        `the server answered ${response.status} ${response.statusText}`.trim();
      if (response.status === 401) tokenRefused(message, used);
      throw new ApiError(response.status, message, data);
    }
    return data;
  }

  /** A URL an <img> or <a> can use for an API resource: the path itself when reads are open,
   * else a Blob URL fetched with the token (the caller revokes it with `release`). */
  async function resourceUrl(path) {
    if (readsOpen) return path;
    const response = await fetch(path, { headers: authHeaders(), credentials: "same-origin" });
    if (!response.ok) throw new ApiError(response.status, `could not load ${path}`);
    return URL.createObjectURL(await response.blob());
  }

  function release(url) {
    if (url && url.startsWith("blob:")) URL.revokeObjectURL(url);
  }

  /** Download links work as plain links when reads are open; else fetch with the token. */
  function protectDownload(link) {
    if (readsOpen) return;
    link.addEventListener("click", async (event) => {
      event.preventDefault();
      try {
        const url = await resourceUrl(link.getAttribute("href"));
        const a = el("a", { href: url, download: link.getAttribute("download") || "" });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => release(url), 60000);
      } catch (e) {
        window.alert(`The download failed: ${e.message}`);
      }
    });
  }

  // --- images --------------------------------------------------------------------------------

  const blobUrls = new WeakMap();

  /** Show a `frame` event's PNG (binary attachment) in an <img>, revoking the previous URL. */
  function showPng(img, image) {
    if (!image) return false;
    const url = URL.createObjectURL(new Blob([image], { type: "image/png" }));
    const old = blobUrls.get(img);
    img.src = url;
    blobUrls.set(img, url);
    if (old) URL.revokeObjectURL(old);
    return true;
  }

  /** Point an <img> at a plain URL, revoking a Blob URL it held. */
  function showUrl(img, url) {
    const old = blobUrls.get(img);
    img.src = url;
    if (url.startsWith("blob:")) blobUrls.set(img, url);
    else blobUrls.delete(img);
    if (old && old !== url) URL.revokeObjectURL(old);
  }

  // --- Socket.IO -----------------------------------------------------------------------------

  function setConnection(state, text) {
    const node = document.getElementById("connection");
    if (!node) return;
    node.dataset.state = state;
    setText(node, text);
  }

  /** Connect to the push server, call `subscribe` on every (re)connection so the server sends
   * a fresh snapshot, and route the events of DESIGN.md to `handlers`. */
  function connect(subscription, handlers) {
    let socketToken = null; // the token of the latest connection attempt
    const socket = window.io({
      // A function, so that a reconnection uses the token typed since.
      auth: (cb) => {
        socketToken = currentToken();
        cb(needsToken ? { token: socketToken || "" } : {});
      },
    });
    socket.on("connect", () => {
      setConnection("live", "live");
      socket.emit("subscribe", subscription, (ack) => {
        if (ack && ack.error && handlers.error) handlers.error(ack.error);
      });
    });
    socket.on("disconnect", (reason) => {
      setConnection("offline", reason === "io client disconnect" ? "closed" : "reconnecting…");
    });
    socket.on("connect_error", (err) => {
      if (socket.active) {
        // A transport problem: the client retries on its own.
        setConnection("offline", "reconnecting…");
        return;
      }
      // Refused by the server: with tokens configured that means the token. Close the
      // underlying connection too; the page starts over once a token is given.
      socket.disconnect();
      setConnection("offline", "refused");
      if (tokensRequired) tokenRefused(`live connection: ${err.message}`, socketToken);
    });
    for (const name of ["node_state", "ambient", "frame", "downlink", "alarm"]) {
      if (handlers[name]) {
        socket.on(name, (payload) => {
          try {
            handlers[name](payload);
          } catch (e) {
            // One bad event must not stop the others from being shown.
            console.warn(`could not show a ${name} event`, e);
          }
        });
      }
    }
    return socket;
  }

  setupTokenForm();

  window.Thermal = {
    $, el, setText, setTime, isNumber, temp, percent, time, seconds, alarmText, alarmItem, byUrgency,
    tokensRequired, readsOpen, needsToken, ensureToken, api, ApiError, resourceUrl, release,
    protectDownload, showPng, showUrl, connect, setConnection,
  };
})();
