// Users and API tokens (owner): add users (a password is generated and shown once), change
// roles, disable, delete; create tokens (shown once) and revoke them.
"use strict";

(() => {
  const { $, el, api, state, show, formatTime } = ddms;
  const ROLES = ["viewer", "admin", "owner"];

  function showSecret(label, value) {
    $("secret-label").textContent = label;
    $("secret-value").textContent = value;
    show("secret", true);
  }

  async function act(fn) {
    try { await fn(); ddms.pageError(null); } catch (err) { ddms.pageError(err); }
    await Promise.all([loadUsers(), loadTokens()]);
  }

  async function loadUsers() {
    let users;
    try { users = await api("/api/users"); } catch (err) { state("users", "error", err.message); return; }
    $("user-rows").replaceChildren(...users.map((u) => {
      const role = el("select", { "aria-label": "Role of " + u.username }, ...ROLES.map((r) => el("option", { value: r, selected: r === u.role, text: r })));
      role.addEventListener("change", () => act(() => api("/api/users/" + u.id, { method: "PATCH", json: { role: role.value } })));
      const toggle = el("button", { type: "button", text: u.disabled_at ? "Enable" : "Disable" });
      toggle.addEventListener("click", () => act(() => api("/api/users/" + u.id, { method: "PATCH", json: { disabled: !u.disabled_at } })));
      const del = el("button", { type: "button", class: "danger", text: "Delete" });
      del.addEventListener("click", () => { if (confirm("Delete user " + u.username + "?")) act(() => api("/api/users/" + u.id, { method: "DELETE" })); });
      return el("tr", { "data-user": u.id },
        el("td", { text: u.username }), el("td", {}, role),
        el("td", { text: u.disabled_at ? "disabled" : "active" }),
        el("td", { text: formatTime(u.created_at) }),
        el("td", { class: "row-actions" }, toggle, del));
    }));
    state("users", users.length ? "content" : "empty");
  }

  async function loadTokens() {
    let tokens;
    try { tokens = await api("/api/tokens"); } catch (err) { state("tokens", "error", err.message); return; }
    const live = tokens.filter((t) => !t.revoked_at);
    $("token-rows").replaceChildren(...live.map((t) => {
      const revoke = el("button", { type: "button", class: "danger", text: "Revoke" });
      revoke.addEventListener("click", () => { if (confirm("Revoke token " + t.name + "?")) act(() => api("/api/tokens/" + t.id, { method: "DELETE" })); });
      return el("tr", { "data-token": t.id },
        el("td", { text: t.name }), el("td", { text: t.role }),
        el("td", { text: formatTime(t.created_at) }), el("td", { text: formatTime(t.last_used_at) }),
        el("td", {}, revoke));
    }));
    state("tokens", live.length ? "content" : "empty");
  }

  function formHandler(formId, errorId, submit) {
    $(formId).addEventListener("submit", async (event) => {
      event.preventDefault();
      show(errorId, false);
      try {
        await submit(event.target.elements);
        event.target.reset();
      } catch (err) {
        $(errorId).textContent = err.message;
        show(errorId, true);
      }
      await Promise.all([loadUsers(), loadTokens()]);
    });
  }

  ddms.start(async () => {
    if (!ddms.can("owner")) {
      for (const id of ["user-form", "token-form"]) show(id, false);
      state("users", "error", "Only owners manage users and tokens.");
      state("tokens", "error", "Only owners manage users and tokens.");
      return;
    }
    formHandler("user-form", "user-form-error", async (f) => {
      const created = await api("/api/users", { method: "POST", json: { username: f.username.value.trim(), role: f.role.value } });
      if (created.password) showSecret("Password for " + created.username + " (shown once):", created.password);
    });
    formHandler("token-form", "token-form-error", async (f) => {
      const created = await api("/api/tokens", { method: "POST", json: { name: f.name.value.trim(), role: f.role.value } });
      showSecret("Token " + created.name + " (shown once):", created.token);
    });
    await Promise.all([loadUsers(), loadTokens()]);
  });
})();
