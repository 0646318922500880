// vmbusops web console: plain JavaScript, no build step, nothing third-party.
//
// Everything shown here that came from the agent (and so, for records, from a guest) is hostile
// text: it only ever reaches the page as a text node (el()'s string children, textContent). No
// markup is ever parsed from data; the page's Content-Security-Policy backs that up.
"use strict";

(function () {
  const ACTIVE = new Set(["pending", "delayed", "in-progress"]);
  const STATES = ["pending", "delayed", "in-progress", "success", "failed", "delivery-timed-out",
    "execution-timed-out", "cancelled", "interrupted", "skipped", "rolled-back"];
  const STREAMS = ["output", "error", "warning", "verbose", "debug", "information", "progress", "state"];
  const LABELS = { error: "ERROR: ", warning: "WARNING: ", verbose: "VERBOSE: ", debug: "DEBUG: ",
    progress: "PROGRESS: ", state: "STATE: " };
  const MAX_LINES = 5000;
  const POLL_MS = 2000;

  let me = null;          // who is signed in: {name, operations, csrf, via}
  let leave = null;       // what the current view does when left (close a stream, stop polling)
  const targetsOf = new Map();  // job id -> VMs it targets (they never change)

  // ------------------------------------------------------------------ DOM, text only
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const $ = (id) => document.getElementById(id);
  function status(text) { $("status").textContent = text || ""; }
  function time(t) {
    if (t === null || t === undefined || t === "") return "";
    if (typeof t === "number") return new Date(t * 1000).toISOString().replace(".000", "");
    return String(t);
  }
  function badge(state) { return el("span", { class: "state state-" + String(state) }, state); }

  // ------------------------------------------------------------------ the API
  class Problem extends Error {
    constructor(status, detail) { super(detail); this.status = status; }
  }
  async function api(path, options) {
    const opts = Object.assign({ method: "GET", credentials: "same-origin", headers: {} }, options || {});
    opts.headers = Object.assign({ Accept: "application/json" }, opts.headers);
    if (opts.method !== "GET" && me && me.csrf) opts.headers["X-Vmbusops-CSRF"] = me.csrf;
    const response = await fetch(path, opts);
    if (response.status === 204) return null;
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      const detail = body && body.detail ? body.detail : response.status + " " + response.statusText;
      if (response.status === 401 && !path.startsWith("/console/session")) showSignIn(detail);
      throw new Problem(response.status, detail);
    }
    return body;
  }
  const may = (operation) => me !== null && me.operations.includes(operation);

  // ------------------------------------------------------------------ sign-in
  function showSignIn(message) {
    stopView();
    me = null;
    $("sign-in").hidden = false;
    $("nav").hidden = true;
    $("sign-out").hidden = true;
    $("who").textContent = "";
    $("view").replaceChildren();
    $("sign-in-error").textContent = message || "";
  }
  function signedIn(who) {
    me = who;
    $("sign-in").hidden = true;
    $("sign-in-error").textContent = "";
    $("nav").hidden = false;
    $("sign-out").hidden = who.via !== "session";
    $("who").textContent = who.name + " (" + who.kind + " " + who.id + ", " + who.vms.join(" ") + ")";
    route();
  }
  async function signIn(event) {
    event.preventDefault();
    const input = $("token");
    const token = input.value.trim();
    input.value = "";
    try {
      signedIn(await api("/console/session", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token }),
      }));
    } catch (e) {
      $("sign-in-error").textContent = e.message;
    }
  }
  async function signOut() {
    try { await api("/console/session", { method: "DELETE" }); } catch (e) { /* signed out anyway */ }
    showSignIn("Signed out.");
  }

  // ------------------------------------------------------------------ routing
  function stopView() {
    if (leave) { const fn = leave; leave = null; fn(); }
  }
  function route() {
    if (me === null) return;
    stopView();
    const hash = location.hash || "#/jobs";
    const [path, query] = hash.slice(1).split("?");
    const params = new URLSearchParams(query || "");
    for (const a of document.querySelectorAll("#nav a")) {
      a.classList.toggle("active", path.startsWith(a.getAttribute("href").slice(1)));
    }
    const job = /^\/jobs\/(\d+)$/.exec(path);
    if (job) return jobView(Number(job[1]));
    if (path === "/vms") return vmsView();
    if (path === "/schedules") return schedulesView();
    return jobsView(params);
  }
  function every(ms, fn) {
    let timer = null;
    let stopped = false;
    const tick = async () => {
      try { await fn(); } catch (e) { if (!(e instanceof Problem && e.status === 401)) status(e.message); }
      if (!stopped) timer = setTimeout(tick, ms);
    };
    tick();
    return () => { stopped = true; clearTimeout(timer); };
  }

  // ------------------------------------------------------------------ jobs
  async function targets(job) {
    if (Array.isArray(job.targets)) return job.targets;
    if (Array.isArray(job.vms)) return job.vms;
    if (!targetsOf.has(job.id)) targetsOf.set(job.id, (await api("/v1/jobs/" + job.id)).job.targets || []);
    return targetsOf.get(job.id);
  }
  function jobsView(params) {
    const state = params.get("state") || "";
    const vm = params.get("vm") || "";
    const stateSelect = el("select", { id: "filter-state", name: "state" },
      el("option", { value: "" }, "any state"),
      STATES.map((s) => el("option", { value: s, selected: s === state }, s)));
    const vmInput = el("input", { id: "filter-vm", name: "vm", placeholder: "VM name", value: vm });
    const apply = (event) => {
      event.preventDefault();
      const q = new URLSearchParams();
      if (stateSelect.value) q.set("state", stateSelect.value);
      if (vmInput.value.trim()) q.set("vm", vmInput.value.trim());
      location.hash = "#/jobs" + (q.toString() ? "?" + q : "");
    };
    const body = el("tbody", { id: "jobs-body" });
    $("view").replaceChildren(
      el("h1", {}, "Jobs"),
      el("form", { class: "filters", id: "job-filters", on: { submit: apply } },
        el("label", {}, "State ", stateSelect), el("label", {}, "VM ", vmInput),
        el("button", { type: "submit", id: "filter-apply" }, "Filter")),
      el("table", { id: "jobs" },
        el("thead", {}, el("tr", {}, ["Job", "Bundle", "State", "Runs", "Submitted by", "Created"].map((h) => el("th", {}, h)))),
        body));
    let shown = null;
    leave = every(POLL_MS, async () => {
      const q = new URLSearchParams({ limit: "100" });
      if (state) q.set("state", state);
      if (vm) q.set("vm", vm);
      let jobs = (await api("/v1/jobs?" + q)).jobs;
      if (state) jobs = jobs.filter((j) => j.state === state);
      if (vm) {
        const wanted = vm.toLowerCase();
        const keep = await Promise.all(jobs.map(async (j) => (await targets(j)).some((t) => t.toLowerCase() === wanted)));
        jobs = jobs.filter((j, i) => keep[i]);
      }
      status("jobs updated " + new Date().toLocaleTimeString());
      const drawn = JSON.stringify(jobs);
      if (drawn === shown) return;  // unchanged: keep the rows (and what is being clicked)
      shown = drawn;
      body.replaceChildren(...jobs.map((j) => el("tr", { "data-job": j.id },
        el("td", {}, el("a", { href: "#/jobs/" + j.id, class: "job-link" }, "job " + j.id)),
        el("td", {}, j.bundle || "", j.version ? " v" + j.version : ""),
        el("td", {}, badge(j.state)),
        el("td", {}, Object.entries(j.runs || {}).map(([s, n]) => n + " " + s).join(", ")),
        el("td", {}, j.submitter || j.source || ""),
        el("td", {}, time(j.created_at)))));
      if (!jobs.length) body.replaceChildren(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No jobs.")));
    });
  }

  // ------------------------------------------------------------------ one job, live
  function dscProgress(step) {
    // "dsc: 3/7 [File]Index: 2 changed, 1 in desired state" (see vmbusops.dsc.progress).
    const m = /^[^:]*: (\d+)\/(\d+)(.*)$/.exec(step || "");
    if (!m) return null;
    return el("span", { class: "dsc" },
      el("progress", { max: m[2], value: m[1] }), m[1] + "/" + m[2] + (m[3] || ""));
  }
  // A journaled value as `vmbusops logs` shows it (vmbusops.records.value_display, in JavaScript).
  function value(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "boolean") return v ? "True" : "False";
    if (typeof v === "string" || typeof v === "number") return String(v);
    if (Array.isArray(v)) return v.map(value).join(" ");
    if (typeof v !== "object") return String(v);
    if ("$bytes" in v) return "(" + String(v.$bytes).length + " base64 characters)";
    if ("$dict" in v) return (v.$dict || []).map(([k, x]) => value(k) + "=" + value(x)).join("; ");
    if ("$type" in v) {
      const types = v.$type || [];
      if (v.string !== null && v.string !== undefined && !types.includes(v.string)) return String(v.string);
      const props = Object.entries(v.properties || {});
      if (!props.length) return v.string || "";
      return "@{" + props.map(([k, x]) => k + "=" + value(x)).join("; ") + "}";
    }
    return JSON.stringify(v);
  }
  function recordText(r) {
    switch (r.stream) {
      case "output": return value(r.value);
      case "information": return value(r.message_data);
      case "progress": {
        const pct = r.percent_complete >= 0 ? " " + r.percent_complete + "%" : "";
        return (r.activity || "") + ": " + (r.status_description || "") + pct + (r.completed ? " (done)" : "");
      }
      case "state": return String(r.state || "") + (r.exit_code !== null && r.exit_code !== undefined ? " (exit " + r.exit_code + ")" : "");
      default: return String(r.message || "");
    }
  }
  function jobView(id) {
    const runs = new Map();       // vm -> {state, step, error, code}
    let selected = "";            // "" = every VM
    let job = null;
    let lines = 0;
    const head = el("div", { class: "job-head" });
    const runsBody = el("tbody", { id: "runs-body" });
    const tabs = el("div", { class: "tabs", id: "vm-tabs" });
    const records = el("div", { id: "records", "aria-live": "off" });
    const legend = el("div", { class: "legend" }, STREAMS.map((s) => el("span", { class: "s-" + s }, s)));
    $("view").replaceChildren(head,
      el("h2", {}, "VMs"),
      el("table", { id: "runs" },
        el("thead", {}, el("tr", {}, ["VM", "State", "Step", "DSC progress", "Error"].map((h) => el("th", {}, h)))),
        runsBody),
      el("h2", {}, "Records"), tabs, legend, records);

    function drawHead() {
      const cancel = job && may("cancel") && ACTIVE.has(job.state) && !job.cancel_requested
        ? el("button", { type: "button", class: "danger", id: "cancel-job", on: { click: cancelJob } }, "Cancel job")
        : null;
      head.replaceChildren(...[el("h1", {}, "job " + id), job ? badge(job.state) : null,
        job && job.bundle ? el("span", { class: "muted" }, job.bundle + (job.version ? " v" + job.version : "")) : null,
        job && job.cancel_requested && ACTIVE.has(job.state) ? el("span", { class: "muted" }, "cancel requested") : null,
        cancel].filter((node) => node !== null));
    }
    function drawRuns() {
      runsBody.replaceChildren(...[...runs.entries()].map(([vm, r]) => el("tr", {
        class: "clickable" + (vm === selected ? " selected" : ""), "data-vm": vm,
        on: { click: () => select(vm === selected ? "" : vm) },
      }, el("td", {}, vm), el("td", { class: "run-state" }, badge(r.state)),
      el("td", { class: "run-step" }, dscProgress(r.step) ? r.step.split(": ")[0] : r.step || ""), el("td", {}, dscProgress(r.step)),
      el("td", { class: "error" }, (r.code ? r.code + ": " : "") + (r.error || "")))));
      tabs.replaceChildren(el("button", { type: "button", class: selected === "" ? "active" : "", on: { click: () => select("") } }, "all VMs"),
        ...[...runs.keys()].map((vm) => el("button", { type: "button", "data-vm": vm, class: vm === selected ? "active" : "", on: { click: () => select(vm) } }, vm)));
    }
    function select(vm) {
      selected = vm;
      for (const line of records.children) line.hidden = vm !== "" && line.dataset.vm !== vm;
      drawRuns();
    }
    function addRecord(r) {
      const atEnd = records.scrollHeight - records.scrollTop - records.clientHeight < 40;
      const text = recordText(r);
      const line = el("div", { class: "rec s-" + r.stream, "data-vm": r.vm, "data-seq": r.seq },
        el("span", { class: "vm" }, r.vm), el("span", { class: "label" }, LABELS[r.stream] || ""),
        el("span", { class: "text" }, text));
      line.hidden = selected !== "" && r.vm !== selected;
      records.append(line);
      if (++lines > MAX_LINES) { records.firstElementChild.remove(); lines--; }
      if (atEnd) records.scrollTop = records.scrollHeight;
    }
    async function cancelJob(event) {
      event.target.disabled = true;
      try {
        await api("/v1/jobs/" + id + "/cancel", { method: "POST" });
        job.cancel_requested = true;
        status("cancel requested");
      } catch (e) {
        status(e.message);
      }
      drawHead();
    }

    const stream = new EventSource("/v1/jobs/" + id + "/events");
    records.dataset.stream = "live";
    let ended = false;
    stream.addEventListener("job", (e) => { job = Object.assign(job || {}, JSON.parse(e.data)); drawHead(); });
    stream.addEventListener("run", (e) => {
      const r = JSON.parse(e.data);
      runs.set(r.vm, { state: r.state, step: r.step, error: r.error, code: r.code });
      drawRuns();
    });
    stream.addEventListener("record", (e) => addRecord(JSON.parse(e.data)));
    stream.addEventListener("end", (e) => {
      ended = true;
      stream.close();
      records.dataset.stream = "ended";
      job = Object.assign(job || {}, JSON.parse(e.data));
      drawHead();
      status("job " + id + " " + job.state);
    });
    stream.addEventListener("error", () => {
      if (ended) return;
      if (stream.readyState === EventSource.CLOSED) {
        // Refused (signed out, not visible) or the agent went away: say which if the API can.
        api("/v1/jobs/" + id).then(() => status("the live stream closed"), (e) => status(e.message));
      } else {
        status("reconnecting to the live stream...");
      }
    });
    api("/v1/jobs/" + id).then((got) => {
      job = Object.assign(got.job, job || {});
      drawHead();
    }, (e) => { head.replaceChildren(el("h1", {}, "job " + id)); status(e.message); });
    drawHead();
    leave = () => stream.close();
  }

  // ------------------------------------------------------------------ the host's VMs, schedules
  function vmsView() {
    // A fleet controller's listing says where each VM is (host, cluster): then those columns show.
    const head = el("thead");
    const body = el("tbody", { id: "vms-body" });
    const heading = el("h1", {}, "VMs on this host");
    $("view").replaceChildren(heading, el("table", { id: "vms" }, head, body));
    const columns = (fleet) => [...(fleet ? ["VM", "Host", "Cluster"] : ["VM"]),
      "State", "Heartbeat", "Guest Service Interface", "Uptime", ""];
    leave = every(POLL_MS * 3, async () => {
      const vms = (await api("/v1/vms")).vms;
      const fleet = vms.some((v) => "host" in v);
      heading.textContent = fleet ? "VMs of the fleet" : "VMs on this host";
      head.replaceChildren(el("tr", {}, columns(fleet).map((h) => el("th", {}, h))));
      body.replaceChildren(...vms.map((v) => el("tr", { "data-vm": v.vm },
        el("td", {}, v.vm),
        fleet ? [el("td", { class: "host" }, v.host || ""), el("td", { class: "cluster" }, v.cluster || "")] : [],
        el("td", {}, v.state), el("td", {}, v.heartbeat || ""),
        el("td", {}, v.guest_services === null ? "unknown" : v.guest_services ? "enabled" : "disabled"),
        el("td", {}, v.uptime || ""),
        el("td", {}, el("a", { href: "#/jobs?vm=" + encodeURIComponent(v.vm) }, "jobs")))));
      if (!vms.length) body.replaceChildren(el("tr", {}, el("td", { colspan: columns(fleet).length, class: "muted" }, "No VMs in scope.")));
    });
  }
  function schedulesView() {
    const body = el("tbody", { id: "schedules-body" });
    $("view").replaceChildren(el("h1", {}, "Schedules"),
      el("table", { id: "schedules" },
        el("thead", {}, el("tr", {}, ["Name", "Version", "Cron", "Time zone", "Targets", "Next run", "Last job"].map((h) => el("th", {}, h)))),
        body));
    leave = every(POLL_MS * 5, async () => {
      const schedules = (await api("/v1/schedules")).schedules;
      body.replaceChildren(...schedules.map((s) => el("tr", {},
        el("td", {}, s.name), el("td", {}, s.version ?? ""), el("td", {}, s.cron), el("td", {}, s.timezone || ""),
        el("td", {}, (s.targets || []).join(", ")), el("td", {}, time(s.next_run)),
        el("td", {}, s.last_job ? el("a", { href: "#/jobs/" + s.last_job }, "job " + s.last_job) : ""))));
      if (!schedules.length) body.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "No schedules.")));
    });
  }

  // ------------------------------------------------------------------ start
  document.addEventListener("DOMContentLoaded", async () => {
    $("sign-in-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", signOut);
    window.addEventListener("hashchange", route);
    try {
      signedIn(await api("/console/session"));
    } catch (e) {
      showSignIn(e instanceof Problem && e.status === 401 ? "" : e.message);
    }
  });
})();
