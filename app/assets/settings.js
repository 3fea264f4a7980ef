// Settings (owner): retention, offline threshold, backup schedule.
"use strict";

(() => {
  const { $, el, api, state, show } = ddms;

  function fill(settings) {
    const f = $("settings-content").elements;
    f.retention_days.value = settings.retention_days ?? "";
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

  ddms.start(async () => {
    if (!ddms.can("owner")) {
      $("settings-empty").textContent = "Only owners change settings.";
      state("settings", "empty");
      return;
    }
    try {
      fill(await api("/api/system/config"));
    } catch (err) { state("settings", "error", err.message); return; }
    state("settings", "content");
    $("settings-content").addEventListener("submit", save);
  });
})();
