// Login page: posts the form as JSON to /api/auth/login. The server answers with two cookies —
// the session (HttpOnly, unreadable here) and the CSRF token, which common.js sends back as
// X-CSRF-Token on every state-changing request.
"use strict";

(() => {
  function safeNext() {
    // Only this site: an attacker's ?next= must not redirect away. Resolved the way the browser
    // will resolve it (tabs and newlines dropped, backslashes read as slashes), so no prefix
    // check can be fooled by `/\t/evil.example`; anything else goes to the home page.
    const next = new URLSearchParams(location.search).get("next") || "/";
    try {
      const url = new URL(next, location.origin);
      if (url.origin === location.origin) return url.pathname + url.search + url.hash;
    } catch (_) {
      // Not a URL at all.
    }
    return "/";
  }

  function showError(text) {
    const box = document.getElementById("login-error");
    box.textContent = text;
    box.hidden = !text;
  }

  async function submit(event) {
    event.preventDefault();
    const button = document.getElementById("submit");
    const username = document.getElementById("username").value.trim();
    const password = document.getElementById("password").value;
    if (!username || !password) { showError("Enter your username and password."); return; }
    button.disabled = true;
    showError("");
    try {
      const response = await fetch("/api/auth/login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        credentials: "same-origin",
        body: JSON.stringify({ username, password }),
      });
      if (response.ok) {
        // A token from an earlier visit must not shadow the new session.
        sessionStorage.removeItem("ddms.token");
        location.assign(safeNext());
        return;
      }
      if (response.status === 429) {
        const wait = response.headers.get("Retry-After") || "a few";
        showError("Too many attempts. Try again in " + wait + " seconds.");
      } else if (response.status === 401) {
        showError("Wrong username or password.");
      } else {
        showError("Sign-in failed (" + response.status + "). Try again.");
      }
      document.getElementById("password").value = "";
      document.getElementById("password").focus();
    } catch (e) {
      showError("The server cannot be reached. Check the connection and try again.");
    } finally {
      button.disabled = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    // An API token in the fragment (`/#token=…`) signs in without a password.
    if (ddms.takeToken()) { location.assign(safeNext()); return; }
    document.getElementById("login-form").addEventListener("submit", submit);
  });
})();
