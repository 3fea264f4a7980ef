// Login page: posts the form as JSON to /api/auth/login. The server answers with two
// cookies — the session (HttpOnly, unreadable here) and the CSRF token, which the other pages
// read with csrfToken() below and send as X-CSRF-Token on every state-changing request.
"use strict";

function safeNext() {
  // Only same-origin paths: an attacker's ?next=https://evil.example must not redirect away.
  const next = new URLSearchParams(location.search).get("next") || "/";
  return next.startsWith("/") && !next.startsWith("//") && !next.startsWith("/\\") ? next : "/";
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
    if (response.ok) { location.assign(safeNext()); return; }
    if (response.status === 429) {
      const wait = response.headers.get("Retry-After") || "a few";
      showError("Too many attempts. Try again in " + wait + " seconds.");
    } else if (response.status === 401) {
      showError("Wrong username or password.");
    } else {
      showError("Login failed (" + response.status + "). Try again.");
    }
  } catch (e) {
    showError("The server cannot be reached. Check the connection and try again.");
  } finally {
    button.disabled = false;
  }
}

document.getElementById("login-form").addEventListener("submit", submit);
