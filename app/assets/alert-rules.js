// Alert rules (admins): list, create, edit, delete. Device, group and metric pickers come from
// the devices and their series; a 422 marks the fields it names; the preview replays the rule
// over the last 24 hours of 1-minute rollups (alert-logic.js) as it is edited.
"use strict";

(() => {
  const { $, el, api, state, show, items } = ddms;
  const PREVIEW_DEVICES = 20;
  const PREVIEW_MS = 86400e3;
  let devices = [];
  let groups = [];
  let channels = [];
  let rules = [];
  let editing = null; // rule id, or null for a new rule
  let previewTimer = null;
  let previewSeq = 0;
  const latestCache = new Map(); // device id → Promise of its latest readings by metric
  const rollupCache = new Map(); // device id + metric → Promise of 1-minute buckets

  function form() { return $("rule-form"); }
  function field(name) { return form().elements[name]; }

  // A number when the text is one; otherwise the text as typed, so the API names the field.
  function num(text) {
    const t = String(text).trim();
    if (t === "") return undefined;
    const n = Number(t);
    return Number.isFinite(n) ? n : t;
  }

  function groupById(id) { return groups.find((g) => g.id === id || g.name === id) || null; }

  function targetText(rule) {
    if (rule.device_id) {
      const d = devices.find((x) => x.id === rule.device_id);
      return "device " + (d ? d.name : "(deleted)");
    }
    const group = rule.group ?? rule.group_id ?? null;
    if (group) {
      const g = groupById(group);
      return "group " + (g ? g.name : rule.group_name || group);
    }
    return "every device";
  }

  function renderList() {
    const admin = ddms.can("admin");
    const names = new Map(channels.map((c) => [c.id, c.name]));
    $("rule-rows").replaceChildren(...rules.map((rule) => {
      const actions = el("td", { class: "row-actions" });
      if (admin) {
        const edit = el("button", { type: "button", class: "edit", text: "Edit" });
        const del = el("button", { type: "button", class: "danger delete", text: "Delete" });
        edit.addEventListener("click", () => openForm(rule));
        del.addEventListener("click", () => remove(rule));
        actions.append(edit, del);
      }
      return el("tr", { "data-rule": rule.id },
        el("td", { text: rule.name }),
        el("td", { text: targetText(rule) }),
        el("td", { text: rule.metric || "—" }),
        el("td", { text: ddmsAlerts.describe(rule) }),
        el("td", {}, el("span", { class: "severity " + rule.severity, text: rule.severity })),
        el("td", { text: (rule.channels || []).map((id) => names.get(id) || "(deleted)").join(", ") || "none" }),
        el("td", { text: rule.enabled ? "yes" : "no" }),
        actions);
    }));
    state("rules", rules.length ? "content" : "empty");
  }

  async function load() {
    try {
      rules = items(await api("/api/alert-rules"), "rules");
    } catch (err) { state("rules", "error", err.message); return; }
    renderList();
  }

  function fillPickers() {
    const deviceSelect = field("device_id");
    deviceSelect.replaceChildren(el("option", { value: "", text: "any (see group)" }),
      ...[...devices].sort((a, b) => a.name.localeCompare(b.name)).map((d) => el("option", { value: d.id, text: d.name })));
    field("group").replaceChildren(el("option", { value: "", text: "any" }),
      ...groups.map((g) => el("option", { value: g.id, text: g.name })));
    $("rule-channel-list").replaceChildren(...channels.map((c) =>
      el("label", { class: "check" },
        el("input", { type: "checkbox", name: "channel", value: c.id }), " " + c.name + " (" + c.kind + ")")));
    show("rule-channels-empty", channels.length === 0);
  }

  // The devices a rule with the form's target covers.
  function scopeDevices() {
    const deviceId = field("device_id").value;
    if (deviceId) return devices.filter((d) => d.id === deviceId);
    const groupId = field("group").value;
    if (groupId) {
      const g = groupById(groupId);
      return devices.filter((d) => g && d.group === g.name);
    }
    return devices;
  }

  function latestOf(id) {
    if (!latestCache.has(id)) {
      latestCache.set(id, api("/api/devices/" + encodeURIComponent(id) + "/latest").catch(() => ({})));
    }
    return latestCache.get(id);
  }

  async function fillMetrics() {
    const scope = scopeDevices().slice(0, PREVIEW_DEVICES);
    const all = await Promise.all(scope.map((d) => latestOf(d.id)));
    const names = [...new Set(all.flatMap((latest) => Object.keys(latest || {})))].sort();
    $("metric-names").replaceChildren(...names.map((n) => el("option", { value: n })));
    const count = scopeDevices().length;
    $("scope-hint").textContent = "Applies to " + (count === 1 ? "1 device" : count + " devices") +
      (names.length ? "; their metrics: " + names.join(", ") + "." : "; none has readings yet.");
  }

  function conditionChanged() {
    const condition = field("condition").value;
    const band = condition === "outside" || condition === "inside";
    show("threshold-fields", condition !== "no_data");
    show("no-data-fields", condition === "no_data");
    for (const label of form().querySelectorAll("[data-band]")) label.hidden = !band;
    $("threshold-label").textContent = band ? "Low threshold" : "Threshold";
    $("clear-label").textContent = band ? "Clears at, low (empty: the threshold)" : "Clears at (empty: the threshold)";
  }

  function formBody() {
    const f = form().elements;
    const condition = f.condition.value;
    const body = {
      name: f.name.value.trim(),
      metric: f.metric.value.trim(),
      condition,
      severity: f.severity.value,
      enabled: f.enabled.checked,
      channels: [...form().querySelectorAll("[name=channel]:checked")].map((c) => c.value),
    };
    if (f.device_id.value) body.device_id = f.device_id.value;
    if (f.group.value) body.group = f.group.value;
    const put = (key, value) => { if (value !== undefined) body[key] = value; };
    if (condition === "no_data") {
      put("no_data_s", num(f.no_data_s.value));
    } else {
      put("threshold", num(f.threshold.value));
      put("clear_threshold", num(f.clear_threshold.value));
      if (condition === "outside" || condition === "inside") {
        put("threshold_high", num(f.threshold_high.value));
        put("clear_threshold_high", num(f.clear_threshold_high.value));
      }
      put("for_s", num(f.for_s.value));
    }
    put("repeat_interval_s", num(f.repeat_interval_s.value));
    return body;
  }

  function rollups(deviceId, metric) {
    const key = deviceId + "\n" + metric;
    if (!rollupCache.has(key)) {
      const to = Date.now();
      const query = "/api/devices/" + encodeURIComponent(deviceId) + "/readings?metric=" + encodeURIComponent(metric) +
        "&from=" + new Date(to - PREVIEW_MS).toISOString() + "&to=" + new Date(to).toISOString() + "&step=1m";
      rollupCache.set(key, api(query).then((data) => items(data, "readings")).catch(() => []));
    }
    return rollupCache.get(key);
  }

  async function preview() {
    const seq = ++previewSeq;
    const text = $("preview-text");
    const rule = formBody();
    for (const key of ["threshold", "threshold_high", "clear_threshold", "clear_threshold_high", "for_s", "no_data_s"]) {
      if (typeof rule[key] === "string") { text.textContent = "Enter numbers to see a preview."; text.dataset.fires = ""; return; }
    }
    if (!rule.metric) { text.textContent = "Choose a metric to see how often this rule would have fired."; text.dataset.fires = ""; return; }
    if (rule.condition !== "no_data" && rule.threshold === undefined) { text.textContent = "Enter a threshold to see a preview."; text.dataset.fires = ""; return; }
    const scope = scopeDevices();
    const checked = scope.slice(0, PREVIEW_DEVICES);
    text.textContent = "Computing the preview…";
    const series = await Promise.all(checked.map((d) => rollups(d.id, rule.metric)));
    if (seq !== previewSeq) return;
    let fires = 0, withData = 0, firingNow = 0, affected = 0;
    for (const buckets of series) {
      if (!buckets.length) continue;
      withData += 1;
      const result = ddmsAlerts.simulate(rule, buckets);
      fires += result.fires.length;
      if (result.fires.length) affected += 1;
      if (result.firingAtEnd) firingNow += 1;
    }
    text.dataset.fires = String(fires);
    if (!withData) {
      text.textContent = "No " + rule.metric + " readings in the last 24 h" + (checked.length === 1 ? " on this device" : " on these devices") + ": nothing to estimate from.";
      return;
    }
    let summary = "Would have fired " + (fires === 1 ? "1 time" : fires + " times") + " in the last 24 h";
    if (checked.length > 1) summary += ", on " + affected + " of " + withData + " devices with " + rule.metric + " readings";
    summary += ".";
    if (firingNow) summary += " It would be firing now" + (checked.length > 1 ? " on " + firingNow : "") + ".";
    if (scope.length > checked.length) summary += " (The first " + checked.length + " of " + scope.length + " devices were checked.)";
    text.textContent = summary;
  }

  function schedulePreview() {
    clearTimeout(previewTimer);
    previewTimer = setTimeout(preview, 300);
  }

  function openForm(rule) {
    editing = rule ? rule.id : null;
    const f = form();
    ddms.clearFieldErrors(f);
    show("rule-form-error", false);
    f.reset();
    $("rule-form-title").textContent = rule ? "Edit rule " + rule.name : "New rule";
    for (const box of f.querySelectorAll("[name=channel]")) box.checked = false;
    if (rule) {
      const set = (name, value) => { field(name).value = value === null || value === undefined ? "" : String(value); };
      set("name", rule.name);
      set("device_id", rule.device_id);
      const group = groupById(rule.group ?? rule.group_id ?? "");
      set("group", group ? group.id : "");
      set("metric", rule.metric);
      set("condition", rule.condition);
      set("severity", rule.severity);
      set("threshold", rule.threshold);
      set("threshold_high", rule.threshold_high);
      // A clear threshold equal to the threshold is the default: shown empty.
      set("clear_threshold", rule.clear_threshold === rule.threshold ? null : rule.clear_threshold);
      set("clear_threshold_high", rule.clear_threshold_high === rule.threshold_high ? null : rule.clear_threshold_high);
      set("for_s", rule.for_s ?? 0);
      set("no_data_s", rule.no_data_s);
      set("repeat_interval_s", rule.repeat_interval_s);
      field("enabled").checked = rule.enabled !== false;
      for (const box of f.querySelectorAll("[name=channel]")) box.checked = (rule.channels || []).includes(box.value);
    }
    conditionChanged();
    show("rule-form", true);
    fillMetrics();
    schedulePreview();
    f.elements.name.focus();
  }

  async function save(event) {
    event.preventDefault();
    const f = form();
    ddms.clearFieldErrors(f);
    show("rule-form-error", false);
    $("rule-save").disabled = true;
    try {
      const body = formBody();
      if (editing) await api("/api/alert-rules/" + encodeURIComponent(editing), { method: "PUT", json: body });
      else await api("/api/alert-rules", { method: "POST", json: body });
      show("rule-form", false);
      await load();
    } catch (err) {
      if (err.status === 422 || err.status === 400 || err.status === 409) ddms.fieldErrors(f, err, $("rule-form-error"));
      else { $("rule-form-error").textContent = err.message; show("rule-form-error", true); }
    } finally {
      $("rule-save").disabled = false;
    }
  }

  async function remove(rule) {
    if (!confirm("Delete rule " + rule.name + "? Its alerts go with it.")) return;
    try {
      await api("/api/alert-rules/" + encodeURIComponent(rule.id), { method: "DELETE" });
    } catch (err) { ddms.pageError(err); }
    await load();
  }

  ddms.start(async () => {
    if (!ddms.can("admin")) {
      show("new-rule", false);
      ddms.pageError(new Error("Managing alert rules needs the admin role."));
    }
    try {
      const [deviceList, groupList, channelList] = await Promise.all([
        api("/api/devices"),
        api("/api/groups").catch(() => []),
        api("/api/channels").catch(() => []),
      ]);
      devices = deviceList;
      groups = items(groupList, "groups");
      channels = items(channelList, "channels");
    } catch (err) { state("rules", "error", err.message); return; }
    fillPickers();
    $("new-rule").addEventListener("click", () => openForm(null));
    $("rule-cancel").addEventListener("click", () => show("rule-form", false));
    const f = form();
    f.addEventListener("submit", save);
    f.elements.condition.addEventListener("change", conditionChanged);
    for (const name of ["device_id", "group"]) f.elements[name].addEventListener("change", () => { fillMetrics(); schedulePreview(); });
    f.addEventListener("input", schedulePreview);
    f.addEventListener("change", schedulePreview);
    await load();
  });
})();
