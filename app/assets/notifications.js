// Notifications: open connection failures; admins acknowledge them.
"use strict";

(() => {
  const { $, el, api, state, formatTime } = ddms;
  let names = new Map();

  async function load() {
    let open;
    try {
      const [devices, notes] = await Promise.all([api("/api/devices"), api("/api/notifications/connection-failures")]);
      names = new Map(devices.map((d) => [d.id, d.name]));
      open = notes;
    } catch (err) { state("notes", "error", err.message); return; }
    $("notes-content").replaceChildren(...open.map(item));
    state("notes", open.length ? "content" : "empty");
  }

  function item(n) {
    const li = el("li", { class: "note", "data-notification": n.id },
      el("div", {},
        el("strong", { text: names.get(n.device_id) || "deleted device" }),
        el("span", { class: "muted", text: " since " + formatTime(n.created_at) }),
        el("p", { text: n.message })));
    if (ddms.can("admin")) {
      const ack = el("button", { type: "button", class: "ack", text: "Acknowledge" });
      ack.addEventListener("click", async () => {
        ack.disabled = true;
        try {
          await api("/api/notifications/connection-failures/" + encodeURIComponent(n.id), { method: "DELETE" });
          li.remove();
          if (!$("notes-content").children.length) state("notes", "empty");
        } catch (err) {
          ack.disabled = false;
          ddms.pageError(err);
        }
      });
      li.appendChild(ack);
    }
    return li;
  }

  ddms.start(async () => {
    await load();
    ddms.stream({ notification: () => load(), reset: () => load() });
  });
})();
