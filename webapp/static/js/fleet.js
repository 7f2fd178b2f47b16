/* The fleet page: a card per node, kept live by the `subscribe {"devices": "*"}` stream.
 * Initial list from GET /api/devices; thumbnails from the `frame` events' PNG attachments. */
"use strict";

(function () {
  const T = window.Thermal;
  const SORT_KEY = "thermal.fleet.sort";

  const cardsList = T.$("cards");
  const sortSelect = T.$("sort");
  const summary = T.$("summary");
  const empty = T.$("fleet-empty");
  const errorBox = T.$("fleet-error");
  const activeSection = T.$("active-alarms");
  const activeList = T.$("active-alarm-list");

  /** device_id -> {state, frame, ambient, alarms: Map(kind -> alarm), card: {...elements}} */
  const nodes = new Map();

  function nodeFor(deviceId) {
    let node = nodes.get(deviceId);
    if (!node) {
      node = { id: deviceId, state: null, frame: null, ambient: null, alarms: new Map() };
      node.card = buildCard(deviceId);
      nodes.set(deviceId, node);
      cardsList.append(node.card.root);
      empty.hidden = true;
    }
    return node;
  }

  function buildCard(deviceId) {
    const c = {};
    c.name = T.el("h2", { class: "card-name", text: deviceId });
    c.badge = T.el("span", { class: "badge", testid: "online-badge", data: { online: "unknown" }, text: "unknown" });
    c.thumb = T.el("img", { class: "thumb", testid: "thumb", alt: `Latest heatmap of ${deviceId}`, hidden: true });
    c.placeholder = T.el("span", { class: "placeholder", text: "no data yet" });
    c.tempMax = T.el("span", { class: "big", testid: "temp-max", text: "—" });
    c.frameTime = T.el("time", { testid: "frame-time", text: "—" });
    c.fan = T.el("dd", { testid: "fan", text: "—" });
    c.mode = T.el("dd", { testid: "mode", text: "—" });
    c.ambient = T.el("dd", { testid: "ambient", text: "—" });
    c.pending = T.el("p", { class: "pending", testid: "pending", hidden: true });
    c.alarms = T.el("ul", { class: "alarms", testid: "alarms" });
    const link = T.el(
      "a",
      { class: "card", href: `/devices/${encodeURIComponent(deviceId)}` },
      T.el("div", { class: "card-head" }, c.name, c.badge),
      T.el("div", { class: "thumb-wrap" }, c.thumb, c.placeholder),
      T.el("p", { class: "card-temp" }, c.tempMax, T.el("span", { class: "muted", text: "hottest pixel" })),
      T.el(
        "dl",
        { class: "facts" },
        T.el("div", {}, T.el("dt", { text: "Frame" }), T.el("dd", {}, c.frameTime)),
        T.el("div", {}, T.el("dt", { text: "Ambient" }), c.ambient),
        T.el("div", {}, T.el("dt", { text: "Fan" }), c.fan),
        T.el("div", {}, T.el("dt", { text: "Mode" }), c.mode),
      ),
      c.pending,
      c.alarms,
    );
    c.root = T.el("li", { testid: `device-card-${deviceId}`, data: { deviceId } }, link);
    return c;
  }

  // --- rendering -----------------------------------------------------------------------------

  function renderState(node) {
    const s = node.state;
    const c = node.card;
    if (!s) return;
    const online = s.online ? "online" : "offline";
    c.badge.dataset.online = online;
    T.setText(c.badge, online);
    let fan = s.fan || "—";
    if (s.fan_requested && s.fan && s.fan_requested !== s.fan) fan = `${s.fan} (→ ${s.fan_requested})`;
    T.setText(c.fan, fan);
    T.setText(c.mode, s.mode || (node.frame && node.frame.mode) || "—");
    c.pending.hidden = !s.pending_downlink;
    T.setText(c.pending, "A settings change is on its way to the node");
  }

  function renderFrame(node) {
    const f = node.frame;
    const c = node.card;
    if (!f) return;
    T.setText(c.tempMax, T.temp(f.temp_max));
    if (!node.state || !node.state.mode) T.setText(c.mode, f.mode || "—");
    T.setTime(c.frameTime, f.captured_at);
    c.thumb.dataset.frameId = String(f.frame_id);
    c.root.dataset.frameId = String(f.frame_id);
    c.root.dataset.complete = f.complete ? "true" : "false";
  }

  function renderAmbient(node) {
    T.setText(node.card.ambient, node.ambient ? T.temp(node.ambient.temperature) : "—");
  }

  function renderAlarms(node) {
    const c = node.card;
    c.alarms.replaceChildren(...[...node.alarms.values()].sort(T.byUrgency).map((a) => T.alarmItem(a, false)));
    c.root.dataset.alarms = String(node.alarms.size);
    renderActiveAlarms();
  }

  /** Every active alarm of the fleet at the top of the page, critical first. */
  function renderActiveAlarms() {
    const all = [...nodes.values()].flatMap((n) => [...n.alarms.values()]).sort(T.byUrgency);
    activeList.replaceChildren(...all.map((a) => T.alarmItem(a, true)));
    activeSection.hidden = all.length === 0;
    activeSection.dataset.count = String(all.length);
    activeSection.dataset.critical = String(all.filter((a) => a.severity === "critical").length);
  }

  function hottest(node) {
    return node.frame && T.isNumber(node.frame.temp_max) ? node.frame.temp_max : -Infinity;
  }

  function sortCards() {
    const byName = (a, b) => a.id.localeCompare(b.id, undefined, { numeric: true });
    const order = [...nodes.values()];
    order.sort(sortSelect.value === "name" ? byName : (a, b) => hottest(b) - hottest(a) || byName(a, b));
    order.forEach((node, i) => {
      if (cardsList.children[i] !== node.card.root) cardsList.insertBefore(node.card.root, cardsList.children[i] || null);
    });
  }

  function renderSummary() {
    const all = [...nodes.values()];
    const offline = all.filter((n) => n.state && !n.state.online).length;
    const alarms = all.reduce((sum, n) => sum + n.alarms.size, 0);
    const parts = [`${all.length} node${all.length === 1 ? "" : "s"}`];
    if (offline) parts.push(`${offline} offline`);
    parts.push(alarms ? `${alarms} active alarm${alarms === 1 ? "" : "s"}` : "no active alarms");
    T.setText(summary, all.length ? parts.join(" · ") : "");
  }

  let scheduled = false;
  /** Sorting and the summary once per animation frame, however many events arrive. */
  function refresh() {
    if (scheduled) return;
    scheduled = true;
    window.requestAnimationFrame(() => {
      scheduled = false;
      sortCards();
      renderSummary();
    });
  }

  function showError(message) {
    errorBox.hidden = !message;
    T.setText(errorBox, message || "");
  }

  // --- data ----------------------------------------------------------------------------------

  function newer(current, incoming, key) {
    return !current || !current[key] || !incoming[key] || incoming[key] >= current[key];
  }

  function applyState(state) {
    const node = nodeFor(state.device_id);
    node.state = Object.assign({}, node.state, state);
    renderState(node);
    refresh();
  }

  function applyFrame(frame) {
    const node = nodeFor(frame.device_id);
    // A late partial update of an older frame must not replace a newer frame.
    if (node.frame && frame.frame_id < node.frame.frame_id) return;
    node.frame = frame;
    if (T.showPng(node.card.thumb, frame.image)) {
      node.card.thumb.hidden = false;
      node.card.placeholder.hidden = true;
    }
    renderFrame(node);
    refresh();
  }

  function applyAmbient(reading) {
    const node = nodeFor(reading.device_id);
    if (!newer(node.ambient, reading, "at")) return;
    node.ambient = reading;
    renderAmbient(node);
  }

  function applyAlarm(alarm) {
    const node = nodeFor(alarm.device_id);
    if (alarm.active) node.alarms.set(alarm.kind, alarm);
    else if (node.alarms.has(alarm.kind) && node.alarms.get(alarm.kind).alarm_id === alarm.alarm_id) {
      node.alarms.delete(alarm.kind);
    }
    renderAlarms(node);
    refresh();
  }

  function applyDownlink(downlink) {
    const node = nodeFor(downlink.device_id);
    if (!node.state) return;
    const pending = ["queued", "sent", "acked", "nacked"].includes(downlink.status);
    if (pending) node.state.pending_downlink = downlink.downlink_id;
    else if (node.state.pending_downlink === downlink.downlink_id) node.state.pending_downlink = null;
    renderState(node);
  }

  async function loadDevices() {
    const data = await T.api("/api/devices");
    for (const view of data.devices || []) {
      const node = nodeFor(view.device_id);
      applyState(view);
      if (view.latest_frame && (!node.frame || view.latest_frame.frame_id > node.frame.frame_id)) {
        // The thumbnail itself comes with the socket's snapshot.
        node.frame = view.latest_frame;
        renderFrame(node);
      }
      if (view.ambient) applyAmbient(Object.assign({ device_id: view.device_id }, view.ambient));
      for (const alarm of view.alarms || []) applyAlarm(alarm);
    }
    refresh();
  }

  // --- start ---------------------------------------------------------------------------------

  try {
    const saved = window.localStorage.getItem(SORT_KEY);
    if (saved === "name" || saved === "hottest") sortSelect.value = saved;
  } catch (e) {
    // no storage: default order
  }
  sortSelect.addEventListener("change", () => {
    try {
      window.localStorage.setItem(SORT_KEY, sortSelect.value);
    } catch (e) {
      // not remembered
    }
    sortCards();
  });

  T.ensureToken().then(() => {
    loadDevices().catch((e) => showError(`Could not load the node list: ${e.message}`));
    T.connect({ devices: "*" }, {
      node_state: applyState,
      frame: applyFrame,
      ambient: applyAmbient,
      alarm: applyAlarm,
      downlink: applyDownlink,
      error: (message) => showError(`Live updates: ${message}`),
    });
  });
})();
