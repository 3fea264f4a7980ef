// Audit log (admin, owner): newest first, paged by id.
"use strict";

(() => {
  const { $, el, api, state, show, formatTime } = ddms;
  const PAGE = 100;
  let oldest = null;

  async function more() {
    const query = "/api/audit?limit=" + PAGE + (oldest !== null ? "&before=" + oldest : "");
    const entries = await api(query);
    for (const e of entries) {
      $("audit-rows").appendChild(el("tr", { "data-audit": String(e.id) },
        el("td", { text: formatTime(e.at) }), el("td", { text: e.actor }), el("td", { text: e.action }),
        el("td", { text: e.target || "—" }), el("td", { text: e.remote_addr || "—" }),
        el("td", { class: "mono", text: JSON.stringify(e.detail) })));
      oldest = e.id;
    }
    show("audit-more", entries.length === PAGE);
    return entries.length;
  }

  ddms.start(async () => {
    if (!ddms.can("admin")) { state("audit", "error", "The audit log needs the admin role."); return; }
    try {
      const n = await more();
      state("audit", n ? "content" : "empty");
    } catch (err) { state("audit", "error", err.message); return; }
    $("audit-more").addEventListener("click", () => more().catch(ddms.pageError));
  });
})();
