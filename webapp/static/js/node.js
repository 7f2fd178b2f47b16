/* The node page: live heatmap and statistics, histogram, settings form with the downlink's
 * progress, recent frames, charts over time, CSV links. Subscribes to one device. */
"use strict";

(function () {
  const T = window.Thermal;
  const deviceId = document.body.dataset.deviceId;
  const enc = encodeURIComponent(deviceId);
  const HISTORY_SIZE = 12;
  const CHART_FRAMES = 200;
  const CHART_AMBIENT = 500;
  const SUMMARY_DAYS = 30; // before the oldest raw frame charted: hourly summaries (retention)
  const STEPS = ["queued", "sent", "acked", "applied"];

  const ui = {
    online: T.$("online"),
    lastSeen: T.$("last-seen"),
    error: T.$("node-error"),
    heatmap: T.$("heatmap"),
    noData: T.$("no-data"),
    frameTime: T.$("frame-time"),
    frameKind: T.$("frame-kind"),
    backToLive: T.$("back-to-live"),
    tempMax: T.$("temp-max"),
    tempMean: T.$("temp-mean"),
    tempMin: T.$("temp-min"),
    ambient: T.$("ambient"),
    fan: T.$("fan"),
    mode: T.$("mode"),
    threshold: T.$("threshold"),
    coverage: T.$("coverage"),
    alarms: T.$("alarms"),
    form: T.$("settings-form"),
    fanSelect: T.$("fan-select"),
    modeSelect: T.$("mode-select"),
    stepSelect: T.$("step-select"),
    thresholdInput: T.$("threshold-input"),
    submit: T.$("submit-settings"),
    settingsError: T.$("settings-error"),
    downlinkStatus: T.$("downlink-status"),
    downlinkSteps: T.$("downlink-steps"),
    downlinkMessage: T.$("downlink-message"),
    downlinkSettings: T.$("downlink-settings"),
    histogram: T.$("histogram"),
    history: T.$("history"),
    chartMax: T.$("chart-max"),
    rulesForm: T.$("rules-form"),
    rulesSummary: T.$("rules-summary"),
    rulesError: T.$("rules-error"),
    chartAmbient: T.$("chart-ambient"),
    csvFrames: T.$("csv-frames"),
    csvFrame: T.$("csv-frame"),
    csvFrameNone: T.$("csv-frame-none"),
  };

  const state = {
    node: null, // the latest node_state
    live: null, // the latest frame event (with its image)
    pinned: null, // a frame from the history strip shown instead of the live one
    shownFrameId: null,
    shownVersion: null,
    alarms: new Map(), // kind -> active alarm
    downlink: null, // the newest downlink of this device
    formTouched: false,
    framesById: new Map(), // frame_id -> metadata, for the history strip and the chart
    ambient: new Map(), // ISO time -> temperature
    summaries: [], // hourly summaries before the oldest frame charted, oldest first
    rules: null, // the alarm rules in effect (GET /api/devices/<id>/alarm-rules)
  };

  function showError(message) {
    ui.error.hidden = !message;
    T.setText(ui.error, message || "");
  }

  // --- node state ----------------------------------------------------------------------------

  function renderNode() {
    const s = state.node;
    if (!s) return;
    const online = s.online ? "online" : "offline";
    ui.online.dataset.online = online;
    T.setText(ui.online, online);
    T.setText(ui.lastSeen, `Last seen: ${T.time(s.last_seen)}`);
    let fan = s.fan || "—";
    if (s.fan_requested && s.fan_requested !== s.fan) fan = `${s.fan || "?"} (requested ${s.fan_requested})`;
    T.setText(ui.fan, fan);
    let modeText = s.mode || (state.live && state.live.mode) || "—";
    if (s.mode === "compressed" && T.isNumber(s.step)) modeText = `compressed (${s.step} °C)`;
    T.setText(ui.mode, modeText);
    T.setText(ui.threshold, T.isNumber(s.threshold) ? `${s.threshold} °C` : "—");
    fillForm();
  }

  /** The form shows the settings wanted now, until the user starts changing it. */
  function fillForm() {
    const s = state.node;
    if (!s || state.formTouched) return;
    const desired = s.desired || {};
    const fan = desired.fan || s.fan_requested || s.fan;
    const mode = desired.mode || s.mode;
    const threshold = T.isNumber(desired.threshold) ? desired.threshold : s.threshold;
    if (fan) ui.fanSelect.value = fan;
    if (mode) ui.modeSelect.value = mode;
    const step = T.isNumber(desired.step) ? desired.step : s.step;
    if (T.isNumber(step)) ui.stepSelect.value = String(step);
    if (T.isNumber(threshold)) ui.thresholdInput.value = String(threshold);
  }

  function applyState(payload) {
    if (payload.device_id !== deviceId) return;
    state.node = Object.assign({}, state.node, payload);
    renderNode();
    if (state.rules && T.isNumber(payload.threshold) && payload.threshold !== state.rules.threshold) {
      renderRules(Object.assign({}, state.rules, { threshold: payload.threshold }));
    }
  }

  function applyAmbient(reading) {
    if (reading.device_id !== deviceId || !reading.at) return;
    const latest = [...state.ambient.keys()].pop();
    state.ambient.set(reading.at, reading.temperature);
    if (!latest || reading.at >= latest) T.setText(ui.ambient, T.temp(reading.temperature));
    scheduleCharts();
  }

  function applyAlarm(alarm) {
    if (alarm.device_id !== deviceId) return;
    if (alarm.active) state.alarms.set(alarm.kind, alarm);
    else if (state.alarms.has(alarm.kind) && state.alarms.get(alarm.kind).alarm_id === alarm.alarm_id) {
      state.alarms.delete(alarm.kind);
    }
    ui.alarms.replaceChildren(
      ...[...state.alarms.values()].sort(T.byUrgency).map((a) => T.alarmItem(a, false)),
    );
  }

  // --- the frame shown -----------------------------------------------------------------------

  function frameKind(frame) {
    const mode = frame.mode === "fast" ? "fast (6 × 8 block maxima)" : frame.mode || "";
    return frame.complete ? mode : `${mode}, partial`;
  }

  /** Fill the heatmap panel with a frame's metadata (the image is set by the caller). */
  function renderFrame(frame) {
    ui.heatmap.hidden = false;
    ui.noData.hidden = true;
    ui.heatmap.dataset.frameId = String(frame.frame_id);
    ui.heatmap.dataset.complete = frame.complete ? "true" : "false";
    T.setTime(ui.frameTime, frame.captured_at);
    T.setText(ui.frameKind, frameKind(frame));
    T.setText(ui.tempMax, T.temp(frame.temp_max));
    T.setText(ui.tempMean, T.temp(frame.temp_mean));
    T.setText(ui.tempMin, T.temp(frame.temp_min));
    T.setText(
      ui.coverage,
      frame.complete ? "complete" : `partial: ${T.percent(frame.coverage)} of the pixels`,
    );
    ui.coverage.dataset.complete = frame.complete ? "true" : "false";
    ui.csvFrame.href = `/api/frames/${frame.frame_id}.csv`;
    ui.csvFrame.setAttribute("download", `${deviceId}-frame-${frame.frame_id}.csv`);
    ui.csvFrame.hidden = false;
    ui.csvFrameNone.hidden = true;
    ui.backToLive.hidden = !state.pinned;
    // A partial frame fills in as fragments arrive: its histogram changes with its coverage.
    const version = `${frame.frame_id}:${frame.coverage}`;
    if (state.shownVersion !== version) loadHistogram(frame.frame_id);
    state.shownVersion = version;
    state.shownFrameId = frame.frame_id;
    markHistory();
  }

  function applyFrame(frame) {
    if (frame.device_id !== deviceId) return;
    if (state.live && frame.frame_id < state.live.frame_id) {
      rememberFrame(frame); // a late partial update of an older frame: history only
      return;
    }
    state.live = frame;
    rememberFrame(frame);
    if (state.node && !state.node.mode) T.setText(ui.mode, frame.mode || "—");
    if (!state.pinned) {
      T.showPng(ui.heatmap, frame.image);
      renderFrame(frame);
    }
  }

  async function pin(frameId) {
    const meta = state.framesById.get(frameId);
    if (!meta) return;
    if (state.live && frameId === state.live.frame_id) {
      unpin();
      return;
    }
    state.pinned = meta;
    try {
      T.showUrl(ui.heatmap, await T.resourceUrl(`/api/frames/${frameId}.png`));
    } catch (e) {
      showError(`Could not load that frame: ${e.message}`);
    }
    renderFrame(meta);
  }

  function unpin() {
    state.pinned = null;
    ui.history.scrollLeft = 0;
    if (state.live) {
      T.showPng(ui.heatmap, state.live.image);
      renderFrame(state.live);
    }
  }

  // --- histogram -----------------------------------------------------------------------------

  let histogramRequest = 0;
  let histogramBins = null;

  async function loadHistogram(frameId) {
    const request = ++histogramRequest;
    try {
      const data = await T.api(`/api/frames/${frameId}/histogram?bins=20`);
      if (request !== histogramRequest) return; // a newer frame has been shown meanwhile
      histogramBins = data.bins || [];
      ui.histogram.dataset.frameId = String(frameId);
      drawHistogram();
    } catch (e) {
      if (request === histogramRequest) showError(`Could not load the histogram: ${e.message}`);
    }
  }

  function binEdges(bin) {
    const low = [bin.low, bin.from, bin.start, bin.min, bin.lo, bin.lower].find(T.isNumber);
    const high = [bin.high, bin.to, bin.end, bin.max, bin.hi, bin.upper].find(T.isNumber);
    return [low, high];
  }

  function cssVar(name, fallback) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
  }

  function drawHistogram() {
    const canvas = ui.histogram;
    const bins = histogramBins || [];
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(200, canvas.clientWidth || 320);
    const height = Math.max(120, canvas.clientHeight || 160);
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const text = cssVar("--muted", "#999");
    const bar = cssVar("--accent", "#f08c3c");
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillStyle = text;
    if (!bins.length) {
      ctx.fillText("no frame yet", 8, height / 2);
      return;
    }
    const top = 14;
    const bottom = 20;
    const plotHeight = height - top - bottom;
    const most = Math.max(1, ...bins.map((b) => b.count || 0));
    const slot = width / bins.length;
    ctx.fillStyle = bar;
    bins.forEach((b, i) => {
      const h = ((b.count || 0) / most) * plotHeight;
      ctx.fillRect(i * slot + 1, top + plotHeight - h, Math.max(1, slot - 2), h);
    });
    ctx.fillStyle = text;
    const [first] = binEdges(bins[0]);
    const [, last] = binEdges(bins[bins.length - 1]);
    ctx.textBaseline = "bottom";
    if (T.isNumber(first)) ctx.fillText(`${first.toFixed(1)} °C`, 2, height - 2);
    if (T.isNumber(last)) {
      const label = `${last.toFixed(1)} °C`;
      ctx.fillText(label, width - ctx.measureText(label).width - 2, height - 2);
    }
    ctx.textBaseline = "top";
    ctx.fillText(`${most} px`, 2, 0);
    canvas.dataset.bins = String(bins.length);
  }

  // --- history strip -------------------------------------------------------------------------

  const historyUrls = new Map(); // frame_id -> URL given to its <img>
  const historyItems = new Map(); // frame_id -> {li, img, caption, complete}

  function rememberFrame(frame) {
    const meta = Object.assign({}, frame);
    delete meta.image;
    state.framesById.set(frame.frame_id, meta);
    renderHistory();
    scheduleCharts();
  }

  function renderHistory() {
    const newest = [...state.framesById.values()]
      .sort((a, b) => b.frame_id - a.frame_id)
      .slice(0, HISTORY_SIZE);
    const wanted = new Set(newest.map((f) => f.frame_id));
    for (const [frameId, url] of historyUrls) {
      if (!wanted.has(frameId)) {
        T.release(url);
        historyUrls.delete(frameId);
      }
    }
    for (const frameId of historyItems.keys()) {
      if (!wanted.has(frameId)) historyItems.delete(frameId);
    }
    // Stay at the newest frame unless the user has scrolled back in the strip.
    const atStart = ui.history.scrollLeft < 8;
    const items = newest.map((f) => historyItem(f));
    ui.history.replaceChildren(...items);
    if (atStart) ui.history.scrollLeft = 0;
    markHistory();
  }

  function historyItem(frame) {
    let item = historyItems.get(frame.frame_id);
    if (!item) {
      const img = T.el("img", { alt: "", loading: "lazy", width: 96, height: 72 });
      const caption = T.el("span", { class: "history-caption" });
      const temp = T.el("span", { class: "history-temp" });
      const button = T.el(
        "button",
        { type: "button", class: "history-button", testid: `history-frame-${frame.frame_id}` },
        img,
        caption,
        temp,
      );
      button.addEventListener("click", () => pin(frame.frame_id));
      item = { li: T.el("li", { data: { frameId: String(frame.frame_id) } }, button), img, caption, temp, complete: null };
      historyItems.set(frame.frame_id, item);
    }
    T.setText(item.caption, T.time(frame.captured_at));
    T.setText(item.temp, T.temp(frame.temp_max));
    item.li.dataset.complete = frame.complete ? "true" : "false";
    if (item.complete !== frame.complete || !historyUrls.has(frame.frame_id)) {
      // A partial frame's PNG changes as fragments arrive: load it again when it completes.
      item.complete = frame.complete;
      const path = `/api/frames/${frame.frame_id}.png${frame.complete ? "" : `?coverage=${frame.coverage}`}`;
      T.resourceUrl(path).then((url) => {
        if (historyItems.get(frame.frame_id) !== item) {
          T.release(url); // scrolled out of the strip meanwhile
          return;
        }
        T.release(historyUrls.get(frame.frame_id));
        historyUrls.set(frame.frame_id, url);
        item.img.src = url;
        item.img.alt = `Frame at ${T.time(frame.captured_at)}`;
      }).catch(() => {
        item.img.alt = "image unavailable";
      });
    }
    return item.li;
  }

  function markHistory() {
    for (const li of ui.history.children) {
      li.dataset.shown = li.dataset.frameId === String(state.shownFrameId) ? "true" : "false";
    }
  }

  // --- charts --------------------------------------------------------------------------------

  const charts = { max: null, ambient: null };
  let chartsScheduled = false;

  function chartOptions(label, color, width, limits) {
    const axis = {
      stroke: cssVar("--muted", "#999"),
      grid: { stroke: cssVar("--grid", "rgba(128,128,128,0.2)"), width: 1 },
      ticks: { stroke: cssVar("--grid", "rgba(128,128,128,0.2)"), width: 1 },
    };
    return {
      width,
      height: 160,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: {
        // One point alone makes uPlot span 1000 days: show ten minutes around it instead.
        x: {
          time: true,
          range: (u, min, max) => {
            const xs = u.data && u.data[0];
            return xs && xs.length === 1 ? [xs[0] - 300, xs[0] + 300] : [min, max];
          },
        },
        y: {
          range: (u, min, max) =>
            min === max ? [min - 2, max + 2] : window.uPlot.rangeNum(min, max, 0.1, true),
        },
      },
      axes: [axis, Object.assign({}, axis, { size: 44 })],
      series: [
        {},
        { label, stroke: color, width: 2, spanGaps: true, points: { size: 4 } },
        ...(limits ? [
          { label: "threshold", stroke: cssVar("--hot", "#e4572e"), width: 1, dash: [6, 4], points: { show: false } },
          { label: "clears below", stroke: cssVar("--muted", "#999"), width: 1, dash: [2, 4], points: { show: false } },
        ] : []),
      ],
      bands: limits ? [{ series: [2, 3], fill: "rgba(228, 87, 46, 0.15)" }] : [],
    };
  }

  // Older than the raw points: one point per hour from the summaries, at the hour's middle.
  function withSummaries(points, pick, stat) {
    const first = points.length ? points[0][0] : Infinity;
    const older = state.summaries
      .map((s) => [T.seconds(s.hour) + 1800, s[pick] ? s[pick][stat] : null])
      .filter(([x, y]) => x !== null && x < first && T.isNumber(y));
    const all = older.concat(points);
    return [all.map((p) => p[0]), all.map((p) => p[1])];
  }

  /** The threshold and the level an alarm clears below (threshold − hysteresis), as lines. */
  function limitSeries(xs) {
    const threshold = state.rules && T.isNumber(state.rules.threshold) ? state.rules.threshold : null;
    const hysteresis = state.rules && T.isNumber(state.rules.hysteresis_c) ? state.rules.hysteresis_c : null;
    const clear = threshold !== null && hysteresis !== null ? threshold - hysteresis : null;
    ui.chartMax.dataset.threshold = threshold === null ? "" : String(threshold);
    ui.chartMax.dataset.clearBelow = clear === null ? "" : String(clear);
    return [xs.map(() => threshold), xs.map(() => clear)];
  }

  function frameSeries() {
    const frames = [...state.framesById.values()]
      .map((f) => [T.seconds(f.captured_at), f.temp_max])
      .filter(([x, y]) => x !== null && T.isNumber(y))
      .sort((a, b) => a[0] - b[0])
      .slice(-CHART_FRAMES);
    const [xs, ys] = withSummaries(frames, "temp_max", "max"); // the hour's hottest frame
    return [xs, ys, ...limitSeries(xs)];
  }

  function ambientSeries() {
    const points = [...state.ambient.entries()]
      .map(([at, t]) => [T.seconds(at), t])
      .filter(([x, y]) => x !== null && T.isNumber(y))
      .sort((a, b) => a[0] - b[0])
      .slice(-CHART_AMBIENT);
    return withSummaries(points, "ambient", "mean");
  }

  function drawChart(key, container, label, color, data) {
    container.dataset.points = String(data[0].length);
    if (!window.uPlot) {
      T.setText(container, "charts unavailable");
      return;
    }
    if (!data[0].length) {
      if (!charts[key]) T.setText(container, "no data yet");
      return;
    }
    if (!charts[key]) {
      container.textContent = "";
      const options = chartOptions(label, color, container.clientWidth || 300, data.length > 2);
      charts[key] = new window.uPlot(options, data, container);
    } else {
      charts[key].setData(data);
    }
  }

  function drawCharts() {
    chartsScheduled = false;
    drawChart("max", ui.chartMax, "hottest pixel", cssVar("--hot", "#e4572e"), frameSeries());
    drawChart("ambient", ui.chartAmbient, "ambient", cssVar("--cool", "#4ea3e0"), ambientSeries());
  }

  function scheduleCharts() {
    if (chartsScheduled) return;
    chartsScheduled = true;
    window.requestAnimationFrame(drawCharts);
  }

  function resizeCharts() {
    for (const [key, container] of [["max", ui.chartMax], ["ambient", ui.chartAmbient]]) {
      if (charts[key]) charts[key].setSize({ width: container.clientWidth || 300, height: 160 });
    }
    drawHistogram();
  }

  // --- downlinks and the settings form -------------------------------------------------------

  const WORDS = {
    queued: "Queued: The Things Network sends it after the node's next uplink.",
    sent: "Sent to the node; waiting for its acknowledgement.",
    acked: "The node acknowledged it; waiting for it to report the new settings.",
    applied: "Applied: the node reports the new settings.",
    nacked: "The node did not acknowledge it; The Things Network will try again.",
    failed: "Failed: The Things Network gave up sending it.",
    superseded: "Replaced by a newer request.",
  };

  function sentence(text) {
    const trimmed = String(text).trim();
    const capital = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
    return /[.!?]$/.test(capital) ? capital : `${capital}.`;
  }

  function settingsText(settings) {
    if (!settings) return "";
    const parts = [];
    if (settings.fan) parts.push(`fan ${settings.fan}`);
    if (settings.mode) parts.push(`mode ${settings.mode}`);
    if (T.isNumber(settings.step)) parts.push(`step ${settings.step} °C`);
    if (T.isNumber(settings.threshold)) parts.push(`threshold ${settings.threshold} °C`);
    return parts.join(" · ");
  }

  function renderDownlink() {
    const d = state.downlink;
    if (!d) return;
    ui.downlinkStatus.dataset.status = d.status;
    ui.downlinkStatus.dataset.downlinkId = String(d.downlink_id);
    T.setText(ui.downlinkStatus, d.status);
    const words = WORDS[d.status] || d.status;
    // For a setback the server's message says why (e.g. TTN's error); otherwise the words do.
    const why = ["nacked", "failed", "superseded"].includes(d.status) && d.message ? ` ${sentence(d.message)}` : "";
    T.setText(ui.downlinkMessage, `${words}${why}`);
    T.setText(ui.downlinkSettings, `${settingsText(d.settings)}${d.at ? ` · ${T.time(d.at)}` : ""}`);
    const reached = d.status === "nacked" ? 1 : STEPS.indexOf(d.status);
    const bad = ["nacked", "failed", "superseded"].includes(d.status);
    ui.downlinkSteps.dataset.outcome = bad ? d.status : "ok";
    for (const li of ui.downlinkSteps.children) {
      const i = STEPS.indexOf(li.dataset.step);
      li.dataset.state = reached >= 0 && i < reached ? "done" : i === reached ? (bad ? "problem" : "current") : "todo";
    }
  }

  function applyDownlink(downlink) {
    if (downlink.device_id !== deviceId) return;
    // Follow the newest request; events of older ones (superseded, late acks) do not replace it.
    if (state.downlink && downlink.downlink_id < state.downlink.downlink_id) return;
    state.downlink = Object.assign({}, state.downlink && state.downlink.downlink_id === downlink.downlink_id ? state.downlink : {}, downlink);
    renderDownlink();
  }

  function showSettingsError(message) {
    ui.settingsError.hidden = !message;
    T.setText(ui.settingsError, message || "");
  }

  function formRequest() {
    const body = { fan: ui.fanSelect.value, mode: ui.modeSelect.value };
    if (body.mode === "compressed") body.step = Number(ui.stepSelect.value);
    const raw = ui.thresholdInput.value.trim();
    if (raw !== "") {
      const number = Number(raw);
      // Anything that is not a number goes as typed: the API says what is wrong with it.
      body.threshold = Number.isFinite(number) ? number : raw;
    } else if (ui.thresholdInput.validity.badInput) {
      body.threshold = "not a number";
    }
    return body;
  }

  async function submitSettings(event) {
    event.preventDefault();
    showSettingsError(null);
    ui.submit.disabled = true;
    try {
      await T.ensureToken();
      const data = await T.api(`/api/devices/${enc}/settings`, { method: "POST", json: formRequest() });
      state.formTouched = false;
      if (data && data.downlink) {
        applyDownlink(data.downlink);
      } else if (data && data.status === "unchanged") {
        T.setText(ui.downlinkMessage, "Nothing to send: the node already has these settings.");
      }
    } catch (e) {
      showSettingsError(`Not sent: ${e.message}`);
    } finally {
      ui.submit.disabled = false;
    }
  }

  // --- alarm rules ---------------------------------------------------------------------------

  const RULE_KEYS = [
    "open_after_frames", "clear_after_frames", "hysteresis_c", "critical_margin_c",
    "non_uniform_spread_c", "rise_c", "rise_window_s",
  ];

  function renderRules(rules) {
    state.rules = rules;
    for (const key of RULE_KEYS) {
      const input = ui.rulesForm.elements[key];
      input.value = T.isNumber(rules[key]) ? String(rules[key]) : "";
      input.dataset.overridden = rules.overridden.includes(key) ? "true" : "false";
    }
    const changed = rules.overridden.length ? `changed here: ${rules.overridden.join(", ")}` : "the server's rules";
    T.setText(ui.rulesSummary,
      `Threshold ${rules.threshold} °C (a node setting): alarms clear below ${(rules.threshold - rules.hysteresis_c).toFixed(1)} °C, critical above ${(rules.threshold + rules.critical_margin_c).toFixed(1)} °C; ${changed}.`);
    ui.rulesForm.dataset.loaded = "true";
    scheduleCharts();
  }

  async function loadRules() {
    renderRules(await T.api(`/api/devices/${enc}/alarm-rules`));
  }

  async function submitRules(event) {
    event.preventDefault();
    ui.rulesError.hidden = true;
    const body = {};
    for (const key of RULE_KEYS) {
      const raw = ui.rulesForm.elements[key].value.trim();
      const number = Number(raw);
      if (raw === "") {
        if (state.rules && state.rules.overridden.includes(key)) body[key] = null; // back to the server's
      } else if (!state.rules || number !== state.rules[key]) {
        body[key] = Number.isFinite(number) ? number : raw;
      }
    }
    try {
      renderRules(await T.api(`/api/devices/${enc}/alarm-rules`, { method: "PUT", json: body }));
    } catch (e) {
      ui.rulesError.hidden = false;
      T.setText(ui.rulesError, e.message);
    }
  }

  // --- loading -------------------------------------------------------------------------------

  async function loadDevice() {
    try {
      const view = await T.api(`/api/devices/${enc}`);
      applyState(view);
      if (view.ambient) applyAmbient(Object.assign({ device_id: deviceId }, view.ambient));
      for (const alarm of view.alarms || []) applyAlarm(alarm);
      return true;
    } catch (e) {
      if (e.status === 404) {
        T.setText(ui.lastSeen, "No data yet: this node has not sent anything so far.");
        return false;
      }
      throw e;
    }
  }

  async function loadHistory() {
    const [recent, series, ambient, downlinks] = await Promise.all([
      T.api(`/api/devices/${enc}/frames?limit=${HISTORY_SIZE}`),
      T.api(`/api/devices/${enc}/frames?limit=${CHART_FRAMES}`),
      T.api(`/api/devices/${enc}/ambient?limit=${CHART_AMBIENT}`),
      T.api(`/api/devices/${enc}/downlinks?limit=1`),
    ]);
    for (const f of [...series.frames, ...recent.frames]) {
      if (!state.framesById.has(f.frame_id)) state.framesById.set(f.frame_id, f);
    }
    for (const r of ambient.ambient) state.ambient.set(r.at, r.temperature);
    if (downlinks.downlinks.length) applyDownlink(downlinks.downlinks[0]);
    renderHistory();
    scheduleCharts();
    await loadSummaries(series.frames);
  }

  async function loadSummaries(frames) {
    // frames: newest first. Before the oldest of them only hourly summaries may be left.
    const oldest = frames.length ? frames[frames.length - 1].captured_at : null;
    if (!oldest) return;
    const until = Date.parse(oldest);
    const since = new Date(until - SUMMARY_DAYS * 86400e3).toISOString();
    const query = `since=${encodeURIComponent(since)}&until=${encodeURIComponent(oldest)}`;
    const answer = await T.api(
      `/api/devices/${enc}/summaries?${query}&limit=${SUMMARY_DAYS * 24}`,
    );
    state.summaries = answer.summaries;
    if (state.summaries.length) scheduleCharts();
  }

  async function start() {
    await T.ensureToken();
    T.connect({ devices: [deviceId] }, {
      node_state: applyState,
      frame: applyFrame,
      ambient: applyAmbient,
      alarm: applyAlarm,
      downlink: applyDownlink,
      error: (message) => showError(`Live updates: ${message}`),
    });
    try {
      if (await loadDevice()) await Promise.all([loadHistory(), loadRules()]);
    } catch (e) {
      showError(`Could not load this node: ${e.message}`);
    }
  }

  for (const input of [ui.fanSelect, ui.modeSelect, ui.stepSelect, ui.thresholdInput]) {
    input.addEventListener("input", () => {
      state.formTouched = true;
    });
  }
  ui.form.addEventListener("submit", submitSettings);
  ui.rulesForm.addEventListener("submit", submitRules);
  ui.backToLive.addEventListener("click", unpin);
  T.protectDownload(ui.csvFrames);
  T.protectDownload(ui.csvFrame);
  let resizeTimer = null;
  const onResize = () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(resizeCharts, 100);
  };
  if (window.ResizeObserver) {
    const observer = new ResizeObserver(onResize);
    observer.observe(ui.chartMax);
    observer.observe(ui.histogram);
  } else {
    window.addEventListener("resize", onResize);
  }
  drawHistogram();
  start();
})();
