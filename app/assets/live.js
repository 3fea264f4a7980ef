// Live device list: reads the JSON API and follows /api/stream. Everything from the server is
// inserted as text, never as HTML.
"use strict";

const state = { token: null, devices: new Map(), lastEventId: null, retryMs: 1000 };

function $(id) { return document.getElementById(id); }

function show(id, visible) { $(id).hidden = !visible; }

function setConnection(text, kind) {
  const pill = $("connection");
  pill.textContent = text;
  pill.dataset.state = kind;
}

function takeToken() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem("ddms.token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem("ddms.token");
}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + state.token } });
  if (response.status === 401) {
    sessionStorage.removeItem("ddms.token");
    throw new Error("The token was refused; enter another.");
  }
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response.json();
}

function formatValue(reading) {
  const value = Number(reading.value);
  const text = Number.isInteger(value) ? String(value) : value.toFixed(2);
  return reading.unit ? text + " " + reading.unit : text;
}

function renderRow(device) {
  let row = document.getElementById("device-" + device.id);
  if (!row) {
    row = document.createElement("tr");
    row.id = "device-" + device.id;
    for (let i = 0; i < 4; i++) row.appendChild(document.createElement("td"));
    $("devices").tBodies[0].appendChild(row);
  }
  const [name, group, status, values] = row.cells;
  name.textContent = device.name;
  group.textContent = device.group || "—";
  const s = (device.status && device.status.status) || "unknown";
  status.textContent = s;
  status.className = "status " + s;
  status.title = (device.status && device.status.last_error) || "";
  values.replaceChildren();
  const metrics = Object.keys(device.latest || {}).sort();
  for (const metric of metrics) {
    const item = document.createElement("span");
    item.className = "metric";
    item.dataset.metric = metric;
    item.textContent = metric + ": " + formatValue(device.latest[metric]);
    values.appendChild(item);
  }
  if (metrics.length === 0) values.textContent = "no readings yet";
}

async function loadDevices() {
  const devices = await api("/api/devices");
  state.devices.clear();
  $("devices").tBodies[0].replaceChildren();
  for (const device of devices) {
    device.latest = await api("/api/devices/" + device.id + "/latest");
    state.devices.set(device.id, device);
    renderRow(device);
  }
  show("devices", devices.length > 0);
  show("empty", devices.length === 0);
  await loadFailures();
}

async function loadFailures() {
  const open = await api("/api/notifications/connection-failures");
  const names = open.map((n) => (state.devices.get(n.device_id) || { name: n.device_id }).name);
  $("failures").textContent = names.length ? "Connection failures: " + names.join(", ") : "";
  show("failures", names.length > 0);
}

function handleEvent(type, data) {
  if (type === "reading") {
    const device = state.devices.get(data.device_id);
    if (!device) return;
    for (const r of data.readings) device.latest[r.metric] = r;
    renderRow(device);
  } else if (type === "device_status") {
    const device = state.devices.get(data.device_id);
    if (!device) { loadDevices().catch(fail); return; }
    device.status = data;
    renderRow(device);
  } else if (type === "notification") {
    loadFailures().catch(fail);
  } else if (type === "reset") {
    loadDevices().catch(fail);
  }
}

// Minimal Server-Sent Events reader over fetch, so the request can carry the token header.
async function follow() {
  for (;;) {
    try {
      const headers = { Authorization: "Bearer " + state.token, Accept: "text/event-stream" };
      if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
      const response = await fetch("/api/stream", { headers });
      if (!response.ok || !response.body) throw new Error("stream refused: " + response.status);
      setConnection("live", "live");
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
            else if (line.startsWith("retry:")) state.retryMs = Number(line.slice(6)) || state.retryMs;
          }
          if (id) state.lastEventId = id;
          if (data) handleEvent(type, JSON.parse(data));
        }
      }
    } catch (err) {
      console.warn(err);
    }
    setConnection("reconnecting…", "connecting");
    await new Promise((resolve) => setTimeout(resolve, state.retryMs));
  }
}

function fail(err) {
  $("error").textContent = err.message;
  show("error", true);
  if (!sessionStorage.getItem("ddms.token")) { show("login", true); setConnection("signed out", "down"); }
}

async function start() {
  state.token = takeToken();
  if (!state.token) { show("login", true); setConnection("signed out", "down"); return; }
  show("login", false);
  show("error", false);
  try {
    await loadDevices();
  } catch (err) { fail(err); return; }
  if (typeof TextDecoderStream === "undefined" || !window.ReadableStream) {
    show("unsupported", true);
    setConnection("not live", "down");
    return;
  }
  follow();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("ddms.token", $("token").value.trim());
    start();
  });
  start();
});
