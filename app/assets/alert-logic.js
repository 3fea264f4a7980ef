// Alert rule logic the pages share: which rules watch a device's metric, how a rule reads in
// words, and the rule editor's preview — the server's fire/clear/for state machine
// (app/src/alerts/engine.rs) replayed over 1-minute rollups. The preview is an estimate: a
// rollup holds only a minute's min, max and average, not each reading in order.
"use strict";

const ddmsAlerts = (() => {
  const CONDITIONS = {
    above: "above",
    below: "below",
    outside: "outside",
    inside: "inside",
    no_data: "no data for",
  };

  // A rule targets one device, one group (by id or name), or every device.
  function appliesTo(rule, device, metric) {
    if (rule.metric && metric && rule.metric !== metric) return false;
    if (rule.device_id) return rule.device_id === device.id;
    const group = rule.group ?? rule.group_id ?? null;
    if (group) return device.group === group || device.group_id === group || (rule.group_name && rule.group_name === device.group);
    return true;
  }

  // Fire and clear tests with the server's defaults (clear = threshold, high = threshold).
  function check(rule) {
    const low = Number(rule.threshold);
    const high = rule.threshold_high ?? low;
    const clearLow = rule.clear_threshold ?? low;
    const clearHigh = rule.clear_threshold_high ?? high;
    const c = rule.condition;
    return {
      fires(v) {
        if (c === "above") return v > low;
        if (c === "below") return v < low;
        if (c === "outside") return v < low || v > high;
        if (c === "inside") return v >= low && v <= high;
        return false;
      },
      clears(v) {
        if (c === "above") return v <= clearLow;
        if (c === "below") return v >= clearLow;
        if (c === "outside") return v >= clearLow && v <= clearHigh;
        if (c === "inside") return v < clearLow || v > clearHigh;
        return true;
      },
    };
  }

  function describe(rule) {
    const c = rule.condition;
    if (c === "no_data") return "no data for " + ddms.formatDuration(rule.no_data_s);
    let text = (CONDITIONS[c] || c) + " " + (c === "outside" || c === "inside"
      ? rule.threshold + "…" + rule.threshold_high
      : rule.threshold);
    const clear = c === "outside" || c === "inside"
      ? (rule.clear_threshold !== null && rule.clear_threshold !== undefined &&
         (rule.clear_threshold !== rule.threshold || rule.clear_threshold_high !== rule.threshold_high)
        ? rule.clear_threshold + "…" + rule.clear_threshold_high : null)
      : (rule.clear_threshold !== null && rule.clear_threshold !== undefined && rule.clear_threshold !== rule.threshold
        ? String(rule.clear_threshold) : null);
    if (clear !== null) text += ", clears at " + clear;
    if (rule.for_s) text += ", for " + ddms.formatDuration(rule.for_s);
    return text;
  }

  // Each 1-minute bucket becomes two readings, its minimum and its maximum, in the order the
  // series' trend suggests (rising from the previous minute to the next: minimum first). So a
  // minute that touches the threshold counts as meeting it, a pending condition holds only
  // while even the minute's better extreme meets it, and the minute a value climbs through the
  // threshold is not mistaken for a fire and a clear.
  function bucketReadings(buckets, i) {
    const b = buckets[i];
    const avg = (x) => (x ? Number(x.avg ?? x.value) : undefined);
    const t = Date.parse(b.ts);
    const lo = Number(b.min ?? b.avg ?? b.value);
    const hi = Number(b.max ?? b.avg ?? b.value);
    const prev = avg(buckets[i - 1]);
    const next = avg(buckets[i + 1]);
    const here = avg(b);
    let rising;
    if (prev !== undefined && next !== undefined) rising = next > prev;
    else if (next !== undefined) rising = next > here;
    else if (prev !== undefined) rising = here > prev;
    else rising = false;
    const [first, second] = rising ? [lo, hi] : [hi, lo];
    return [{ t, v: first }, { t: t + 59e3, v: second }];
  }

  // The fires the rule would have had over `buckets` (oldest first, as the readings API returns
  // them): [{t, v}], and whether it would still be firing at the end.
  function simulate(rule, buckets) {
    const fires = [];
    if (rule.condition === "no_data") {
      const silence = Number(rule.no_data_s) * 1000;
      if (!(silence > 0)) return { fires, firingAtEnd: false };
      let last = null;
      for (const b of buckets) {
        if (!(b.count > 0)) continue;
        const t = Date.parse(b.ts);
        // A gap of whole buckets: the series was silent from the end of the last one.
        if (last !== null && t - (last + 60e3) >= silence) fires.push({ t: last + 60e3 + silence, v: null });
        last = t;
      }
      return { fires, firingAtEnd: false };
    }
    if (!Number.isFinite(Number(rule.threshold))) return { fires, firingAtEnd: false };
    const chk = check(rule);
    const hold = Math.max(0, Number(rule.for_s) || 0) * 1000;
    let phase = "idle";
    let since = 0;
    const filled = buckets.filter((b) => b.count !== 0);
    for (let i = 0; i < filled.length; i++) {
      for (const { t, v } of bucketReadings(filled, i)) {
        if (!Number.isFinite(v)) continue;
        if (phase === "idle") {
          if (!chk.fires(v)) continue;
          if (hold === 0) { fires.push({ t, v }); phase = "firing"; } else { phase = "pending"; since = t; }
        } else if (phase === "pending") {
          if (!chk.fires(v)) phase = "idle";
          else if (t - since >= hold) { fires.push({ t, v }); phase = "firing"; }
        } else if (chk.clears(v)) phase = "idle";
      }
    }
    return { fires, firingAtEnd: phase === "firing" };
  }

  // Horizontal lines a chart draws for a rule: its thresholds, and clear thresholds that differ.
  function lines(rule) {
    if (rule.condition === "no_data") return [];
    const out = [];
    const add = (v, label, kind) => {
      if (v === null || v === undefined || !Number.isFinite(Number(v))) return;
      if (out.some((l) => l.v === Number(v))) return;
      out.push({ v: Number(v), label: rule.name + ": " + label + " " + v, kind, severity: rule.severity });
    };
    add(rule.threshold, rule.condition === "outside" || rule.condition === "inside" ? "low" : rule.condition, "threshold");
    add(rule.threshold_high, "high", "threshold");
    add(rule.clear_threshold, "clears", "clear");
    add(rule.clear_threshold_high, "clears", "clear");
    return out;
  }

  return { appliesTo, check, describe, simulate, lines };
})();
