// A small time-series chart on a canvas: a line of values and, for rollups, a band from min to
// max. Drag (mouse or one finger) pans, the wheel or a pinch zooms around the pointer; when a
// gesture ends the owner is told the new view so it can load data at a fitting resolution.
// Hovering with a mouse, or tapping, marks the nearest point and describes it in the readout
// element (text, so screen readers and tests see it too). Overlays: horizontal lines (alert
// thresholds, kept inside the value range) and vertical markers (alert starts and ends).
"use strict";

class TimeChart {
  constructor(canvas, options) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.onView = (options && options.onView) || (() => {});
    this.readout = options && options.readout;
    this.describe = (options && options.describe) || ((p) => new Date(p.t).toLocaleString() + ": " + p.v);
    this.hoverT = null;
    this.tap = null;
    this.points = [];
    this.gapMs = Infinity;
    this.unit = "";
    this.t0 = Date.now() - 3600e3;
    this.t1 = Date.now();
    this.pointers = new Map();
    this.minSpan = 10e3;
    this.maxSpan = 2 * 366 * 86400e3;
    this.notifyTimer = null;
    this.lines = [];
    this.markers = [];
    canvas.style.touchAction = "none";
    canvas.addEventListener("pointerdown", (e) => this.down(e));
    canvas.addEventListener("pointermove", (e) => this.move(e));
    for (const type of ["pointerup", "pointercancel", "pointerleave"]) {
      canvas.addEventListener(type, (e) => this.up(e));
    }
    canvas.addEventListener("pointerleave", (e) => {
      if (e.pointerType === "mouse") this.setHover(null);
    });
    canvas.addEventListener("wheel", (e) => this.wheel(e), { passive: false });
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  // points: [{t (ms), v, min?, max?}], oldest first.
  setData(points, gapMs, unit) {
    this.points = points;
    this.gapMs = gapMs || Infinity;
    this.unit = unit || "";
    this.draw();
  }

  // lines: [{v, label, kind: "threshold" | "clear", severity}];
  // markers: [{t (ms), kind: "start" | "resolve", label}].
  setOverlays(lines, markers) {
    this.lines = lines || [];
    this.markers = markers || [];
    this.draw();
  }

  setView(t0, t1) {
    this.t0 = t0;
    this.t1 = t1;
    this.draw();
  }

  append(point, follow) {
    const last = this.points[this.points.length - 1];
    if (last && point.t <= last.t) return;
    this.points.push(point);
    if (follow) {
      const span = this.t1 - this.t0;
      this.t1 = Math.max(this.t1, point.t);
      this.t0 = this.t1 - span;
    }
    this.draw();
  }

  // A live reading in a rollup view: folded into the bucket it falls in (buckets of `widthMs`,
  // aligned to the epoch as the server's are), or the start of the next bucket.
  addToBucket(t, v, widthMs, follow) {
    const center = Math.floor(t / widthMs) * widthMs + widthMs / 2;
    const last = this.points[this.points.length - 1];
    if (last && last.t === center && last.count) {
      last.v = (last.v * last.count + v) / (last.count + 1);
      last.count += 1;
      last.min = Math.min(last.min, v);
      last.max = Math.max(last.max, v);
      this.draw();
      return;
    }
    this.append({ t: center, v, min: v, max: v, count: 1 }, follow);
  }

  setHover(t) {
    this.hoverT = t;
    this.draw();
  }

  nearest(t, visible) {
    let best = null;
    for (const p of visible) if (!best || Math.abs(p.t - t) < Math.abs(best.t - t)) best = p;
    return best;
  }

  timeAt(x) {
    const w = this.plotWidth();
    return this.t0 + ((x - this.left) / w) * (this.t1 - this.t0);
  }

  plotWidth() { return Math.max(1, this.canvas.clientWidth - this.left - this.right); }

  zoom(factor, centerT) {
    let span = (this.t1 - this.t0) * factor;
    span = Math.min(this.maxSpan, Math.max(this.minSpan, span));
    const ratio = (centerT - this.t0) / (this.t1 - this.t0);
    this.t0 = centerT - ratio * span;
    this.t1 = this.t0 + span;
  }

  localX(e) { return e.clientX - this.canvas.getBoundingClientRect().left; }

  down(e) {
    // Keeps the gesture when a finger leaves the canvas (not possible for every pointer).
    try { this.canvas.setPointerCapture(e.pointerId); } catch (_) { /* fine without */ }
    this.pointers.set(e.pointerId, this.localX(e));
    // A tap (down and up without moving) marks a point, as hovering does with a mouse.
    this.tap = this.pointers.size === 1 ? { id: e.pointerId, x: this.localX(e) } : null;
    clearTimeout(this.notifyTimer);
  }

  move(e) {
    if (!this.pointers.has(e.pointerId)) {
      if (e.pointerType === "mouse") this.setHover(this.timeAt(this.localX(e)));
      return;
    }
    if (this.tap && Math.abs(this.localX(e) - this.tap.x) > 6) this.tap = null;
    const x = this.localX(e);
    const span = this.t1 - this.t0;
    if (this.pointers.size === 1) {
      const dx = x - this.pointers.get(e.pointerId);
      const dt = (dx / this.plotWidth()) * span;
      this.t0 -= dt;
      this.t1 -= dt;
    } else if (this.pointers.size === 2) {
      const [a, b] = [...this.pointers.entries()];
      const other = a[0] === e.pointerId ? b[1] : a[1];
      const before = Math.abs(this.pointers.get(e.pointerId) - other);
      const after = Math.abs(x - other);
      if (before > 10 && after > 10) this.zoom(before / after, this.timeAt((x + other) / 2));
    }
    this.pointers.set(e.pointerId, x);
    this.draw();
  }

  up(e) {
    if (!this.pointers.delete(e.pointerId)) return;
    if (this.tap && this.tap.id === e.pointerId && e.type === "pointerup") {
      this.tap = null;
      this.setHover(this.timeAt(this.localX(e)));
      return;
    }
    this.tap = null;
    if (this.pointers.size === 0) this.notify();
  }

  wheel(e) {
    e.preventDefault();
    this.zoom(Math.exp(e.deltaY * 0.0015), this.timeAt(this.localX(e)));
    this.draw();
    this.notify();
  }

  notify() {
    clearTimeout(this.notifyTimer);
    this.notifyTimer = setTimeout(() => this.onView(this.t0, this.t1), 250);
  }

  niceStep(range, count) {
    const raw = range / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= raw) return m * mag;
    return 10 * mag;
  }

  timeStep(span, count) {
    const steps = [1, 5, 10, 30, 60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 30 * 86400].map((s) => s * 1000);
    return steps.find((s) => s >= span / count) || steps[steps.length - 1];
  }

  timeLabel(t, step) {
    const d = new Date(t);
    const pad = (n) => String(n).padStart(2, "0");
    const hm = pad(d.getHours()) + ":" + pad(d.getMinutes());
    if (step < 60e3) return hm + ":" + pad(d.getSeconds());
    if (step < 86400e3) return hm;
    return pad(d.getDate()) + "." + pad(d.getMonth() + 1) + ".";
  }

  draw() {
    const canvas = this.canvas, ctx = this.ctx;
    const dpr = window.devicePixelRatio || 1;
    const width = canvas.clientWidth, height = canvas.clientHeight;
    if (width === 0 || height === 0) return;
    if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    // The view in the DOM, for tests and tools (the canvas itself is pixels).
    canvas.dataset.from = String(Math.round(this.t0));
    canvas.dataset.to = String(Math.round(this.t1));
    const newest = this.points[this.points.length - 1];
    canvas.dataset.newest = newest ? JSON.stringify(newest) : "";
    ctx.clearRect(0, 0, width, height);
    this.left = 64; this.right = 12;
    const top = 12, bottom = 28;
    const plotW = this.plotWidth(), plotH = Math.max(1, height - top - bottom);
    const visible = this.points.filter((p) => p.t >= this.t0 - this.gapMs && p.t <= this.t1 + this.gapMs);
    let lo = Infinity, hi = -Infinity;
    for (const p of visible) {
      lo = Math.min(lo, p.min ?? p.v, p.v);
      hi = Math.max(hi, p.max ?? p.v, p.v);
    }
    // A threshold is worth seeing even when the values stay far from it.
    for (const l of this.lines) {
      if (!Number.isFinite(lo)) { lo = l.v; hi = l.v; }
      lo = Math.min(lo, l.v);
      hi = Math.max(hi, l.v);
    }
    if (!Number.isFinite(lo)) { lo = 0; hi = 1; }
    if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
    const pad = (hi - lo) * 0.08;
    lo -= pad; hi += pad;
    const x = (t) => this.left + ((t - this.t0) / (this.t1 - this.t0)) * plotW;
    const y = (v) => top + (1 - (v - lo) / (hi - lo)) * plotH;

    ctx.font = "12px system-ui, sans-serif";
    ctx.fillStyle = "#4b5563";
    ctx.strokeStyle = "#e5e7eb";
    ctx.lineWidth = 1;
    const vStep = this.niceStep(hi - lo, Math.max(2, Math.floor(plotH / 50)));
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let v = Math.ceil(lo / vStep) * vStep; v <= hi; v += vStep) {
      ctx.beginPath(); ctx.moveTo(this.left, y(v)); ctx.lineTo(this.left + plotW, y(v)); ctx.stroke();
      ctx.fillText(Number(v.toPrecision(6)).toString(), this.left - 6, y(v));
    }
    const tStep = this.timeStep(this.t1 - this.t0, Math.max(2, Math.floor(plotW / 90)));
    const offset = new Date().getTimezoneOffset() * 60e3;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let t = Math.ceil((this.t0 - offset) / tStep) * tStep + offset; t <= this.t1; t += tStep) {
      ctx.beginPath(); ctx.moveTo(x(t), top); ctx.lineTo(x(t), top + plotH); ctx.stroke();
      ctx.fillText(this.timeLabel(t, tStep), x(t), top + plotH + 6);
    }
    ctx.save();
    ctx.beginPath();
    ctx.rect(this.left, top, plotW, plotH);
    ctx.clip();
    // Runs of points without gaps: the line and band break where data is missing.
    const runs = [];
    let run = [];
    for (const p of visible) {
      if (run.length && p.t - run[run.length - 1].t > this.gapMs) { runs.push(run); run = []; }
      run.push(p);
    }
    if (run.length) runs.push(run);
    ctx.fillStyle = "rgba(37, 99, 235, 0.18)";
    for (const r of runs) {
      if (r[0].min === undefined) continue;
      ctx.beginPath();
      r.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.max)) : ctx.moveTo(x(p.t), y(p.max))));
      for (let i = r.length - 1; i >= 0; i--) ctx.lineTo(x(r[i].t), y(r[i].min));
      ctx.closePath();
      ctx.fill();
    }
    ctx.strokeStyle = "#2563eb";
    ctx.lineWidth = 2;
    ctx.fillStyle = "#2563eb";
    for (const r of runs) {
      if (r.length === 1) { ctx.fillRect(x(r[0].t) - 2, y(r[0].v) - 2, 4, 4); continue; }
      ctx.beginPath();
      r.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.v)) : ctx.moveTo(x(p.t), y(p.v))));
      ctx.stroke();
    }
    this.drawOverlays(x, y, top, plotH, plotW);
    const marked = this.hoverT === null ? null : this.nearest(this.hoverT, visible);
    if (marked) {
      ctx.strokeStyle = "#111827";
      ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(x(marked.t), top); ctx.lineTo(x(marked.t), top + plotH); ctx.stroke();
      ctx.fillStyle = "#111827";
      ctx.beginPath(); ctx.arc(x(marked.t), y(marked.v), 4, 0, 2 * Math.PI); ctx.fill();
    }
    ctx.restore();
    ctx.strokeStyle = "#9ca3af";
    ctx.lineWidth = 1;
    ctx.strokeRect(this.left, top, plotW, plotH);
    if (this.readout) {
      const text = marked ? this.describe(marked) : "";
      if (this.readout.textContent !== text) this.readout.textContent = text;
    }
  }

  drawOverlays(x, y, top, plotH, plotW) {
    const ctx = this.ctx;
    const colors = { critical: "#b91c1c", warning: "#c2410c", info: "#1d4ed8" };
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "right";
    ctx.textBaseline = "bottom";
    for (const l of this.lines) {
      const color = colors[l.severity] || colors.warning;
      ctx.strokeStyle = color;
      ctx.fillStyle = color;
      ctx.lineWidth = 1.5;
      ctx.setLineDash(l.kind === "clear" ? [2, 4] : [8, 4]);
      ctx.beginPath(); ctx.moveTo(this.left, y(l.v)); ctx.lineTo(this.left + plotW, y(l.v)); ctx.stroke();
      ctx.fillText(l.label, this.left + plotW - 4, y(l.v) - 2);
    }
    ctx.setLineDash([]);
    const shown = [];
    for (const m of this.markers) {
      if (m.t < this.t0 || m.t > this.t1) continue;
      shown.push({ t: m.t, kind: m.kind });
      const color = m.kind === "resolve" ? "#15803d" : "#b91c1c";
      ctx.strokeStyle = color;
      ctx.fillStyle = color;
      ctx.lineWidth = 1.5;
      ctx.beginPath(); ctx.moveTo(x(m.t), top); ctx.lineTo(x(m.t), top + plotH); ctx.stroke();
      ctx.beginPath(); ctx.moveTo(x(m.t) - 5, top); ctx.lineTo(x(m.t) + 5, top); ctx.lineTo(x(m.t), top + 8); ctx.closePath(); ctx.fill();
    }
    // What the overlays show, in the DOM for tests and tools.
    this.canvas.dataset.thresholds = JSON.stringify(this.lines.map((l) => l.v));
    this.canvas.dataset.markers = JSON.stringify(shown);
  }
}
