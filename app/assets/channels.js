// Notification channels (admins): list, create, edit, delete, send a test. Secrets are
// write-only: the API says only whether one is set; an empty secret field keeps it unchanged.
"use strict";

(() => {
  const { $, el, api, state, show, items } = ddms;
  const SECRET_LABELS = { webhook: "HMAC signing key", email: "SMTP password" };
  let channels = [];
  let editing = null; // the channel being edited, or null for a new one

  function form() { return $("channel-form"); }

  function target(c) {
    const s = c.settings || {};
    if (c.kind === "email") return (s.to || []).join(", ") + " via " + (s.smtp_host || "?") + ":" + (s.smtp_port ?? "");
    try {
      // Discord and Slack URLs carry their secret in the path: show the host only.
      const url = new URL(s.url);
      return c.kind === "webhook" ? url.origin + url.pathname : url.host;
    } catch (_) { return s.url || ""; }
  }

  // The outcome of `POST /api/channels/{id}/test` in words, whatever shape it has.
  function outcomeText(result) {
    if (!result) return { ok: true, text: "Sent." };
    const outcome = result.outcome || result.status || result.result || (result.ok === false ? "failed" : "delivered");
    const ok = result.ok ?? (outcome === "delivered" || outcome === "ok" || outcome === "sent");
    const reason = result.reason || result.error || result.message || "";
    return { ok, text: (ok ? "Delivered" : "Not delivered (" + outcome + ")") + (reason ? ": " + reason : ".") };
  }

  async function sendTest(c, cell, button) {
    button.disabled = true;
    cell.textContent = "Sending…";
    cell.dataset.testResult = "sending";
    try {
      const { ok, text } = outcomeText(await api("/api/channels/" + encodeURIComponent(c.id) + "/test", { method: "POST", json: {} }));
      cell.textContent = text;
      cell.dataset.testResult = ok ? "ok" : "failed";
    } catch (err) {
      cell.textContent = "Not delivered: " + err.message;
      cell.dataset.testResult = "failed";
    } finally {
      button.disabled = false;
    }
  }

  function render() {
    $("channel-rows").replaceChildren(...channels.flatMap((c) => {
      const edit = el("button", { type: "button", class: "edit", text: "Edit" });
      const test = el("button", { type: "button", class: "test", text: "Send test" });
      const del = el("button", { type: "button", class: "danger delete", text: "Delete" });
      const result = el("td", { colspan: "6", class: "test-result", "data-test-result": "" });
      edit.addEventListener("click", () => openForm(c));
      del.addEventListener("click", () => remove(c));
      test.addEventListener("click", () => { resultRow.hidden = false; sendTest(c, result, test); });
      const resultRow = el("tr", { class: "test-row", "data-test-for": c.id, hidden: true }, result);
      return [el("tr", { "data-channel": c.id },
        el("td", { text: c.name }),
        el("td", { text: c.kind }),
        el("td", { class: "mono", text: target(c) }),
        el("td", { text: c.has_secret ? "set" : "—" }),
        el("td", { text: c.allow_private ? "allowed" : "no" }),
        el("td", { class: "row-actions" }, edit, test, del)), resultRow];
    }));
    state("channels", channels.length ? "content" : "empty");
  }

  async function load() {
    try { channels = items(await api("/api/channels"), "channels"); } catch (err) { state("channels", "error", err.message); return; }
    render();
  }

  function kindChanged() {
    const kind = form().elements.kind.value;
    for (const set of form().querySelectorAll("fieldset[data-kind]")) set.hidden = !set.dataset.kind.split(" ").includes(kind);
    $("secret-label").textContent = SECRET_LABELS[kind] || "Secret";
    $("secret-legend").textContent = kind === "email" ? "Password" : "Signature";
    secretState();
  }

  function secretState() {
    const hint = $("secret-state");
    const stored = editing && editing.has_secret && editing.kind === form().elements.kind.value;
    const typed = form().elements.secret.value !== "";
    hint.dataset.secret = typed ? "new" : (stored ? "set" : "none");
    hint.textContent = typed
      ? "A new secret will be saved; it cannot be shown again."
      : (stored ? "A secret is set. Leave the field empty to keep it unchanged." : "No secret is set (optional).");
  }

  function headersText(headers) {
    return Object.entries(headers || {}).map(([k, v]) => k + ": " + v).join("\n");
  }

  function parseHeaders(text) {
    const headers = {};
    for (const line of text.split("\n")) {
      if (!line.trim()) continue;
      const at = line.indexOf(":");
      // A line without a colon goes as a name without value: the API names the problem.
      if (at < 0) headers[line.trim()] = "";
      else headers[line.slice(0, at).trim()] = line.slice(at + 1).trim();
    }
    return headers;
  }

  function openForm(c) {
    editing = c;
    const f = form();
    ddms.clearFieldErrors(f);
    show("channel-form-error", false);
    f.reset();
    $("channel-form-title").textContent = c ? "Edit channel " + c.name : "New channel";
    f.elements.kind.disabled = Boolean(c);
    if (c) {
      const s = c.settings || {};
      f.elements.name.value = c.name;
      f.elements.kind.value = c.kind;
      f.elements.allow_private.checked = Boolean(c.allow_private);
      f.elements.url.value = s.url || "";
      f.elements.headers.value = headersText(s.headers);
      f.elements.smtp_host.value = s.smtp_host || "";
      f.elements.smtp_port.value = s.smtp_port ?? 587;
      f.elements.tls.value = s.tls || "starttls";
      f.elements.username.value = s.username || "";
      f.elements.from.value = s.from || "";
      f.elements.to.value = (s.to || []).join(", ");
    }
    kindChanged();
    show("channel-form", true);
    f.elements.name.focus();
  }

  function formBody() {
    const f = form().elements;
    const kind = f.kind.value;
    let settings;
    if (kind === "email") {
      const port = f.smtp_port.value.trim();
      settings = {
        smtp_host: f.smtp_host.value.trim(),
        smtp_port: port === "" ? undefined : (Number.isInteger(Number(port)) ? Number(port) : port),
        tls: f.tls.value,
        username: f.username.value.trim() || null,
        from: f.from.value.trim(),
        to: f.to.value.split(",").map((s) => s.trim()).filter(Boolean),
      };
    } else {
      settings = { url: f.url.value.trim() };
      if (kind === "webhook") settings.headers = parseHeaders(f.headers.value);
    }
    const body = { name: f.name.value.trim(), kind, settings, allow_private: f.allow_private.checked };
    // Write-only: sent when typed, otherwise the stored secret stays as it is.
    if ((kind === "webhook" || kind === "email") && f.secret.value !== "") body.secret = f.secret.value;
    return body;
  }

  async function save(event) {
    event.preventDefault();
    const f = form();
    ddms.clearFieldErrors(f);
    show("channel-form-error", false);
    $("channel-save").disabled = true;
    try {
      const body = formBody();
      if (editing) await api("/api/channels/" + encodeURIComponent(editing.id), { method: "PUT", json: body });
      else await api("/api/channels", { method: "POST", json: body });
      show("channel-form", false);
      f.elements.secret.value = "";
      await load();
    } catch (err) {
      if (err.status === 422 || err.status === 400 || err.status === 409) ddms.fieldErrors(f, err, $("channel-form-error"));
      else { $("channel-form-error").textContent = err.message; show("channel-form-error", true); }
    } finally {
      $("channel-save").disabled = false;
    }
  }

  async function remove(c) {
    if (!confirm("Delete channel " + c.name + "? Rules stop notifying it; its queued notifications are dropped.")) return;
    try { await api("/api/channels/" + encodeURIComponent(c.id), { method: "DELETE" }); } catch (err) { ddms.pageError(err); }
    await load();
  }

  ddms.start(async () => {
    if (!ddms.can("admin")) {
      show("new-channel", false);
      state("channels", "empty");
      ddms.pageError(new Error("Managing notification channels needs the admin role."));
      return;
    }
    $("new-channel").addEventListener("click", () => openForm(null));
    $("channel-cancel").addEventListener("click", () => show("channel-form", false));
    form().addEventListener("submit", save);
    form().elements.kind.addEventListener("change", kindChanged);
    form().elements.secret.addEventListener("input", secretState);
    await load();
  });
})();
