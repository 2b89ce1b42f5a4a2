// twelvefactor fleet console: a static client of the operator API (docs/console.md).
// The token from POST /login is kept in sessionStorage and sent as a bearer header on every
// call; the API decides what the operator may do, the page only hides what it would refuse.
// Everything is built with DOM calls (never innerHTML): text from devices stays text.

const TOKEN = "twelvefactor.token";
const ROLES = ["viewer", "operator", "admin"];
const FINAL = new Set(["succeeded", "failed", "rolled_back"]);
const ENDED_ROLLOUT = new Set(["finished", "aborted", "cancelled"]);

const state = { who: null, cursor: null, feed: null, page: null, recent: [] };

// -- small helpers ---------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function when(ts) {
  if (ts === null || ts === undefined) return "—";
  return new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function fixed(x, digits = 2) {
  return x === null || x === undefined ? "—" : Number(x).toFixed(digits);
}

// A device's job: downloading and installing repeat with a percent (docs/protocol.md), shown
// as a bar; an ended job shows its state alone.
function jobMoves(d) {
  return d.percent !== null && d.percent !== undefined && !FINAL.has(d.state);
}

function jobCell(d) {
  if (!jobMoves(d)) return h("td", { class: d.state, text: d.state });
  return h("td", { class: d.state, "data-percent": d.percent }, `${d.state} `, h("progress", { max: 100, value: d.percent }), ` ${d.percent} %`);
}

// Which artifact the device is on (delta or full, docs/updates.md), and why it gave a
// delta up for the full .swu.
function jobPath(d) {
  if (!d.path) return "";
  return d.fallback ? `${d.path} (the delta was given up: ${d.fallback})` : d.path;
}

// Progress reports are not events (one per few percent per device would flood the feed):
// a page showing a job under way looks again every few seconds.
const MOVING_REFRESH = 3000;

function movingJobs(rows) {
  return rows.some(jobMoves);
}

function may(role) {
  return state.who !== null && ROLES.indexOf(state.who.role) >= ROLES.indexOf(role);
}

function reasons(e) {
  // the service's words when it answered with some, else what went wrong
  return e.problems && e.problems.length ? e.problems : [e.message];
}

function status(text) {
  document.getElementById("status").textContent = text || "";
}

// -- the API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(statusCode, body) {
    const said = [].concat((body && (body.problems || [body.message || body.error])) || []);
    super(`${statusCode}: ${said.join("; ")}`);
    this.status = statusCode;
    this.body = body;
    this.problems = said; // the service's reasons, verbatim
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN);
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, cache: "no-store" };
  if (body instanceof Blob) {
    // a .swu upload: the bytes as they are, as the CLI sends them
    headers["Content-Type"] = "application/octet-stream";
    init.body = body;
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const answer = await resp.json().catch(() => null);
  if (resp.status === 401 && path !== "/login") {
    sessionStorage.removeItem(TOKEN);
    state.who = null;
    location.hash = "#/login";
    throw new ApiError(401, answer);
  }
  if (!resp.ok) throw new ApiError(resp.status, answer);
  return answer;
}

// -- the live feed: GET /events long-polls; each batch refreshes the page shown ------------

async function poll() {
  const q = state.cursor === null ? "/events" : `/events?after=${state.cursor}`;
  const got = await api("GET", q);
  const first = state.cursor === null;
  state.cursor = got.next;
  state.recent = state.recent.concat(got.events).slice(-50);
  return first ? [] : got.events;
}

async function follow(mine) {
  while (state.feed === mine && sessionStorage.getItem(TOKEN)) {
    try {
      const events = await poll();
      if (state.feed !== mine) return;
      if (events.length && state.page && state.page.onEvents) state.page.onEvents(events);
    } catch (err) {
      if (err.status === 401) return;
      await new Promise((r) => setTimeout(r, 2000)); // the service restarting: try again
    }
  }
}

// online, asleep (until its announced check-in), overdue (missed it), offline
// enrolled and never seen: presence null (the overview counts it apart, the State filter
// "offline" does not find it)
function presenceOf(d) {
  return d.presence || "never-seen";
}

function describe(e) {
  switch (e.kind) {
    case "online":
    case "offline":
      return `${e.device} ${e.kind}${e.reason ? ` (${e.reason})` : ""}`;
    case "job":
      return `${e.device} job ${e.job}: ${e.state}${e.reason ? ` (${e.reason})` : ""}`;
    case "config":
      return `${e.device} configuration ${e.version}: ${e.state}${e.reason ? ` (${e.reason})` : ""}`;
    case "rollout":
      return `rollout ${e.rollout}: ${e.state}${e.reason ? ` (${e.reason})` : ""}`;
    case "audit":
      return `${e.operator || "-"}: ${e.method} ${e.path} → ${e.status}`;
    default:
      return e.kind;
  }
}

function eventList(events) {
  return h(
    "table",
    { id: "events" },
    h("tr", {}, h("th", { text: "time" }), h("th", { text: "event" })),
    events
      .slice()
      .reverse()
      .map((e) => h("tr", { "data-kind": e.kind }, h("td", { text: when(e.ts) }), h("td", { text: describe(e) }))),
  );
}

// -- pages -------------------------------------------------------------------------------

function loginPage(main) {
  document.getElementById("top").hidden = true;
  const err = h("p", { class: "error", id: "login-error" });
  const form = h(
    "form",
    { class: "card login", id: "login" },
    h("h1", { text: "Fleet console" }),
    h("label", {}, "Name", h("input", { name: "name", id: "login-name", autocomplete: "username", required: true })),
    h(
      "label",
      {},
      "Password",
      h("input", { name: "password", id: "login-password", type: "password", autocomplete: "current-password", required: true }),
    ),
    h("button", { type: "submit", id: "login-submit", text: "Log in" }),
    err,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    try {
      const made = await api("POST", "/login", { name: form.elements.name.value, password: form.elements.password.value });
      sessionStorage.setItem(TOKEN, made.token);
      await start();
      if (location.hash === "#/overview") render();
      else location.hash = "#/overview";
    } catch (e) {
      err.textContent = e.status === 401 ? "Wrong name or password." : e.message;
    }
  });
  main.append(form);
}

async function overviewPage(main) {
  // the service counts (GET /fleet): a fleet of thousands is never fetched whole
  const [fleet, jobs] = await Promise.all([api("GET", "/fleet"), api("GET", "/jobs")]);
  const updating = new Set();
  let failed = 0;
  for (const job of jobs) {
    for (const d of job.devices) {
      if (!FINAL.has(d.state)) updating.add(d.device);
      if (d.state === "failed" || d.state === "rolled_back") failed += 1;
    }
  }
  const count = (id, label, n) => h("div", { class: "count", id }, h("b", { text: n }), label);
  main.append(
    h("h1", { text: "Overview" }),
    h(
      "div",
      { class: "counts" },
      ["online", "asleep", "overdue", "offline"].map((p) => count(`count-${p}`, p, fleet.presence[p])),
      count("count-never-seen", "never seen (enrolled)", fleet.presence.never_seen),
      count("count-updating", "updating", updating.size),
      count("count-failed", "failed (jobs)", failed),
    ),
    h("h2", { text: "Versions in the field" }),
    h(
      "table",
      { id: "versions" },
      h("tr", {}, h("th", { text: "version" }), h("th", { text: "devices" })),
      fleet.versions.map((v) =>
        h("tr", {}, h("td", {}, h("a", { href: `#/devices?version=${encodeURIComponent(v.version ?? "unknown")}`, text: v.version ?? "unknown" })), h("td", { text: v.devices })),
      ),
    ),
    h("h2", { text: "Recent events" }),
    eventList(state.recent.slice(-20)),
  );
  return { onEvents: () => render() };
}

// The devices page asks the service for one page at a time, filtered there (GET /devices:
// keyset pages in id order); "more" fetches the next page after the last row shown.
const DEVICE_PAGE = 100;
const DEVICE_PAGE_MAX = 1000; // the most GET /devices gives at once

async function devicesPage(main) {
  const [fleet, groups] = await Promise.all([api("GET", "/fleet"), api("GET", "/groups")]);
  const options = (values) => [h("option", { value: "", text: "all" }), ...values.map((v) => h("option", { value: v, text: v }))];
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const search = h("input", { id: "device-search", type: "search", placeholder: "search id", value: params.get("q") || "" });
  const group = h("select", { id: "filter-group" }, options(groups.map((g) => g.name).sort()));
  const tag = h("select", { id: "filter-tag" }, options(fleet.tags));
  const version = h("select", { id: "filter-version" }, options(fleet.versions.map((v) => v.version ?? "unknown")));
  const online = h("select", { id: "filter-online" }, options(["online", "asleep", "overdue", "offline"]));
  for (const [el, name] of [[group, "group"], [tag, "tag"], [version, "version"], [online, "presence"]]) el.value = params.get(name) || "";
  const body = h("tbody");
  const more = h("button", { id: "devices-more", type: "button", hidden: true, "data-reads": true, text: "more" });
  const shownCount = h("p", { class: "muted", id: "devices-shown" });
  let rows = [];
  let asked = 0; // which request is the latest: an older answer arriving late is dropped
  const query = (limit, after) => {
    const q = new URLSearchParams({ limit: String(limit) });
    if (after) q.set("after", after);
    const typed = search.value.trim().toLowerCase();
    if (typed) q.set("q", typed);
    for (const [el, name] of [[group, "group"], [tag, "tag"], [version, "version"], [online, "presence"]]) if (el.value) q.set(name, el.value);
    return `/devices?${q}`;
  };
  const draw = () => {
    body.replaceChildren(
      ...rows.map((d) => {
        const st = presenceOf(d);
        return h(
          "tr",
          { "data-device": d.id },
          h("td", {}, h("a", { href: `#/device/${d.id}`, text: d.id })),
          h("td", { class: st, text: d.retired ? "retired" : st.replace("-", " ") }),
          h("td", { text: d.group || "" }),
          h("td", { text: d.tags.join(", ") }),
          h("td", { text: d.os_version || "" }),
          h("td", { text: when(d.last_online_change) }),
        );
      }),
    );
    shownCount.textContent = `${rows.length} shown`;
  };
  // the first `limit` matching devices again (a filter changed, or the fleet did)
  const load = async (limit) => {
    const mine = ++asked;
    let page;
    try {
      page = await api("GET", query(limit));
    } catch (e) {
      if (e.status !== 400) throw e;
      page = []; // a search no id can match (e.g. a character ids never hold)
    }
    if (mine !== asked) return;
    rows = page;
    more.hidden = page.length < limit;
    draw();
  };
  more.addEventListener("click", async () => {
    const mine = ++asked;
    const page = await api("GET", query(DEVICE_PAGE, rows.length ? rows[rows.length - 1].id : null));
    if (mine !== asked) return;
    rows = rows.concat(page);
    more.hidden = page.length < DEVICE_PAGE;
    draw();
  });
  for (const el of [search, group, tag, version, online]) el.addEventListener("input", () => load(DEVICE_PAGE));
  main.append(
    h("h1", { text: "Devices" }),
    h(
      "div",
      { class: "filters" },
      h("label", {}, "Search ", search),
      h("label", {}, "Group ", group),
      h("label", {}, "Tag ", tag),
      h("label", {}, "Version ", version),
      h("label", {}, "State ", online),
    ),
    h(
      "table",
      { id: "devices" },
      h("thead", {}, h("tr", {}, ["device", "state", "group", "tags", "version", "since"].map((t) => h("th", { text: t })))),
      body,
    ),
    shownCount,
    more,
  );
  await load(DEVICE_PAGE);
  return {
    // keep the filters and as many rows as are shown: fetch them again, redraw the rows only
    onEvents: async (events) => {
      if (!events.some((e) => e.device)) return;
      await load(Math.min(DEVICE_PAGE_MAX, Math.max(DEVICE_PAGE, rows.length)));
    },
  };
}

const CHARTS = [
  ["load1", "Load (1 min)", (s) => s.load1, (v) => fixed(v)],
  ["memory", "Memory available (MiB)", (s) => (s.memory_available_kb === null ? null : s.memory_available_kb / 1024), (v) => fixed(v, 1)],
  ["data", "Data partition free (MiB)", (s) => (s.data_free_bytes === null ? null : s.data_free_bytes / 1048576), (v) => fixed(v, 1)],
  ["queue", "Queue depth", (s) => s.queue_depth, (v) => fixed(v, 0)],
  ["dropped", "Queue dropped", (s) => s.queue_dropped, (v) => fixed(v, 0)],
];

function drawCharts(box, series) {
  box.replaceChildren();
  const xs = series.map((s) => s.ts);
  for (const [key, title, pick, format] of CHARTS) {
    const ys = series.map(pick);
    const last = ys.length ? ys[ys.length - 1] : null;
    const holder = h("div", { class: "chart-canvas" });
    box.append(
      h(
        "div",
        { class: "chart", id: `chart-${key}`, "data-points": ys.length },
        h("h3", {}, title, ": ", h("span", { class: "latest", id: `latest-${key}`, text: format(last) })),
        holder,
      ),
    );
    // eslint-disable-next-line no-undef
    new uPlot(
      {
        width: 360,
        height: 160,
        legend: { show: false },
        scales: { x: { time: true } },
        axes: [{}, { size: 72 }], // room for values such as 23380.8
        series: [{}, { label: title, stroke: "#2f5bd3", width: 2, fill: "rgba(47,91,211,0.08)" }],
      },
      [xs, ys],
      holder,
    );
  }
}

async function devicePage(main, id) {
  const [device, historyRows, series, jobs] = await Promise.all([
    api("GET", `/devices/${id}`),
    api("GET", `/devices/${id}/history?limit=50`),
    api("GET", `/devices/${id}/health`),
    api("GET", "/jobs"),
  ]);
  let config = null;
  try {
    config = await api("GET", `/devices/${id}/config`);
  } catch (e) {
    if (e.status !== 404) throw e;
  }
  const meta = device.meta || {};
  const health = device.health || {};
  const boot = meta.boot || {};
  const fact = (k, v) => [h("dt", { text: k }), h("dd", { text: v === null || v === undefined || v === "" ? "—" : v })];
  const charts = h("div", { class: "charts", id: "charts" });
  main.append(
    h(
      "h1",
      {},
      `Device ${device.id} `,
      h("span", { class: presenceOf(device), id: "device-state", text: presenceOf(device).replace("-", " ") }),
      device.next_checkin && presenceOf(device) !== "online"
        ? h("small", { id: "next-checkin", text: ` next check-in by ${when(device.next_checkin)}` })
        : "",
    ),
    h(
      "div",
      { class: "card" },
      h(
        "dl",
        { class: "facts", id: "identity" },
        fact("first seen", when(device.first_seen)),
        fact("enrolled", when(device.enrolled)),
        fact("tags", device.tags.join(", ")),
        fact("hardware", device.hardware ? `${device.hardware.board} ${device.hardware.revision}` : meta.hardware),
        fact("machine", meta.machine),
        fact("kernel", meta.kernel),
        fact("slot", health.slot || meta.slot),
        fact("boot", boot.slot ? `slot ${boot.slot}, bootcount ${boot.bootcount}${boot.rollback ? `, fell back from ${boot.rollback}` : ""}` : null),
        fact("OS version", health.os_version || (meta.os && meta.os.version)),
        fact("agent version", health.agent_version || meta.agent_version),
        fact("last health report", when(device.health_ts)),
        fact("retired", device.retired ? when(device.retired.at) : null),
      ),
    ),
    h("h2", { text: "Health" }),
    charts,
    h("h2", { text: "Configuration" }),
    config === null
      ? h("p", { class: "muted", text: "No configuration set." })
      : h(
          "div",
          { class: "card", id: "config" },
          h(
            "dl",
            { class: "facts" },
            fact("group", config.group),
            fact("desired version", config.version),
            fact("reported", config.reported ? `version ${config.reported.version}: ${config.reported.status}${config.reported.error ? ` (${config.reported.error})` : ""}` : "nothing yet"),
          ),
          h("h3", { text: "Desired" }),
          h("pre", { text: JSON.stringify(config.desired, null, 2) }),
        ),
    h("p", {}, h("a", { href: `#/config/device/${id}`, id: "device-config-link", text: "The device's own configuration" })),
    h("h2", { text: "Online history" }),
    h(
      "table",
      { id: "history" },
      h("tr", {}, h("th", { text: "time" }), h("th", { text: "state" }), h("th", { text: "reason" })),
      historyRows
        .slice()
        .reverse()
        .map((r) => h("tr", {}, h("td", { text: when(r.ts) }), h("td", { class: r.online ? "online" : "offline", text: r.online ? "online" : "offline" }), h("td", { text: r.reason || "" }))),
    ),
    h("h2", { text: "Jobs" }),
    h(
      "table",
      { id: "device-jobs" },
      h("tr", {}, ["job", "artifact", "state", "by", "reason", "updated"].map((t) => h("th", { text: t }))),
      jobs.flatMap((j) =>
        j.devices
          .filter((d) => d.device === id)
          .map((d) => h("tr", {}, h("td", { text: j.id }), h("td", { text: j.artifact.slice(0, 12) }), jobCell(d), h("td", { class: "path", text: jobPath(d) }), h("td", { text: d.reason || "" }), h("td", { text: when(d.updated) }))),
      ),
    ),
  );
  drawCharts(charts, series);
  const page = {
    onEvents: async (events) => {
      if (events.some((e) => e.device === id)) render();
    },
    // health reports are not events: the charts look again every 10 s (and the whole page
    // every few seconds while one of its jobs moves)
    timer: movingJobs(jobs.flatMap((j) => j.devices.filter((d) => d.device === id)))
      ? setInterval(render, MOVING_REFRESH)
      : setInterval(async () => {
          try {
            drawCharts(charts, await api("GET", `/devices/${id}/health`));
          } catch (e) {
            status(e.message);
          }
        }, 10000),
  };
  return page;
}

function progressOf(phase) {
  const ended = (phase.succeeded || 0) + (phase.failed || 0) + (phase.rolled_back || 0) + (phase.skipped || 0);
  return phase.size ? Math.round((100 * ended) / phase.size) : 100;
}

function phasesFrom(text) {
  return text
    .split(",")
    .map((p) => p.trim())
    .filter((p) => p)
    .map((p) => (p.endsWith("%") ? { percent: Number(p.slice(0, -1)) } : { count: Number(p) }));
}

async function rolloutsPage(main) {
  const rollouts = await api("GET", "/rollouts");
  main.append(
    h("h1", { text: "Rollouts" }),
    h(
      "table",
      { id: "rollouts" },
      h("tr", {}, ["rollout", "state", "phase", "progress", "created"].map((t) => h("th", { text: t }))),
      rollouts
        .slice()
        .reverse()
        .map((r) => {
          const size = r.phase_progress.reduce((a, p) => a + p.size, 0);
          const ok = r.phase_progress.reduce((a, p) => a + (p.succeeded || 0), 0);
          return h(
            "tr",
            { "data-rollout": r.id },
            h("td", {}, h("a", { href: `#/rollout/${r.id}`, text: r.id })),
            h("td", { class: r.state, text: r.reason ? `${r.state}: ${r.reason}` : r.state }),
            h("td", { text: `${r.phase} of ${r.phase_progress.length}` }),
            h("td", { text: `${ok}/${size} succeeded` }),
            h("td", { text: `${when(r.created)} by ${r.created_by || "—"}` }),
          );
        }),
    ),
  );
  if (may("operator")) main.append(await rolloutForm());
  return { onEvents: (events) => events.some((e) => e.kind === "rollout") && render() };
}

async function rolloutForm() {
  const [artifacts, groups] = await Promise.all([api("GET", "/artifacts"), api("GET", "/groups")]);
  const err = h("p", { class: "error", id: "rollout-error" });
  const input = (name, attrs = {}) => h("input", { name, id: `rollout-${name}`, ...attrs });
  const form = h(
    "form",
    { class: "card", id: "rollout-form", "data-needs": "operator" },
    h("h2", { text: "New rollout" }),
    h(
      "label",
      {},
      "Artifact",
      h("select", { name: "artifact", id: "rollout-artifact", required: true }, artifacts.map((a) => h("option", { value: a.sha256, text: `${a.version} (${a.sha256.slice(0, 12)})` }))),
    ),
    h(
      "label",
      {},
      "Target",
      h(
        "select",
        { name: "target", id: "rollout-target" },
        h("option", { value: "group", text: "a group" }),
        h("option", { value: "devices", text: "devices" }),
        h("option", { value: "tags", text: "devices with tags" }),
      ),
    ),
    h("label", {}, "Group", h("select", { name: "group", id: "rollout-group" }, groups.map((g) => h("option", { value: g.name, text: g.name })))),
    h("label", {}, "Devices or tags (comma-separated)", input("list", { placeholder: "dev-001, dev-002" })),
    h("label", {}, "Phases (counts or percents, comma-separated)", input("phases", { value: "100%" })),
    h("label", {}, "Success % to start the next phase", input("success", { type: "number", min: 0, max: 100, value: 100 })),
    h("label", {}, "Error % that stops it", input("error", { type: "number", min: 0, max: 100, value: 20 })),
    h(
      "label",
      {},
      "On error",
      h("select", { name: "on_error", id: "rollout-on_error" }, h("option", { value: "pause", text: "pause" }), h("option", { value: "abort", text: "abort" })),
    ),
    h("label", {}, input("download_only", { type: "checkbox" }), " download only (install on the go)"),
    h("button", { type: "submit", id: "rollout-create", text: "Create rollout" }),
    err,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    const f = form.elements;
    const spec = {
      artifact: f.artifact.value,
      phases: phasesFrom(f.phases.value),
      success_percent: Number(f.success.value),
      error_percent: Number(f.error.value),
      on_error: f.on_error.value,
      download_only: f.download_only.checked,
    };
    const list = f.list.value
      .split(",")
      .map((s) => s.trim())
      .filter((s) => s);
    if (f.target.value === "group") spec.group = f.group.value;
    else spec[f.target.value] = list;
    try {
      const made = await api("POST", "/rollouts", spec);
      location.hash = `#/rollout/${made.id}`;
    } catch (e) {
      err.textContent = e.message;
    }
  });
  return form;
}

async function rolloutPage(main, id) {
  const r = await api("GET", `/rollouts/${id}`);
  const control = (action, label, enabled) =>
    h("button", {
      type: "button",
      id: `rollout-${action}`,
      "data-needs": "operator",
      class: "secondary",
      disabled: !enabled,
      text: label,
      onclick: async () => {
        try {
          await api("POST", `/rollouts/${id}/${action}`, {});
          render();
        } catch (e) {
          status(e.message);
        }
      },
    });
  const ended = ENDED_ROLLOUT.has(r.state);
  main.append(
    h("h1", {}, `Rollout ${r.id} `, h("span", { class: r.state, id: "rollout-state", text: r.state })),
    h("p", { id: "rollout-reason", text: r.reason || "" }),
    h("p", { class: "muted", text: `artifact ${String(r.artifact).slice(0, 12)}; created ${when(r.created)} by ${r.created_by || "—"}${r.download_only ? "; download only" : ""}` }),
    may("operator")
      ? h(
          "div",
          { class: "actions" },
          control("pause", "Pause", !ended && r.state !== "paused"),
          control("resume", "Resume", r.state === "paused"),
          control("cancel", "Cancel", !ended),
          r.download_only ? control("install", "Install (go)", !ended && !r.go) : null,
        )
      : "", // (the element's own append writes null as the text "null")
    h("h2", { text: "Phases" }),
    h(
      "div",
      { id: "phases" },
      r.phase_progress.map((p) => {
        const pct = progressOf(p);
        return h(
          "div",
          { class: "phase", "data-phase": p.phase, "data-percent": pct },
          h("span", { text: `phase ${p.phase} (${p.size})` }),
          h("progress", { max: 100, value: pct }),
          h("span", { class: "pct", text: `${pct} %` }),
        );
      }),
    ),
    h("h2", { text: "Devices" }),
    h(
      "table",
      { id: "rollout-devices" },
      h("tr", {}, ["device", "phase", "job", "state", "reason"].map((t) => h("th", { text: t }))),
      r.devices.map((d) =>
        h("tr", { "data-device": d.device }, h("td", {}, h("a", { href: `#/device/${d.device}`, text: d.device })), h("td", { text: d.phase }), h("td", { text: d.job || "" }), jobCell(d), h("td", { text: d.reason || "" })),
      ),
    ),
    h("h2", { text: "Events" }),
    h(
      "table",
      {},
      r.events.map((e) => h("tr", {}, h("td", { text: when(e.ts) }), h("td", { text: e.state }), h("td", { text: e.reason || "" }))),
    ),
  );
  const mine = new Set(r.devices.map((d) => d.device));
  return {
    onEvents: (events) => events.some((e) => e.rollout === id || mine.has(e.device)) && render(),
    timer: movingJobs(r.devices) ? setInterval(render, MOVING_REFRESH) : null,
  };
}

async function auditPage(main) {
  const entries = await api("GET", "/audit?limit=200");
  main.append(
    h("h1", { text: "Audit log" }),
    h(
      "table",
      { id: "audit" },
      h("tr", {}, ["time", "operator", "request", "status", "detail"].map((t) => h("th", { text: t }))),
      entries.map((e) =>
        h("tr", {}, h("td", { text: when(e.ts) }), h("td", { text: e.operator || "—" }), h("td", { text: `${e.method} ${e.path}` }), h("td", { class: e.status >= 400 ? "error" : "", text: e.status }), h("td", {}, h("pre", { text: e.detail === null ? "" : JSON.stringify(e.detail) }))),
      ),
    ),
  );
  return { onEvents: (events) => events.some((e) => e.kind === "audit") && render() };
}

// -- artifacts ------------------------------------------------------------------------------

function size(n) {
  if (n >= 1048576) return `${(n / 1048576).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

function hardwareText(hw) {
  return Object.entries(hw)
    .map(([board, revs]) => `${board || "any board"}: ${revs.join(", ")}`)
    .join("; ");
}

function usersText(users) {
  return users.length ? users.map((u) => `${u.kind} ${u.id} (${u.state})`).join(", ") : "—";
}

function artifactRows(body, artifacts) {
  body.replaceChildren(
    ...artifacts
      .slice()
      .reverse()
      .map((a) =>
        h(
          "tr",
          { "data-artifact": a.sha256, "data-used": a.used_by.length ? "yes" : "no" },
          h("td", {}, h("a", { href: `#/artifact/${a.sha256}`, class: "mono", text: a.sha256.slice(0, 12) })),
          h("td", { text: a.version }),
          h("td", { text: size(a.size) }),
          h("td", { text: hardwareText(a.hardware) }),
          h("td", { text: when(a.added) }),
          h("td", { class: "used", text: usersText(a.used_by) }),
        ),
      ),
  );
}

async function artifactsPage(main) {
  const artifacts = await api("GET", "/artifacts");
  const body = h("tbody");
  artifactRows(body, artifacts);
  main.append(
    h("h1", { text: "Artifacts" }),
    h(
      "table",
      { id: "artifacts" },
      h("thead", {}, h("tr", {}, ["id", "version", "size", "hardware", "added", "used by (unfinished)"].map((t) => h("th", { text: t })))),
      body,
    ),
  );
  if (may("operator")) main.append(uploadForm(body));
  const refresh = async () => artifactRows(body, await api("GET", "/artifacts"));
  return {
    // a job or rollout ending frees an artifact; another operator may add or delete one
    onEvents: (events) => events.some((e) => e.kind === "job" || e.kind === "rollout" || (e.kind === "audit" && e.path.startsWith("/artifacts"))) && refresh(),
  };
}

function uploadForm(body) {
  const err = h("p", { class: "error", id: "upload-error" });
  const done = h("p", { class: "muted", id: "upload-done" });
  const file = h("input", { type: "file", id: "upload-file", name: "file", accept: ".swu", required: true });
  const submit = h("button", { type: "submit", id: "upload-submit", text: "Upload" });
  const form = h("form", { class: "card", id: "upload-form", "data-needs": "operator" }, h("h2", { text: "Upload a .swu" }), h("label", {}, "File", file), submit, err, done);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    done.textContent = "";
    if (!file.files.length) return;
    submit.disabled = true;
    try {
      const added = await api("POST", "/artifacts", file.files[0]);
      done.textContent = `Added version ${added.version} as ${added.sha256.slice(0, 12)}.`;
      form.reset();
      artifactRows(body, await api("GET", "/artifacts"));
    } catch (e) {
      err.textContent = reasons(e).join("\n"); // the service's reason, as it says it
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

const SIGNATURE = {
  verified: (s) => `verified by ${s.certificate}`,
  refused: (s) => `refused by ${s.certificate}: ${s.problems.join("; ")}`,
  not_checked: () => "not checked (the service has no signing certificate)",
};

async function artifactPage(main, id) {
  const a = await api("GET", `/artifacts/${id}`);
  const fact = (k, v, attrs = {}) => [h("dt", { text: k }), h("dd", { ...attrs }, v)];
  const err = h("p", { class: "error", id: "artifact-error" });
  // a rollout has a page; a job is shown on its devices' pages
  const users = a.used_by.map((u) => h(u.kind === "rollout" ? "a" : "span", { href: u.kind === "rollout" ? `#/rollout/${u.id}` : null, text: `${u.kind} ${u.id} (${u.state})` }));
  main.append(
    h("h1", {}, `Artifact ${a.version} `, h("span", { class: "muted mono", text: a.sha256.slice(0, 12) })),
    h(
      "div",
      { class: "card" },
      h(
        "dl",
        { class: "facts", id: "artifact-facts" },
        fact("sha256", a.sha256, { class: "mono", id: "artifact-sha256" }),
        fact("version", a.version, { id: "artifact-version" }),
        fact("size", `${size(a.size)} (${a.size} bytes)`),
        fact("hardware", hardwareText(a.hardware), { id: "artifact-hardware" }),
        fact("added", when(a.added)),
        fact("signature", SIGNATURE[a.signature.status](a.signature), { id: "artifact-signature", class: a.signature.status === "refused" ? "error" : "" }),
        fact("used by", users.length ? users.flatMap((u, i) => (i ? [", ", u] : [u])) : "nothing unfinished", { id: "artifact-used" }),
      ),
    ),
    may("operator")
      ? h(
          "div",
          { class: "actions" },
          h("button", {
            type: "button",
            id: "artifact-delete",
            class: "secondary",
            "data-needs": "operator",
            text: "Delete",
            onclick: async () => {
              err.textContent = "";
              try {
                await api("DELETE", `/artifacts/${a.sha256}`);
                location.hash = "#/artifacts";
              } catch (e) {
                err.textContent = reasons(e).join("\n");
              }
            },
          }),
        )
      : "",
    err,
  );
  return {};
}

// -- configuration --------------------------------------------------------------------------

// A device's configuration as the group page shows it: what it reports against what it should.
function configState(c) {
  if (!c || !c.version) return ["pending", "nothing desired yet"];
  const r = c.reported;
  if (!r) return ["pending", "nothing reported yet"];
  if (r.version < c.version) return ["pending", `reports version ${r.version} (${r.status})`];
  return [r.status, r.error || ""];
}

async function deviceConfigs(devices) {
  return Promise.all(
    devices.map((d) =>
      api("GET", `/devices/${d}/config`).catch((e) => {
        if (e.status === 404) return null;
        throw e;
      }),
    ),
  );
}

async function configPage(main) {
  const groups = await api("GET", "/groups");
  // a device by its id, offered as typed from the service's matches (never the whole fleet)
  const ids = h("datalist", { id: "config-device-ids" });
  const pick = h("input", { id: "config-device", type: "search", list: "config-device-ids", placeholder: "device id", autocomplete: "off" });
  let asked = 0;
  pick.addEventListener("input", async () => {
    const typed = pick.value.trim().toLowerCase();
    const mine = ++asked;
    const found = /^[a-z0-9-]{1,63}$/.test(typed) ? await api("GET", `/devices?limit=20&q=${encodeURIComponent(typed)}`) : [];
    if (mine !== asked) return;
    ids.replaceChildren(...found.filter((d) => !d.retired).map((d) => h("option", { value: d.id })));
  });
  const open = (ev) => {
    ev.preventDefault();
    const id = pick.value.trim().toLowerCase();
    if (id) location.hash = `#/config/device/${id}`;
  };
  main.append(
    h("h1", { text: "Configuration" }),
    h("p", { class: "muted", text: "A device's desired configuration is its group's overlay with its own laid over it." }),
    h("h2", { text: "Groups" }),
    h(
      "table",
      { id: "config-groups" },
      h("tr", {}, ["group", "overlay", "members", "updated"].map((t) => h("th", { text: t }))),
      groups.map((g) =>
        h(
          "tr",
          { "data-group": g.name },
          h("td", {}, h("a", { href: `#/config/group/${g.name}`, text: g.name })),
          h("td", {}, h("pre", { text: JSON.stringify(g.config, null, 2) })),
          h("td", {}, g.members.flatMap((m, i) => [i ? ", " : "", h("a", { href: `#/config/device/${m}`, text: m })])),
          h("td", { text: when(g.updated) }),
        ),
      ),
    ),
    h("h2", { text: "A device's own overlay" }),
    h("form", { id: "config-device-form", onsubmit: open }, h("label", {}, "Device ", pick, ids), " ", h("button", { id: "config-device-open", type: "submit", "data-reads": true, text: "open" })),
  );
  return { onEvents: (events) => events.some((e) => e.kind === "audit" && (e.path.startsWith("/groups") || e.path.startsWith("/devices"))) && render() };
}

// The overlay as JSON in a textarea, checked by the service (POST /config/check, the agent's
// rules) while it is edited; Save only when the check passes.
function overlayEditor(overlay, saveTo, onSaved) {
  const editable = may("operator");
  const text = h("textarea", { id: "config-text", rows: 14, spellcheck: "false", readonly: !editable });
  text.value = JSON.stringify(overlay || {}, null, 2);
  const problems = h("ul", { id: "config-problems", class: "error" });
  const saved = h("p", { id: "config-saved", class: "muted" });
  const save = h("button", { type: "button", id: "config-save", "data-needs": "operator", disabled: true, text: "Save" });
  const box = h("div", { class: "card editor", id: "config-editor", "data-check": "checking" }, text, problems, editable ? h("div", { class: "actions" }, save) : null, saved);
  let asked = 0;
  let timer = null;
  const show = (ok, list) => {
    problems.replaceChildren(...list.map((p) => h("li", { text: p })));
    save.disabled = !ok;
    box.dataset.check = ok ? "ok" : "invalid";
  };
  const check = async () => {
    const mine = ++asked;
    let doc;
    try {
      doc = JSON.parse(text.value);
    } catch (e) {
      show(false, [`not JSON: ${e.message}`]);
      return;
    }
    try {
      const got = await api("POST", "/config/check", doc);
      if (mine === asked) show(got.ok, got.problems);
    } catch (e) {
      if (mine === asked) show(false, reasons(e));
    }
  };
  text.addEventListener("input", () => {
    save.disabled = true;
    box.dataset.check = "checking";
    saved.textContent = "";
    clearTimeout(timer);
    timer = setTimeout(check, 300);
  });
  save.addEventListener("click", async () => {
    save.disabled = true;
    try {
      const done = await api("PUT", saveTo, JSON.parse(text.value));
      saved.textContent = `Saved at ${when(Date.now() / 1000)}.`;
      box.dataset.check = "saved";
      if (onSaved) await onSaved(done);
    } catch (e) {
      show(false, reasons(e));
      return;
    }
    save.disabled = false;
  });
  if (editable) check();
  return box;
}

function memberRows(body, members, configs) {
  body.replaceChildren(
    ...members.map((d, i) => {
      const c = configs[i];
      const [st, why] = configState(c);
      return h(
        "tr",
        { "data-device": d, "data-state": st, "data-reported": c && c.reported ? c.reported.version : "" },
        h("td", {}, h("a", { href: `#/config/device/${d}`, text: d })),
        h("td", { text: c && c.version ? c.version : "—" }),
        h("td", { text: c && c.reported ? c.reported.version : "—" }),
        h("td", { class: `status ${st}`, text: st }),
        h("td", { text: why }),
      );
    }),
  );
}

async function groupConfigPage(main, name) {
  const g = await api("GET", `/groups/${name}`);
  const body = h("tbody");
  const refresh = async () => memberRows(body, g.members, await deviceConfigs(g.members));
  await refresh();
  main.append(
    h("h1", {}, `Group ${g.name} `, h("span", { class: "muted", text: "configuration" })),
    h("p", { class: "muted", text: `Updated ${when(g.updated)}. The overlay every member gets; a device's own overlay is laid over it.` }),
    overlayEditor(g.config, `/groups/${g.name}/config`, refresh),
    h("h2", { text: "Who has applied it" }),
    h(
      "table",
      { id: "config-members" },
      h("thead", {}, h("tr", {}, ["device", "desired version", "reported version", "status", "reason"].map((t) => h("th", { text: t })))),
      body,
    ),
  );
  const mine = new Set(g.members);
  // configuration reports arrive as `config` events: the table only, the editor keeps its text
  return { onEvents: (events) => events.some((e) => e.kind === "config" && mine.has(e.device)) && refresh() };
}

async function deviceConfigPage(main, id) {
  let c = null;
  try {
    c = await api("GET", `/devices/${id}/config`);
  } catch (e) {
    if (e.status !== 404) throw e;
  }
  const facts = h("dl", { class: "facts", id: "device-config-facts" });
  const desired = h("pre", { id: "device-config-desired" });
  const draw = (cfg) => {
    const [st, why] = configState(cfg);
    const fact = (k, v) => [h("dt", { text: k }), h("dd", {}, v === null || v === undefined || v === "" ? "—" : v)];
    facts.replaceChildren(
      ...fact("group", cfg && cfg.group ? h("a", { href: `#/config/group/${cfg.group}`, text: cfg.group }) : null),
      ...fact("desired version", cfg && cfg.version),
      ...fact("reported version", cfg && cfg.reported ? cfg.reported.version : null),
      ...fact("status", h("span", { id: "device-config-status", class: `status ${st}`, text: why ? `${st}: ${why}` : st })),
    );
    desired.textContent = JSON.stringify(cfg ? cfg.desired : {}, null, 2);
  };
  const refresh = async () => {
    try {
      draw(await api("GET", `/devices/${id}/config`));
    } catch (e) {
      if (e.status !== 404) status(e.message);
    }
  };
  draw(c);
  main.append(
    h("h1", {}, `Device ${id} `, h("span", { class: "muted", text: "configuration" })),
    h("p", {}, h("a", { href: `#/device/${id}`, text: "the device's page" })),
    h("div", { class: "card" }, facts),
    h("h2", { text: "Its own overlay" }),
    overlayEditor(c && c.overlay, `/devices/${id}/config`, (done) => draw(done)),
    h("h2", { text: "Desired (group and own overlay)" }),
    desired,
  );
  return { onEvents: (events) => events.some((e) => e.kind === "config" && e.device === id) && refresh() };
}

// -- routing -----------------------------------------------------------------------------

const ROUTES = [
  [/^#\/overview$/, overviewPage],
  [/^#\/devices(\?.*)?$/, devicesPage],
  [/^#\/device\/([a-z0-9][a-z0-9_-]{0,63})$/, devicePage],
  [/^#\/rollouts$/, rolloutsPage],
  [/^#\/rollout\/(r-[0-9a-f]{1,12})$/, rolloutPage],
  [/^#\/artifacts$/, artifactsPage],
  [/^#\/artifact\/([0-9a-f]{4,64})$/, artifactPage],
  [/^#\/config$/, configPage],
  [/^#\/config\/group\/([a-z0-9][a-z0-9_-]{0,62})$/, groupConfigPage],
  [/^#\/config\/device\/([a-z0-9][a-z0-9_-]{0,63})$/, deviceConfigPage],
  [/^#\/audit$/, auditPage],
];

let rendering = Promise.resolve();

function render() {
  rendering = rendering.then(renderNow, renderNow);
  return rendering;
}

async function renderNow() {
  const main = document.getElementById("page");
  if (state.page && state.page.timer) clearInterval(state.page.timer);
  state.page = null;
  status("");
  if (!sessionStorage.getItem(TOKEN) || state.who === null) {
    main.replaceChildren();
    loginPage(main);
    document.body.dataset.page = "login";
    return;
  }
  document.getElementById("top").hidden = false;
  let found = ROUTES.find(([re]) => re.test(location.hash));
  if (!found || (found[1] === auditPage && !may("operator"))) {
    location.hash = "#/overview";
    return;
  }
  const match = location.hash.match(found[0]);
  const fresh = h("div");
  try {
    state.page = await found[1](fresh, match[1]);
    main.replaceChildren(...fresh.childNodes);
    document.body.dataset.page = location.hash.slice(2).split("/")[0].split("?")[0];
  } catch (e) {
    if (e.status !== 401) status(e.message);
  }
  hideWhatTheRoleMayNot(main);
}

function hideWhatTheRoleMayNot(root) {
  for (const el of document.querySelectorAll("[data-needs]")) {
    const allowed = may(el.dataset.needs);
    el.hidden = !allowed;
    if (!allowed && "disabled" in el) el.disabled = true;
  }
  void root;
}

async function start() {
  state.who = await api("GET", "/whoami");
  document.getElementById("who").textContent = `${state.who.name} (${state.who.role})`;
  document.body.dataset.role = state.who.role;
  state.cursor = null;
  state.recent = [];
  const mine = {};
  state.feed = mine;
  await poll(); // the newest events first (the overview shows them), then follow
  follow(mine);
}

async function logout() {
  const token = state.who && state.who.token;
  try {
    if (token) await api("DELETE", `/tokens/${token}`);
  } catch (e) {
    // the token may have expired already: forgetting it is what matters
  }
  sessionStorage.removeItem(TOKEN);
  state.who = null;
  state.feed = null;
  location.hash = "#/login";
  render();
}

window.addEventListener("hashchange", render);
document.getElementById("logout").addEventListener("click", logout);
(async () => {
  if (sessionStorage.getItem(TOKEN)) {
    try {
      await start();
    } catch (e) {
      sessionStorage.removeItem(TOKEN);
    }
  }
  if (state.who && (location.hash === "" || location.hash === "#/login")) location.hash = "#/overview";
  else render();
})();
