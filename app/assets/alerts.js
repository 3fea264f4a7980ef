// Alerts: firing first, then acknowledged, then pending, then the last week's resolved ones;
// filtered by severity and group. Admins acknowledge (with an optional comment) and see the
// notifications that could not be delivered. Live: every `alert` event reloads the lists.
"use strict";

(() => {
  const { $, el, api, state, show, items, formatTime, formatValue } = ddms;
  const HISTORY_MS = 7 * 86400e3;
  const SECTIONS = ["firing", "acknowledged", "pending", "resolved"];
  let devices = new Map();
  let rules = new Map();
  let alerts = [];
  let reloadTimer = null;
  let openAck = null; // the alert id whose acknowledge form is open (kept across reloads)

  function section(a) {
    if (a.state === "firing") return a.acknowledged_at ? "acknowledged" : "firing";
    return a.state === "pending" ? "pending" : "resolved";
  }

  function ruleOf(a) { return rules.get(a.rule_id) || {}; }
  function severityOf(a) { return a.severity || ruleOf(a).severity || "warning"; }

  // Whether the alert's current state was reached under a silence (nobody was notified).
  function muted(a) {
    if (typeof a.muted === "boolean") return a.muted;
    const history = a.transitions || [];
    const last = [...history].reverse().find((t) => t.to_state === a.state);
    return Boolean(last && last.muted);
  }

  function groupOf(a) {
    const device = devices.get(a.device_id);
    return device ? device.group || "" : "";
  }

  function visible(a) {
    const severity = $("filter-severity").value;
    const group = $("filter-group").value;
    if (severity && severityOf(a) !== severity) return false;
    if (group && groupOf(a) !== group) return false;
    return true;
  }

  function ackForm(a, li) {
    const comment = el("input", { name: "comment", "aria-label": "Comment (optional)", placeholder: "Comment (optional)", maxlength: "1000", "data-field": "comment" });
    const confirm = el("button", { type: "submit", class: "primary", text: "Acknowledge" });
    const cancel = el("button", { type: "button", text: "Cancel" });
    const error = el("span", { class: "field-error", role: "alert", hidden: true });
    const form = el("form", { class: "ack-form toolbar", novalidate: "" }, comment, confirm, cancel, error);
    cancel.addEventListener("click", () => { openAck = null; form.replaceWith(ackButton(a, li)); });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      confirm.disabled = true;
      error.hidden = true;
      try {
        const text = comment.value.trim();
        await api("/api/alerts/" + encodeURIComponent(a.id) + "/ack", { method: "POST", json: text ? { comment: text } : {} });
        openAck = null;
        await load();
      } catch (err) {
        confirm.disabled = false;
        error.textContent = err.message;
        error.hidden = false;
      }
    });
    setTimeout(() => comment.focus(), 0);
    return form;
  }

  function ackButton(a, li) {
    const button = el("button", { type: "button", class: "ack", text: "Acknowledge…" });
    button.addEventListener("click", () => { openAck = a.id; button.replaceWith(ackForm(a, li)); });
    return button;
  }

  function history(a) {
    const transitions = a.transitions || [];
    if (!transitions.length) return null;
    return el("details", { class: "transitions" },
      el("summary", { text: "History (" + transitions.length + ")" }),
      el("ol", {}, ...transitions.map((t) => el("li", {},
        formatTime(t.at) + ": " + (t.event || t.to_state) +
        (t.value !== null && t.value !== undefined ? " at " + formatValue(t.value) : "") +
        (t.actor ? " by " + t.actor : "") + (t.muted ? " (muted)" : "")))));
  }

  function item(a) {
    const rule = ruleOf(a);
    const severity = severityOf(a);
    const device = devices.get(a.device_id);
    const where = [];
    if (a.device_id) {
      where.push(device
        ? el("a", { href: "/devices/" + encodeURIComponent(a.device_id), text: device.name })
        : el("span", { text: a.device_name || "deleted device" }));
    }
    if (a.metric) where.push(" · " + a.metric);
    if (a.value !== null && a.value !== undefined) where.push(" · value " + formatValue(a.value));
    const times = [];
    if (a.state === "pending") times.push("pending since " + formatTime(a.pending_since || a.created_at));
    else times.push("since " + formatTime(a.started_at || a.pending_since || a.created_at));
    if (a.state === "resolved") times.push("resolved " + formatTime(a.resolved_at));
    const li = el("li", { class: "alert-item", "data-alert": a.id, "data-state": a.state, "data-severity": severity },
      el("div", { class: "alert-main" },
        el("div", {},
          el("span", { class: "severity " + severity, text: severity }), " ",
          el("strong", { class: "alert-rule", text: a.rule_name || rule.name || "deleted rule" }),
          muted(a) ? el("span", { class: "badge muted-badge", "data-muted": "true", title: "Recorded under a silence: nobody was notified", text: "muted" }) : null),
        el("div", { class: "alert-where" }, ...where),
        el("div", { class: "muted alert-times", text: times.join(" · ") }),
        a.acknowledged_at
          ? el("div", { class: "alert-ack", "data-acknowledged-by": a.acknowledged_by || "" },
            "Acknowledged by " + (a.acknowledged_by || "someone") + " " + formatTime(a.acknowledged_at) +
            (a.ack_comment || a.comment ? ": “" + (a.ack_comment || a.comment) + "”" : ""))
          : null,
        history(a)));
    if (ddms.can("admin") && a.state === "firing" && !a.acknowledged_at) {
      li.appendChild(el("div", { class: "alert-actions" }, openAck === a.id ? ackForm(a, li) : ackButton(a, li)));
    }
    return li;
  }

  function render() {
    const shown = alerts.filter(visible);
    for (const name of SECTIONS) {
      const list = shown.filter((a) => section(a) === name);
      // An open acknowledge form keeps its typed comment: that list is not rebuilt under it.
      const ul = $("list-" + name);
      if (openAck && ul.querySelector(".ack-form")) {
        const keep = new Set(list.map((a) => a.id));
        const current = [...ul.children].map((li) => li.dataset.alert);
        if (current.length === keep.size && current.every((id) => keep.has(id))) continue;
      }
      ul.replaceChildren(...list.map(item));
      $("section-" + name).querySelector("[data-empty]").hidden = list.length > 0;
    }
    const firing = shown.filter((a) => a.state === "firing").length;
    $("alerts-summary").textContent = firing + " firing, " + shown.filter((a) => a.state === "pending").length +
      " pending, " + shown.filter((a) => a.state === "resolved").length + " resolved" +
      (shown.length < alerts.length ? " (filtered: " + (alerts.length - shown.length) + " hidden)" : "");
    state("alerts", alerts.length ? "content" : "empty");
  }

  async function load() {
    const since = new Date(Date.now() - HISTORY_MS).toISOString();
    try {
      const [deviceList, firing, pending, resolved] = await Promise.all([
        api("/api/devices"),
        api("/api/alerts?state=firing"),
        api("/api/alerts?state=pending"),
        api("/api/alerts?state=resolved&since=" + encodeURIComponent(since)),
      ]);
      devices = new Map(deviceList.map((d) => [d.id, d]));
      alerts = [...items(firing, "alerts"), ...items(pending, "alerts"), ...items(resolved, "alerts")];
    } catch (err) { state("alerts", "error", err.message); return; }
    const groups = [...new Set([...devices.values()].map((d) => d.group).filter(Boolean))].sort();
    const select = $("filter-group");
    const current = select.value;
    select.replaceChildren(el("option", { value: "", text: "all" }), ...groups.map((g) => el("option", { value: g, text: g })));
    if (groups.includes(current)) select.value = current;
    render();
  }

  async function loadRules() {
    // Names and severities of alerts whose API answer lacks them; not every role may list rules.
    try { rules = new Map(items(await api("/api/alert-rules"), "rules").map((r) => [r.id, r])); } catch (_) { rules = new Map(); }
  }

  async function loadDead() {
    if (!ddms.can("admin")) return;
    show("dead-section", true);
    let dead, channels;
    try {
      [dead, channels] = await Promise.all([api("/api/deliveries?state=dead"), api("/api/channels").catch(() => [])]);
    } catch (err) { state("dead", "error", err.message); return; }
    const names = new Map(items(channels, "channels").map((c) => [c.id, c.name]));
    const rows = items(dead, "deliveries").map((d) => {
      const m = d.message || {};
      const what = [m.state || d.event, m.rule_name, m.summary].filter(Boolean).join(" · ");
      return el("tr", { "data-delivery": d.id },
        el("td", { text: formatTime(d.created_at) }),
        el("td", { text: names.get(d.channel_id) || "deleted channel" }),
        el("td", { text: what || d.idempotency_key || "" }),
        el("td", { text: String(d.attempts ?? "") }),
        el("td", { class: "mono", text: d.last_error || "" }));
    });
    $("dead-rows").replaceChildren(...rows);
    state("dead", rows.length ? "content" : "empty");
  }

  function scheduleReload() {
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(() => { load(); loadDead(); }, 250);
  }

  ddms.start(async () => {
    $("filter-severity").addEventListener("change", render);
    $("filter-group").addEventListener("change", render);
    $("alert-filters").addEventListener("submit", (event) => event.preventDefault());
    await loadRules();
    await Promise.all([load(), loadDead()]);
    ddms.stream({
      alert: scheduleReload,
      reset: () => { loadRules().then(scheduleReload); },
    });
  });
})();
