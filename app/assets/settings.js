// Settings (owner): retention (a pending shortening, "Delete now"), offline threshold, backup
// schedule; backups (list, back up now).
"use strict";

(() => {
  const { $, el, api, state, show } = ddms;

  function fill(settings) {
    const f = $("settings-content").elements;
    const pending = settings.retention_pending;
    // A pending shortening is what the owner asked for: shown (and sent back unchanged).
    f.retention_days.value = (pending ? pending.retention_days : settings.retention_days) ?? "";
    if (pending) {
      const from = pending.from_days === null ? "everything kept" : pending.from_days + " days";
      $("retention-pending-text").textContent = "Retention " + from + " → " + pending.retention_days +
        " days takes effect " + ddms.formatTime(pending.due_at) + ": about " + pending.readings +
        " readings will be deleted. ";
    }
    show("retention-pending", Boolean(pending));
    f.offline_after_s.value = settings.offline_after_s ?? "";
    f.backup_schedule.value = settings.backup_schedule ?? "off";
  }

  function number(text) {
    const t = text.trim();
    if (t === "") return null;
    const n = Number(t);
    return Number.isInteger(n) ? n : t;
  }

  async function save(event) {
    event.preventDefault();
    show("settings-saved", false);
    show("settings-form-error", false);
    for (const e of document.querySelectorAll(".field-error.dynamic")) e.remove();
    for (const e of document.querySelectorAll("[aria-invalid]")) e.removeAttribute("aria-invalid");
    const f = $("settings-content").elements;
    const offline = number(f.offline_after_s.value);
    const body = { retention_days: number(f.retention_days.value), backup_schedule: f.backup_schedule.value.trim() };
    if (offline !== null) body.offline_after_s = offline;
    try {
      fill(await api("/api/system/config", { method: "PUT", json: body }));
      show("settings-saved", true);
    } catch (err) {
      const errors = err.errors && err.errors.length ? err.errors : [{ field: err.field, message: err.message }];
      for (const { field, message } of errors) {
        const input = field && document.querySelector('[data-field="' + CSS.escape(field) + '"]');
        if (input) {
          input.setAttribute("aria-invalid", "true");
          input.insertAdjacentElement("afterend", el("span", { class: "field-error dynamic", "data-error-field": field, text: message }));
        }
      }
      $("settings-form-error").textContent = err.message;
      show("settings-form-error", true);
    }
  }

  async function applyRetention() {
    if (!confirm("Delete the readings older than the new retention now? This cannot be undone.")) return;
    show("settings-form-error", false);
    try {
      fill(await api("/api/system/retention/apply", { method: "POST" }));
      show("settings-saved", true);
    } catch (err) {
      $("settings-form-error").textContent = err.message;
      show("settings-form-error", true);
    }
  }

  function size(bytes) {
    if (bytes >= 1 << 30) return (bytes / (1 << 30)).toFixed(1) + " GiB";
    if (bytes >= 1 << 20) return (bytes / (1 << 20)).toFixed(1) + " MiB";
    if (bytes >= 1 << 10) return (bytes / (1 << 10)).toFixed(1) + " KiB";
    return bytes + " B";
  }

  let polling = null;

  function renderBackups(data) {
    const rows = data.backups.map((b) => el("tr", { "data-backup": b.name },
      el("td", { class: "mono", text: b.name }),
      el("td", { text: ddms.formatTime(b.created_at) }),
      el("td", { text: size(b.bytes) }),
      el("td", { text: b.locations.join(", ") })));
    $("backup-rows").replaceChildren(...rows);
    const due = data.next_due ? "next due " + ddms.formatTime(data.next_due) : "no backup scheduled";
    const s3 = data.s3 ? " Copies go to S3 bucket " + data.s3.bucket + "." : "";
    $("backups-summary").textContent = "Schedule: " + data.schedule + " (" + due + ")." + s3;
    const running = data.running !== null;
    $("backup-now").disabled = running;
    $("backup-progress").textContent = running ? "Writing " + data.running + "…" : "";
    const problems = [];
    if (data.last && !data.last.ok) problems.push("The last backup (" + data.last.name + ") failed: " + data.last.error);
    if (data.s3 && data.s3.error) problems.push("The S3 copies cannot be listed: " + data.s3.error);
    $("backup-failed").textContent = problems.join(" ");
    show("backup-failed", problems.length > 0);
    state("backups", rows.length ? "content" : "empty");
    if (running && polling === null) polling = setTimeout(() => { polling = null; loadBackups(); }, 1000);
  }

  async function loadBackups() {
    try {
      renderBackups(await api("/api/system/backups"));
    } catch (err) { state("backups", "error", err.message); }
  }

  async function backUpNow() {
    $("backup-now").disabled = true;
    show("backup-failed", false);
    try {
      const started = await api("/api/system/backup", { method: "POST", json: {} });
      $("backup-progress").textContent = "Writing " + started.name + "…";
    } catch (err) {
      $("backup-failed").textContent = err.message;
      show("backup-failed", true);
    }
    await loadBackups();
  }

  ddms.start(async () => {
    if (!ddms.can("owner")) {
      $("settings-empty").textContent = "Only owners change settings.";
      state("settings", "empty");
      return;
    }
    show("backups-section", true);
    $("backup-now").addEventListener("click", backUpNow);
    const backups = loadBackups();
    try {
      fill(await api("/api/system/config"));
      state("settings", "content");
      $("settings-content").addEventListener("submit", save);
      $("retention-apply").addEventListener("click", applyRetention);
    } catch (err) { state("settings", "error", err.message); }
    await backups;
  });
})();
