// Devices admin: list, create, edit and delete Modbus and MQTT devices; the register map
// editor marks every field the API's 422 names.
"use strict";

(() => {
  const { $, el, api, state, show } = ddms;
  const KINDS = ["holding", "input", "coil", "discrete"];
  const TYPES = ["u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "bool"];
  const ORDERS = ["big", "little"];
  let editing = null; // {id, protocol} or null for a new device
  let protocol = "modbus";

  function select(name, options, value) {
    return el("select", { name }, ...options.map((o) => el("option", { value: o, selected: o === value, text: o })));
  }

  function registerRow(r) {
    const reg = r || { kind: "holding", type: "u16", word_order: "big", scale: 1, offset: 0 };
    const input = (name, value, mode) => el("input", { name, value: value ?? "", inputmode: mode || null });
    const remove = el("button", { type: "button", class: "remove", "aria-label": "Remove register", text: "Remove" });
    const row = el("tr", {},
      el("td", {}, input("metric", reg.metric)),
      el("td", {}, select("kind", KINDS, reg.kind)),
      el("td", {}, input("address", reg.address, "numeric")),
      el("td", {}, select("type", TYPES, reg.type)),
      el("td", {}, select("word_order", ORDERS, reg.word_order || "big")),
      el("td", {}, input("scale", reg.scale ?? 1, "decimal")),
      el("td", {}, input("offset", reg.offset ?? 0, "decimal")),
      el("td", {}, input("unit", reg.unit)),
      el("td", {}, remove));
    remove.addEventListener("click", () => { row.remove(); numberRegisters(); });
    return row;
  }

  // Field names follow the API's paths (`modbus.registers[2].address`), so a 422 maps onto them.
  function numberRegisters() {
    [...$("register-rows").rows].forEach((row, i) => {
      for (const control of row.querySelectorAll("input, select")) control.dataset.field = "modbus.registers[" + i + "]." + control.name;
    });
  }

  // A number when the text is one; otherwise the text as typed, so the API names the field.
  function num(text) {
    const t = String(text).trim();
    if (t === "") return undefined;
    const n = Number(t);
    return Number.isFinite(n) ? n : t;
  }

  function clearErrors() {
    show("form-error", false);
    for (const e of document.querySelectorAll(".field-error.dynamic")) e.remove();
    for (const e of document.querySelectorAll("[data-error-for]")) { e.hidden = true; e.textContent = ""; }
    for (const e of document.querySelectorAll("[aria-invalid]")) e.removeAttribute("aria-invalid");
  }

  function showErrors(err) {
    const list = err.errors && err.errors.length ? err.errors : [{ field: err.field, message: err.message }];
    let unplaced = [];
    for (const { field, message } of list) {
      const control = field && document.querySelector('#device-form [data-field="' + CSS.escape(field) + '"]');
      const slot = field && document.querySelector('#device-form [data-error-for="' + CSS.escape(field) + '"]');
      if (control) {
        control.setAttribute("aria-invalid", "true");
        const note = el("span", { class: "field-error dynamic", "data-error-field": field, text: message });
        control.insertAdjacentElement("afterend", note);
      } else if (slot) {
        slot.textContent = message;
        slot.hidden = false;
      } else unplaced.push(field ? field + ": " + message : message);
    }
    const first = document.querySelector("#device-form [aria-invalid]");
    if (first) first.focus();
    $("form-error").textContent = unplaced.length
      ? unplaced.join("; ")
      : "Please correct the marked field" + (list.length > 1 ? "s" : "") + ".";
    show("form-error", true);
  }

  function openForm(kind, device) {
    protocol = kind;
    editing = device ? { id: device.id } : null;
    clearErrors();
    const form = $("device-form");
    form.reset();
    $("form-title").textContent = (device ? "Edit " : "New ") + (kind === "modbus" ? "Modbus" : "MQTT") + " device";
    show("modbus-fields", kind === "modbus");
    $("register-rows").replaceChildren();
    if (device) {
      form.elements.name.value = device.name;
      form.elements.group.value = device.group || "";
      form.elements.enabled.checked = device.enabled;
    }
    if (kind === "modbus") {
      const m = (device && device.modbus) || {};
      form.elements.host.value = m.host || "";
      form.elements.port.value = m.port ?? 502;
      form.elements.unit_id.value = m.unit_id ?? 1;
      form.elements.poll_interval_ms.value = m.poll_interval_ms ?? 1000;
      for (const r of m.registers || [null]) $("register-rows").appendChild(registerRow(r));
      numberRegisters();
    }
    show("device-form", true);
    form.elements.name.focus();
  }

  function formBody() {
    const f = $("device-form").elements;
    const body = { name: f.name.value, protocol, enabled: f.enabled.checked };
    if (f.group.value.trim()) body.group = f.group.value.trim();
    if (protocol === "modbus") {
      const registers = [...$("register-rows").rows].map((row) => {
        const v = (name) => row.querySelector('[name="' + name + '"]').value;
        const r = { metric: v("metric"), kind: v("kind"), address: num(v("address")), type: v("type"), word_order: v("word_order") };
        for (const key of ["scale", "offset"]) { const n = num(v(key)); if (n !== undefined) r[key] = n; }
        if (v("unit").trim()) r.unit = v("unit").trim();
        return r;
      });
      body.modbus = { host: f.host.value.trim(), port: num(f.port.value), unit_id: num(f.unit_id.value), poll_interval_ms: num(f.poll_interval_ms.value), registers };
      for (const key of ["port", "unit_id", "poll_interval_ms"]) if (body.modbus[key] === undefined) delete body.modbus[key];
    }
    return body;
  }

  async function save(event) {
    event.preventDefault();
    clearErrors();
    $("save").disabled = true;
    try {
      const body = formBody();
      const result = editing
        ? await api("/api/devices/" + encodeURIComponent(editing.id), { method: "PUT", json: body })
        : await api("/api/devices", { method: "POST", json: body });
      show("device-form", false);
      if (result && result.mqtt) showCredentials(result.mqtt);
      await Promise.all([load(), loadGroups()]);
    } catch (err) {
      if (err.status === 422 || err.status === 409 || err.status === 400) showErrors(err);
      else { $("form-error").textContent = err.message; show("form-error", true); }
    } finally {
      $("save").disabled = false;
    }
  }

  function showCredentials(mqtt) {
    $("credentials-list").replaceChildren(...["host", "port", "tls", "username", "password"].flatMap((k) =>
      [el("dt", { text: k }), el("dd", { class: "mono", "data-credential": k, text: String(mqtt[k]) })]));
    show("credentials", true);
  }

  async function remove(device) {
    if (!confirm("Delete " + device.name + " and all its readings?")) return;
    try {
      await api("/api/devices/" + encodeURIComponent(device.id), { method: "DELETE" });
      await load();
    } catch (err) { ddms.pageError(err); }
  }

  let devices = [];
  async function load() {
    try {
      devices = await api("/api/devices");
    } catch (err) { state("list", "error", err.message); return; }
    $("device-rows").replaceChildren(...devices.map((device) => {
      const edit = el("button", { type: "button", text: "Edit" });
      const del = el("button", { type: "button", class: "danger", text: "Delete" });
      edit.addEventListener("click", () => openForm(device.protocol, device));
      del.addEventListener("click", () => remove(device));
      return el("tr", { "data-device": device.id },
        el("td", {}, el("a", { href: "/devices/" + encodeURIComponent(device.id), text: device.name })),
        el("td", { text: device.protocol }),
        el("td", { text: device.group || "—" }),
        el("td", { text: device.enabled ? "yes" : "no" }),
        el("td", { class: "row-actions" }, edit, del));
    }));
    state("list", devices.length ? "content" : "empty");
    const match = /edit=([^&]+)/.exec(location.hash);
    if (match) {
      const device = devices.find((d) => d.id === decodeURIComponent(match[1]));
      history.replaceState(null, "", location.pathname);
      if (device) openForm(device.protocol, device);
    }
  }

  async function loadGroups() {
    let groups;
    try { groups = await api("/api/groups"); } catch (err) { state("groups", "error", err.message); return; }
    $("group-names").replaceChildren(...groups.map((g) => el("option", { value: g.name })));
    $("group-rows").replaceChildren(...groups.map((g) => {
      const del = el("button", { type: "button", class: "danger", text: "Delete" });
      del.addEventListener("click", async () => {
        if (!confirm("Delete group " + g.name + "? Its devices stay, without a group.")) return;
        try { await api("/api/groups/" + encodeURIComponent(g.id), { method: "DELETE" }); } catch (err) { ddms.pageError(err); }
        await Promise.all([loadGroups(), load()]);
      });
      return el("tr", { "data-group": g.id }, el("td", { text: g.name }), el("td", { text: String(g.devices) }), el("td", {}, del));
    }));
    state("groups", groups.length ? "content" : "empty");
  }

  ddms.start(async () => {
    $("group-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      show("group-form-error", false);
      try {
        await api("/api/groups", { method: "POST", json: { name: event.target.elements.name.value.trim() } });
        event.target.reset();
      } catch (err) {
        $("group-form-error").textContent = err.message;
        show("group-form-error", true);
      }
      await loadGroups();
    });
    if (!ddms.can("admin")) show("group-form", false);
    if (!ddms.can("admin")) {
      for (const id of ["new-modbus", "new-mqtt"]) show(id, false);
      ddms.pageError(new Error("Managing devices needs the admin role."));
    }
    $("new-modbus").addEventListener("click", () => openForm("modbus", null));
    $("new-mqtt").addEventListener("click", () => openForm("mqtt", null));
    $("add-register").addEventListener("click", () => { $("register-rows").appendChild(registerRow(null)); numberRegisters(); });
    $("cancel").addEventListener("click", () => show("device-form", false));
    $("credentials-close").addEventListener("click", () => show("credentials", false));
    $("device-form").addEventListener("submit", save);
    await Promise.all([load(), loadGroups()]);
  });
})();
