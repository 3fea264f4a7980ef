// Shared by every page: API calls (session cookie + CSRF header, or a bearer token), the
// navigation by role, page states, and the one live event stream. Everything that came from
// the server is inserted with textContent, never as HTML.
"use strict";

const ddms = (() => {
  const ROLES = { owner: 0, admin: 1, viewer: 2 };

  function $(id) { return document.getElementById(id); }
  function show(id, visible) { const e = $(id); if (e) e.hidden = !visible; }

  // An element with text and attributes; children may be nodes or strings (inserted as text).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else if (key === "hidden" || key === "disabled" || key === "checked" || key === "selected") node[key] = true;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  // An API token handed over in the URL fragment (`/#token=…`, never sent to the server).
  function takeToken() {
    const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (match) {
      sessionStorage.setItem("ddms.token", decodeURIComponent(match[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem("ddms.token");
  }

  function cookie(name) {
    for (const part of document.cookie.split(";")) {
      const [key, ...rest] = part.trim().split("=");
      if (key === name) return rest.join("=");
    }
    return null;
  }

  class ApiError extends Error {
    constructor(status, body) {
      const error = (body && body.error) || {};
      super(error.message || ("request failed (" + status + ")"));
      this.status = status;
      this.code = error.code || null;
      this.field = error.field || null;
      this.errors = error.errors || (error.field ? [{ field: error.field, message: error.message }] : []);
    }
  }

  function toLogin() {
    const next = location.pathname + location.search;
    location.assign("/login?next=" + encodeURIComponent(next));
  }

  async function api(path, options) {
    const opts = options || {};
    const method = opts.method || "GET";
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem("ddms.token");
    if (token) headers.Authorization = "Bearer " + token;
    else if (method !== "GET" && method !== "HEAD") {
      const csrf = cookie("ddms_csrf");
      if (csrf) headers["X-CSRF-Token"] = csrf;
    }
    let body;
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.json);
    }
    let response;
    try {
      response = await fetch(path, { method, headers, body, credentials: "same-origin" });
    } catch (_) {
      throw new ApiError(0, { error: { message: "The server cannot be reached." } });
    }
    if (response.status === 401 && !opts.noRedirect) {
      if (token) sessionStorage.removeItem("ddms.token");
      toLogin();
      throw new ApiError(401, { error: { message: "Signed out." } });
    }
    if (response.status === 204) return null;
    let data = null;
    try { data = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  let me = null;
  // Who is signed in; shows the navigation entries the role may use.
  async function whoami() {
    me = await api("/api/me");
    const role = ROLES[me.role] ?? 2;
    for (const link of document.querySelectorAll("#nav [data-role]")) {
      link.hidden = (ROLES[link.dataset.role] ?? 0) < role;
    }
    document.body.dataset.role = me.role;
    $("whoami").textContent = me.subject;
    show("logout", !sessionStorage.getItem("ddms.token"));
    return me;
  }

  function can(required) { return me !== null && (ROLES[me.role] ?? 2) <= ROLES[required]; }

  function pageError(err) {
    const banner = $("page-error");
    banner.textContent = err ? err.message : "";
    banner.hidden = !err;
  }

  // Loading → (content | empty | error) for one section: ids `${prefix}-loading` etc.
  function state(prefix, which, message) {
    for (const s of ["loading", "empty", "error", "content"]) show(prefix + "-" + s, s === which);
    if (which === "error") $(prefix + "-error").textContent = message || "Could not load.";
  }

  function setConnection(text, kind) {
    const pill = $("connection");
    pill.hidden = false;
    pill.textContent = text;
    pill.dataset.state = kind;
  }

  // A JSON list from the API, whether it came bare or wrapped (`{"alerts": [...]}`).
  function items(data, key) {
    if (Array.isArray(data)) return data;
    if (data && Array.isArray(data[key])) return data[key];
    if (data && Array.isArray(data.items)) return data.items;
    return [];
  }

  // The page chrome's firing alerts: the banner above every page and the count in the
  // navigation. Loaded once, then kept live from `alert` events; each event also schedules a
  // reload so that the count converges on the server's even if an event was missed.
  const firing = new Map();
  let firingReload = null;

  function renderFiring() {
    const n = firing.size;
    const acked = [...firing.values()].filter((a) => a.acknowledged_at).length;
    const critical = [...firing.values()].some((a) => a.severity === "critical");
    const banner = $("firing-banner");
    const count = $("nav-alert-count");
    if (banner) {
      $("firing-link").textContent = (n === 1 ? "1 alert is firing" : n + " alerts are firing") +
        (acked ? " (" + acked + " acknowledged)" : "") + " — show alerts";
      banner.dataset.count = String(n);
      banner.dataset.severity = critical ? "critical" : "warning";
      banner.hidden = n === 0;
    }
    if (count) {
      count.textContent = n ? String(n) : "";
      count.dataset.count = String(n);
      count.hidden = n === 0;
    }
  }

  async function loadFiring() {
    try {
      const list = items(await api("/api/alerts?state=firing", { noRedirect: true }), "alerts");
      firing.clear();
      for (const a of list) if (a.state === "firing") firing.set(a.id, a);
      renderFiring();
    } catch (err) {
      // Alerting is an addition to the page; its failure must not break the page.
      console.warn(err);
    }
  }

  function onAlertEvent(data) {
    // An event is a transition: `{alert_id, event, state, severity, at, …}`.
    const alert = (data && data.alert) || data || {};
    const id = alert.alert_id || alert.id;
    if (id) {
      if (alert.state === "firing") {
        const known = firing.get(id) || {};
        firing.set(id, Object.assign({}, known, alert, {
          id,
          acknowledged_at: alert.event === "acknowledged" ? alert.at : known.acknowledged_at,
        }));
      } else firing.delete(id);
      renderFiring();
    }
    clearTimeout(firingReload);
    firingReload = setTimeout(loadFiring, 500);
  }

  let streaming = false;

  // The page's one live connection: every device's events on one EventSource (browsers allow
  // ~6 connections per host). With a bearer token, which EventSource cannot send, the same
  // stream is read with fetch. Reconnects resume from the last event id. The chrome's alert
  // count listens on the same connection, whatever the page's own handlers are.
  function stream(pageHandlers) {
    streaming = true;
    const handlers = Object.assign({}, pageHandlers);
    const pageAlert = handlers.alert;
    handlers.alert = (data) => { onAlertEvent(data); if (pageAlert) pageAlert(data); };
    const pageReset = handlers.reset;
    handlers.reset = (data) => { loadFiring(); if (pageReset) pageReset(data); };
    const token = sessionStorage.getItem("ddms.token");
    let downTimer = null;
    const up = () => { clearTimeout(downTimer); downTimer = null; show("stream-down", false); setConnection("live", "live"); };
    const down = () => {
      setConnection("reconnecting…", "connecting");
      // A blip is not worth a banner; a lost connection is.
      if (!downTimer) downTimer = setTimeout(() => show("stream-down", true), 3000);
    };
    const dispatch = (type, data) => {
      const handler = handlers[type];
      if (!handler) return;
      try { handler(JSON.parse(data)); } catch (err) { console.warn(err); }
    };
    if (!token) {
      if (typeof window.EventSource === "undefined") {
        show("no-eventsource", true);
        setConnection("not live", "down");
        return;
      }
      const source = new EventSource("/api/stream");
      source.onopen = up;
      source.onerror = down;
      for (const type of ["reading", "device_status", "notification", "alert", "reset"]) {
        source.addEventListener(type, (event) => dispatch(type, event.data));
      }
      return;
    }
    if (typeof TextDecoderStream === "undefined" || !window.ReadableStream) {
      show("no-eventsource", true);
      setConnection("not live", "down");
      return;
    }
    let lastEventId = null;
    let retryMs = 1000;
    (async () => {
      for (;;) {
        try {
          const headers = { Authorization: "Bearer " + token, Accept: "text/event-stream" };
          if (lastEventId) headers["Last-Event-ID"] = lastEventId;
          const response = await fetch("/api/stream", { headers });
          if (!response.ok || !response.body) throw new Error("stream refused: " + response.status);
          up();
          const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += value;
            let end;
            while ((end = buffer.indexOf("\n\n")) >= 0) {
              const block = buffer.slice(0, end);
              buffer = buffer.slice(end + 2);
              let type = "message", data = "", id = null;
              for (const line of block.split("\n")) {
                if (line.startsWith("event:")) type = line.slice(6).trim();
                else if (line.startsWith("data:")) data += line.slice(5).trim();
                else if (line.startsWith("id:")) id = line.slice(3).trim();
                else if (line.startsWith("retry:")) retryMs = Number(line.slice(6)) || retryMs;
              }
              if (id) lastEventId = id;
              if (data) dispatch(type, data);
            }
          }
        } catch (err) {
          console.warn(err);
        }
        down();
        await new Promise((resolve) => setTimeout(resolve, retryMs));
      }
    })();
  }

  function formatValue(value, unit) {
    const n = Number(value);
    let text;
    if (!Number.isFinite(n)) text = String(value);
    else if (Number.isInteger(n)) text = String(n);
    else text = Math.abs(n) >= 100 ? n.toFixed(1) : n.toFixed(2);
    return unit ? text + " " + unit : text;
  }

  function formatTime(ts) {
    if (!ts) return "—";
    const d = new Date(ts);
    return Number.isNaN(d.getTime()) ? String(ts) : d.toLocaleString();
  }

  // Starts a page: takes a token from the fragment, learns the role, then runs `main`.
  function start(main) {
    document.addEventListener("DOMContentLoaded", async () => {
      takeToken();
      $("logout").addEventListener("click", async () => {
        try { await api("/api/auth/logout", { method: "POST", noRedirect: true }); } catch (_) { /* gone anyway */ }
        sessionStorage.removeItem("ddms.token");
        location.assign("/login");
      });
      try {
        await whoami();
      } catch (err) {
        if (err.status !== 401) pageError(err);
        return;
      }
      loadFiring();
      try {
        await main();
      } catch (err) {
        pageError(err);
      }
      // Every page keeps the firing count live, also those without live data of their own.
      if (!streaming) stream({});
    });
  }

  // Marks the fields a 422 names (`data-field` equal to the error's field, or the nearest
  // enclosing one: `settings.headers` for `settings.headers.X-Foo`, `channels` for
  // `channels[2]`); what matches no field goes into `summary`.
  function clearFieldErrors(form) {
    for (const e of form.querySelectorAll(".field-error.dynamic")) e.remove();
    for (const e of form.querySelectorAll("[aria-invalid]")) e.removeAttribute("aria-invalid");
  }

  function fieldErrors(form, err, summary) {
    clearFieldErrors(form);
    if (!form.dataset.errorsClear) {
      // A marked field loses its mark as soon as it is edited.
      form.dataset.errorsClear = "1";
      form.addEventListener("input", (event) => {
        const control = event.target;
        if (!control.hasAttribute || !control.hasAttribute("aria-invalid")) return;
        control.removeAttribute("aria-invalid");
        const note = control.nextElementSibling;
        if (note && note.classList.contains("dynamic")) note.remove();
      });
    }
    const list = err.errors && err.errors.length ? err.errors : [{ field: err.field, message: err.message }];
    const controls = [...form.querySelectorAll("[data-field]")].filter((c) => !c.closest("[hidden]"));
    const unplaced = [];
    for (const { field, message } of list) {
      let target = null;
      if (field) {
        target = controls.find((c) => c.dataset.field === field) || null;
        if (!target) {
          for (const c of controls) {
            const f = c.dataset.field;
            if ((field.startsWith(f + ".") || field.startsWith(f + "[")) && (!target || f.length > target.dataset.field.length)) target = c;
          }
        }
      }
      if (!target) { unplaced.push(field ? field + ": " + message : message); continue; }
      const text = target.dataset.field === field ? message : field + ": " + message;
      const note = el("span", { class: "field-error dynamic", "data-error-field": field, text });
      target.setAttribute("aria-invalid", "true");
      if (target.matches("input, select, textarea")) target.insertAdjacentElement("afterend", note);
      else target.appendChild(note);
    }
    const first = form.querySelector("input[aria-invalid], select[aria-invalid], textarea[aria-invalid]");
    if (first) first.focus();
    if (summary) {
      summary.textContent = unplaced.length ? unplaced.join("; ") : "Please correct the marked field" + (list.length > 1 ? "s" : "") + ".";
      summary.hidden = false;
    }
  }

  // Seconds as people say them: 90 → "1 min 30 s".
  function formatDuration(seconds) {
    const s = Number(seconds);
    if (!Number.isFinite(s)) return "—";
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min" + (s % 60 ? " " + (s % 60) + " s" : "");
    if (s < 86400) return Math.floor(s / 3600) + " h" + (Math.floor(s % 3600 / 60) ? " " + Math.floor(s % 3600 / 60) + " min" : "");
    return Math.floor(s / 86400) + " d" + (Math.floor(s % 86400 / 3600) ? " " + Math.floor(s % 86400 / 3600) + " h" : "");
  }

  return {
    $, show, el, api, ApiError, can, state, pageError, stream, start, formatValue, formatTime, formatDuration,
    items, fieldErrors, clearFieldErrors, me: () => me, takeToken, toLogin,
  };
})();
