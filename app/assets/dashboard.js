// Dashboard: devices by group with status and latest values, connection failures, live.
"use strict";

(() => {
  const { $, el, api, state, stream, formatValue, show } = ddms;
  const devices = new Map();

  function statusPill(status) {
    const s = (status && status.status) || "unknown";
    return el("span", { class: "status " + s, "data-status": s, title: (status && status.last_error) || null, text: s });
  }

  function renderValues(device) {
    const cell = $("values-" + device.id);
    if (!cell) return;
    cell.replaceChildren();
    const metrics = Object.keys(device.latest || {}).sort();
    for (const metric of metrics) {
      const r = device.latest[metric];
      cell.appendChild(el("span", { class: "metric", "data-metric": metric },
        el("span", { class: "metric-name", text: metric }),
        el("span", { class: "metric-value", text: formatValue(r.value, r.unit) })));
    }
    if (metrics.length === 0) cell.appendChild(el("span", { class: "muted", text: "no readings yet" }));
  }

  function renderStatus(device) {
    const cell = $("status-" + device.id);
    if (cell) cell.replaceChildren(statusPill(device.status));
  }

  function render() {
    const content = $("devices-content");
    content.replaceChildren();
    const groups = new Map();
    for (const device of devices.values()) {
      const group = device.group || "";
      if (!groups.has(group)) groups.set(group, []);
      groups.get(group).push(device);
    }
    const names = [...groups.keys()].sort((a, b) => (a === "") - (b === "") || a.localeCompare(b));
    for (const group of names) {
      const rows = groups.get(group).sort((a, b) => a.name.localeCompare(b.name)).map((device) =>
        el("tr", { id: "device-" + device.id, "data-device": device.id },
          el("td", {}, el("a", { href: "/devices/" + encodeURIComponent(device.id), class: "device-link", text: device.name })),
          el("td", { class: "muted", text: device.protocol }),
          el("td", { id: "status-" + device.id }),
          el("td", { id: "values-" + device.id, class: "values" })));
      content.appendChild(el("section", { class: "group" },
        el("h2", { text: group || "No group" }),
        el("table", {},
          el("thead", {}, el("tr", {}, el("th", { text: "Device" }), el("th", { text: "Protocol" }), el("th", { text: "Status" }), el("th", { text: "Latest values" }))),
          el("tbody", {}, ...rows))));
    }
    for (const device of devices.values()) { renderStatus(device); renderValues(device); }
    state("devices", devices.size ? "content" : "empty");
  }

  async function load() {
    const list = await api("/api/devices");
    devices.clear();
    await Promise.all(list.map(async (device) => {
      device.latest = await api("/api/devices/" + device.id + "/latest");
      devices.set(device.id, device);
    }));
    render();
    await loadFailures();
  }

  async function loadFailures() {
    const open = await api("/api/notifications/connection-failures");
    const names = open.map((n) => (devices.get(n.device_id) || { name: "a deleted device" }).name);
    $("failures-text").textContent = names.length
      ? "Connection failure" + (names.length > 1 ? "s" : "") + ": " + names.join(", ") + "."
      : "";
    show("failures", names.length > 0);
  }

  const reload = () => load().catch((err) => state("devices", "error", err.message));

  ddms.start(async () => {
    try { await load(); } catch (err) { state("devices", "error", err.message); return; }
    stream({
      reading(data) {
        const device = devices.get(data.device_id);
        if (!device) return;
        for (const r of data.readings) {
          const current = device.latest[r.metric];
          if (!current || current.ts <= r.ts) device.latest[r.metric] = r;
        }
        renderValues(device);
      },
      device_status(data) {
        const device = devices.get(data.device_id);
        if (!device) { reload(); return; }
        device.status = data;
        renderStatus(device);
      },
      notification() { loadFailures().catch(() => {}); },
      reset: reload,
    });
  });
})();
