/* The alarms page: history from GET /api/alarms with its filters, acknowledgement with a note
 * (POST /api/alarms/<id>/ack), who acknowledged; refreshed on every live `alarm` event. */
"use strict";

(function () {
  const T = window.Thermal;
  const form = T.$("alarm-filters");
  const list = T.$("alarm-history");
  const count = T.$("alarms-count");
  const errorBox = T.$("alarms-error");
  const NOTE_MAX = 500;

  function showError(message) {
    errorBox.hidden = !message;
    T.setText(errorBox, message || "");
  }

  function query() {
    const params = new URLSearchParams();
    for (const name of ["active", "device", "kind", "severity"]) {
      const value = form.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    for (const name of ["since", "until"]) {
      const value = form.elements[name].value;
      if (value) params.set(name, new Date(value).toISOString());
    }
    params.set("limit", "200");
    return params.toString();
  }

  function ackForm(alarm) {
    const note = T.el("input", {
      name: "note", maxlength: String(NOTE_MAX), placeholder: "note (optional)",
      testid: "ack-note", "aria-label": `Note for alarm ${alarm.alarm_id}`,
    });
    const button = T.el("button", { type: "submit", testid: "ack-button", text: "Acknowledge" });
    const problem = T.el("span", { class: "error", testid: "ack-error", hidden: true });
    const ack = T.el("form", { class: "ack", testid: "ack-form" }, note, button, problem);
    ack.addEventListener("submit", async (event) => {
      event.preventDefault();
      button.disabled = true;
      const text = note.value.trim();
      try {
        await T.api(`/api/alarms/${alarm.alarm_id}/ack`, {
          method: "POST",
          json: text ? { note: text } : {},
        });
        await load();
      } catch (e) {
        problem.hidden = false;
        T.setText(problem, e.message);
        button.disabled = false;
      }
    });
    return ack;
  }

  function row(alarm) {
    const severity = alarm.severity || "warning";
    const when = T.el("p", { class: "muted" },
      "opened ", T.el("time", { datetime: alarm.opened_at, text: T.time(alarm.opened_at) }),
      alarm.cleared_at ? " · cleared " : " · active",
      alarm.cleared_at ? T.el("time", { datetime: alarm.cleared_at, text: T.time(alarm.cleared_at) }) : null);
    const acked = alarm.acked_at
      ? T.el("p", { class: "acked", testid: "acked" },
        `Acknowledged by ${alarm.acked_by || "?"} at ${T.time(alarm.acked_at)}`,
        alarm.note ? T.el("span", { class: "note", testid: "ack-note-shown", text: ` — “${alarm.note}”` }) : null)
      : ackForm(alarm);
    return T.el("li", {
      class: `alarm-row severity-${severity}`,
      testid: "alarm-row",
      data: {
        alarmId: String(alarm.alarm_id), kind: alarm.kind, severity,
        active: alarm.active ? "true" : "false", acked: alarm.acked_at ? "true" : "false",
      },
    },
    T.el("p", {},
      T.el("span", { class: `severity ${severity}`, text: severity }), " ",
      T.el("a", { href: `/devices/${encodeURIComponent(alarm.device_id)}`, text: alarm.device_id }), " ",
      T.el("span", { text: T.alarmText(alarm) })),
    when,
    acked);
  }

  let loading = null;
  let again = false;

  /** Fetch and show the list; a call while one runs makes it run once more afterwards. */
  async function load() {
    if (loading) {
      again = true;
      return loading;
    }
    loading = (async () => {
      try {
        const data = await T.api(`/api/alarms?${query()}`);
        list.replaceChildren(...data.alarms.map(row));
        T.setText(count, data.alarms.length ? `${data.alarms.length} alarm(s), newest first` : "No alarm matches.");
        list.dataset.loaded = String(Date.now());
        showError(null);
      } catch (e) {
        showError(`Could not load the alarms: ${e.message}`);
      }
    })();
    await loading;
    loading = null;
    if (again) {
      again = false;
      await load();
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });

  T.ensureToken().then(() => {
    load();
    T.connect({ devices: "*" }, {
      alarm: () => load(),
      error: (message) => showError(`Live updates: ${message}`),
    });
  });
})();
