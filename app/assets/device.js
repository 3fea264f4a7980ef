// Device page: live metrics and a history chart (raw for short ranges, 1-minute / 1-hour
// rollups with a min–max band for long ones).
"use strict";

(() => {
  const { $, el, api, state, stream, formatValue, formatTime, show } = ddms;
  const id = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] || "");
  const RANGES = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
  let device = null;
  let latest = {};
  let chart = null;
  let metric = null;
  let step = "raw";
  let follow = true;
  let loadSeq = 0;
  let alertRules = [];
  let deviceAlerts = [];
  const ALERT_HISTORY_MS = 31 * 86400e3;

  // The thresholds of the rules watching the shown metric, and its alerts' starts and ends.
  function renderOverlays() {
    if (!chart || !device) return;
    const lines = alertRules
      .filter((r) => r.enabled !== false && ddmsAlerts.appliesTo(r, device, metric))
      .flatMap(ddmsAlerts.lines);
    const markers = [];
    for (const a of deviceAlerts) {
      if (a.metric !== metric) continue;
      const name = a.rule_name || "alert";
      if (a.started_at) markers.push({ t: Date.parse(a.started_at), kind: "start", label: name + " fired" });
      if (a.resolved_at && a.started_at) markers.push({ t: Date.parse(a.resolved_at), kind: "resolve", label: name + " resolved" });
    }
    chart.setOverlays(lines, markers);
    const legend = lines.length || markers.length
      ? "Dashed lines: alert thresholds" + (markers.length ? "; red marks: alerts fired, green: resolved." : ".")
      : "";
    $("chart-alerts").textContent = legend;
  }

  async function loadAlertOverlays() {
    const since = new Date(Date.now() - ALERT_HISTORY_MS).toISOString();
    // Alerting is an addition to this page: when it cannot be read the chart shows none of it.
    const [rules, groups, alerts] = await Promise.all([
      api("/api/alert-rules").catch(() => []),
      api("/api/groups").catch(() => []),
      api("/api/alerts?device_id=" + encodeURIComponent(id) + "&since=" + encodeURIComponent(since)).catch(() => []),
    ]);
    // Rules name their group by id, devices by name.
    const groupNames = new Map(ddms.items(groups, "groups").map((g) => [g.id, g.name]));
    alertRules = ddms.items(rules, "rules").map((r) => Object.assign({ group_name: groupNames.get(r.group_id) }, r));
    deviceAlerts = ddms.items(alerts, "alerts");
    renderOverlays();
  }

  // Raw readings for up to 3 hours, 1-minute buckets up to 3 days, 1-hour buckets beyond.
  function stepFor(span) {
    if (span <= 3 * 3600e3) return "raw";
    if (span <= 3 * 86400e3) return "1m";
    return "1h";
  }

  function renderHeader() {
    $("device-name").textContent = device.name;
    document.title = device.name + " — ddms";
    const s = (device.status && device.status.status) || "unknown";
    $("device-status").replaceChildren(el("span", { class: "status " + s, "data-status": s, text: s }));
    $("device-protocol").textContent = device.protocol;
    $("device-group").textContent = device.group || "none";
    $("device-error-text").textContent = (device.status && device.status.last_error) || "no error";
    $("device-edit").href = "/admin/devices#edit=" + encodeURIComponent(device.id);
  }

  function renderMetrics() {
    const names = Object.keys(latest).sort();
    $("metrics").replaceChildren(...names.map((name) =>
      el("div", { class: "card", "data-metric": name },
        el("div", { class: "card-label", text: name }),
        el("div", { class: "card-value metric-value", text: formatValue(latest[name].value, latest[name].unit) }),
        el("div", { class: "card-time muted", text: formatTime(latest[name].ts) }))));
    show("metrics-empty", names.length === 0);
    const select = $("metric");
    const current = select.value;
    select.replaceChildren(...names.map((name) => el("option", { value: name, text: name })));
    if (names.includes(current)) select.value = current;
    if (!metric && names.length) metric = names[0];
    if (metric) select.value = metric;
  }

  function chartState(which, message) {
    for (const s of ["loading", "empty", "error"]) show("chart-" + s, s === which);
    if (which === "error") $("chart-error").textContent = message;
  }

  async function loadChart(t0, t1) {
    if (!metric) { chartState("empty"); return; }
    const seq = ++loadSeq;
    step = stepFor(t1 - t0);
    chartState("loading");
    const query = (s) => "/api/devices/" + encodeURIComponent(id) + "/readings?metric=" + encodeURIComponent(metric) +
      "&from=" + new Date(t0).toISOString() + "&to=" + new Date(t1).toISOString() + "&step=" + s;
    let data;
    try {
      try {
        data = await api(query(step));
      } catch (err) {
        // A busy series can have more raw readings than one request returns: use buckets.
        if (err.status !== 400 || step === "1h") throw err;
        step = step === "raw" ? "1m" : "1h";
        data = await api(query(step));
      }
    } catch (err) {
      if (seq === loadSeq) chartState("error", err.message);
      return;
    }
    if (seq !== loadSeq) return;
    const points = data.map((p) => (step === "raw"
      ? { t: Date.parse(p.ts), v: p.value }
      : { t: Date.parse(p.ts) + (step === "1m" ? 30e3 : 1800e3), v: p.avg, min: p.min, max: p.max, count: p.count }));
    const gap = step === "raw" ? medianGap(points) * 5 : (step === "1m" ? 60e3 : 3600e3) * 2.5;
    chart.setData(points, gap, (latest[metric] || {}).unit);
    chart.setView(t0, t1);
    renderOverlays();
    $("chart-step").textContent = step === "raw"
      ? "Raw readings (" + points.length + ")."
      : (step === "1m" ? "1-minute" : "1-hour") + " averages with min–max band (" + points.length + " buckets).";
    chartState(points.length ? null : "empty");
  }

  function medianGap(points) {
    if (points.length < 3) return 3600e3;
    const gaps = [];
    for (let i = 1; i < points.length; i++) gaps.push(points[i].t - points[i - 1].t);
    gaps.sort((a, b) => a - b);
    return Math.max(1000, gaps[Math.floor(gaps.length / 2)]);
  }

  function selectRange(name) {
    for (const b of document.querySelectorAll("[data-range]")) b.setAttribute("aria-pressed", String(b.dataset.range === name));
    show("custom-range", name === "custom");
    if (name === "custom") return;
    follow = true;
    const t1 = Date.now();
    loadChart(t1 - RANGES[name], t1);
  }

  function localInput(t) {
    const d = new Date(t - new Date(t).getTimezoneOffset() * 60e3);
    return d.toISOString().slice(0, 16);
  }

  ddms.start(async () => {
    try {
      device = await api("/api/devices/" + encodeURIComponent(id));
      latest = await api("/api/devices/" + encodeURIComponent(id) + "/latest");
    } catch (err) {
      state("device", err.status === 404 || err.status === 400 ? "empty" : "error", err.message);
      return;
    }
    state("device", "content");
    renderHeader();
    renderMetrics();
    chart = new TimeChart($("chart"), {
      readout: $("chart-readout"),
      describe(p) {
        const unit = (latest[metric] || {}).unit;
        if (p.min === undefined) return formatTime(p.t) + ": " + formatValue(p.v, unit);
        const width = step === "1m" ? 60e3 : 3600e3;
        return formatTime(p.t - width / 2) + " (" + (step === "1m" ? "1 minute" : "1 hour") + "): avg " +
          formatValue(p.v, unit) + ", min " + formatValue(p.min, unit) + ", max " + formatValue(p.max, unit) +
          " (" + p.count + " readings)";
      },
      onView(t0, t1) {
        // Panned away from now: stop following live readings until a range is chosen again.
        follow = t1 >= Date.now() - 5e3;
        for (const b of document.querySelectorAll("[data-range]")) b.setAttribute("aria-pressed", "false");
        loadChart(t0, t1);
      },
    });
    $("metric").addEventListener("change", () => { metric = $("metric").value; loadChart(chart.t0, chart.t1); });
    for (const b of document.querySelectorAll("[data-range]")) b.addEventListener("click", () => selectRange(b.dataset.range));
    $("custom-from").value = localInput(Date.now() - 86400e3);
    $("custom-to").value = localInput(Date.now());
    $("custom-range").addEventListener("submit", (event) => {
      event.preventDefault();
      const t0 = new Date($("custom-from").value).getTime();
      const t1 = new Date($("custom-to").value).getTime();
      if (!(t0 < t1)) { chartState("error", "“From” must be before “To”."); return; }
      follow = false;
      loadChart(t0, t1);
    });
    selectRange("1h");
    loadAlertOverlays();
    stream({
      alert(data) {
        if (data && data.device_id && data.device_id !== id) return;
        loadAlertOverlays();
      },
      reading(data) {
        if (data.device_id !== id) return;
        for (const r of data.readings) {
          const current = latest[r.metric];
          if (!current || current.ts <= r.ts) latest[r.metric] = r;
          if (r.metric !== metric) continue;
          if (step === "raw") chart.append({ t: Date.parse(r.ts), v: r.value }, follow);
          else chart.addToBucket(Date.parse(r.ts), r.value, step === "1m" ? 60e3 : 3600e3, follow);
        }
        renderMetrics();
        if (!metric) selectRange("1h");
      },
      device_status(data) {
        if (data.device_id !== id) return;
        device.status = data;
        renderHeader();
      },
      reset() { selectRange("1h"); loadAlertOverlays(); },
    });
  });
})();
