// Sign in with a username and password: the server sets the session and CSRF cookies.
"use strict";

(() => {
  const { $, api, show } = ddms;

  // Only a path on this site, never another origin (no open redirect).
  function next() {
    const target = new URLSearchParams(location.search).get("next") || "/";
    return target.startsWith("/") && !target.startsWith("//") ? target : "/";
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (ddms.takeToken()) { location.assign(next()); return; }
    $("login-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      show("login-error", false);
      const f = event.target.elements;
      try {
        await api("/api/auth/login", { method: "POST", json: { username: f.username.value, password: f.password.value }, noRedirect: true });
        location.assign(next());
      } catch (err) {
        $("login-error").textContent = err.status === 401 ? "Wrong username or password." : err.message;
        show("login-error", true);
        f.password.value = "";
        f.password.focus();
      }
    });
  });
})();
