// leadscore /ui: audience builder with a live count, and the customer portrait (masked, with
// the viewer's watermark). The agent token comes in the URL fragment (/ui#token=…&person=…),
// which browsers never send to a server; it is kept in memory only and the fragment cleared.
"use strict";

const params = new URLSearchParams(location.hash.slice(1));
const token = params.get("token") || "";
const firstPerson = params.get("person");
const firstView = params.get("view");
history.replaceState(null, "", location.pathname);

const $ = (id) => document.getElementById(id);
const EVENT_TYPES = ["web_visit", "pricing_page", "course_page", "recruitment_page", "email_open",
  "email_click", "whitepaper_download", "live_class", "offline_event", "trial_class",
  "wechat_read", "app_open", "any"];
const TAGS = {
  tier: ["A", "B", "C", "D"], channel: ["top_sales", "sales", "tmk", "ai_bot"],
  source: ["sem", "feed_ads", "channel_agent", "list_purchase", "seo", "app", "wechat_private",
    "new_media"],
  rfm_segment: ["no_orders", "R0F0M0", "R0F0M1", "R0F1M0", "R0F1M1", "R1F0M0", "R1F0M1",
    "R1F1M0", "R1F1M1"],
  grade: ["G1", "G2", "G3", "G4", "G5", "G6", "G7", "G8", "G9", "G10", "G11", "G12"],
  subject: ["math", "english", "chinese", "physics", "chemistry", "coding", "art"],
  city_tier: [1, 2, 3, 4], funnel_step: ["submitted", "verified", "followed_account",
    "booked_trial"],
  probability: null, fit_score: null, interest_score: null, rule_score: null, lead_count: null,
};
const CATEGORY_OPS = ["eq", "ne", "in", "not_in"];
const NUMBER_OPS = ["gte", "gt", "lte", "lt", "eq", "ne"];

async function api(method, path, body) {
  const init = { method, headers: { Authorization: "Bearer " + token } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch (e) { data = { error: "unreadable answer" }; }
  return { status: response.status, data };
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child === null || child === undefined ? "" : child);
  return node;
}

function options(select, values, chosen) {
  select.replaceChildren(...values.map((v) => {
    const o = el("option", { value: String(v) }, String(v));
    if (String(v) === String(chosen)) o.selected = true;
    return o;
  }));
}

// ---- audience builder ----------------------------------------------------------------------
const rules = [];
let counter = 0;

function addRule(kind, preset) {
  const rule = Object.assign({ id: ++counter, kind }, preset || {});
  if (kind === "tag") Object.assign(rule, { field: "tier", op: "in", value: "A,B" }, preset || {});
  else Object.assign(rule, { event_type: "web_visit", url_mode: "none", url: "", min_count: 1,
    within_days: 30 }, preset || {});
  rules.push(rule);
  renderRules();
  scheduleCount();
}

function ruleEditor(rule) {
  const cell = el("td", { class: "editor" });
  const change = () => { scheduleCount(); };
  if (rule.kind === "tag") {
    const field = el("select", { "data-role": "field" });
    options(field, Object.keys(TAGS), rule.field);
    const op = el("select", { "data-role": "op" });
    const value = el("input", { "data-role": "value", size: "14", value: rule.value });
    const refreshOps = () => {
      const ops = TAGS[rule.field] ? CATEGORY_OPS : NUMBER_OPS;
      if (!ops.includes(rule.op)) rule.op = ops[0];
      options(op, ops, rule.op);
    };
    refreshOps();
    field.addEventListener("change", () => { rule.field = field.value; refreshOps(); change(); });
    op.addEventListener("change", () => { rule.op = op.value; change(); });
    value.addEventListener("input", () => { rule.value = value.value; change(); });
    cell.append(field, " ", op, " ", value);
  } else {
    const type = el("select", { "data-role": "event_type" });
    options(type, EVENT_TYPES, rule.event_type);
    const mode = el("select", { "data-role": "url_mode" });
    options(mode, ["none", "prefix", "glob"], rule.url_mode);
    const url = el("input", { "data-role": "url", size: "16", placeholder: "/pricing or /course/*",
      value: rule.url });
    const count = el("input", { "data-role": "min_count", type: "number", min: "1", size: "3",
      value: rule.min_count });
    const days = el("input", { "data-role": "within_days", type: "number", min: "1", size: "4",
      value: rule.within_days });
    type.addEventListener("change", () => { rule.event_type = type.value; change(); });
    mode.addEventListener("change", () => { rule.url_mode = mode.value; change(); });
    url.addEventListener("input", () => { rule.url = url.value; change(); });
    count.addEventListener("input", () => { rule.min_count = count.value; change(); });
    days.addEventListener("input", () => { rule.within_days = days.value; change(); });
    cell.append(type, " url ", mode, " ", url, " ≥ ", count, " times in ", days, " days");
  }
  return cell;
}

function renderRules() {
  const body = $("rules").querySelector("tbody");
  body.replaceChildren(...rules.map((rule, i) => {
    const remove = el("button", { type: "button", title: "remove" }, "✕");
    remove.addEventListener("click", () => {
      rules.splice(rules.indexOf(rule), 1);
      renderRules();
      scheduleCount();
    });
    return el("tr", { "data-rule": String(rule.id) }, el("td", {}, String(i + 1)),
      ruleEditor(rule), el("td", { class: "num own" }, "–"),
      el("td", { class: "num cumulative" }, "–"), el("td", {}, remove));
  }));
}

function toNode(rule) {
  if (rule.kind === "tag") {
    const numeric = TAGS[rule.field] === null || rule.field === "city_tier";
    const parse = (v) => (numeric ? Number(v) : v.trim());
    const list = String(rule.value).split(",").map((v) => v.trim()).filter((v) => v !== "");
    const value = (rule.op === "in" || rule.op === "not_in") ? list.map(parse) : parse(list[0] || "");
    return { type: "tag", field: rule.field, op: rule.op, value };
  }
  const node = { type: "behaviour", event_type: rule.event_type,
    min_count: Number(rule.min_count) || 1 };
  if (String(rule.within_days).trim() !== "") node.within_days = Number(rule.within_days);
  if (rule.url_mode === "prefix") node.url_prefix = rule.url;
  if (rule.url_mode === "glob") node.url_glob = rule.url;
  return node;
}

function currentTree() {
  return { type: $("combinator").value, rules: rules.map(toNode) };
}

let timer = null;
let sequence = 0;
function scheduleCount() {
  clearTimeout(timer);
  $("audience-total").dataset.state = "pending";
  timer = setTimeout(runCount, 250);
}

async function runCount() {
  const mine = ++sequence;
  if (rules.length === 0) {
    $("audience-total").textContent = "–";
    $("audience-total").dataset.state = "idle";
    return;
  }
  const { status, data } = await api("POST", "/audiences/count", { tree: currentTree() });
  if (mine !== sequence) return; // a newer edit is being counted
  const total = $("audience-total");
  if (status !== 200) {
    total.textContent = "–";
    total.dataset.state = "error";
    const where = (data.detail || []).map((p) => (p.loc || []).join(".") + ": " + p.msg);
    $("audience-error").textContent = [data.error, ...where].join(" — ");
    $("audience-error").hidden = false;
    return;
  }
  $("audience-error").hidden = true;
  total.textContent = data.total.toLocaleString("en");
  total.dataset.value = String(data.total);
  total.dataset.state = "done";
  $("population").textContent = `of ${data.population.toLocaleString("en")} persons, as of ` +
    data.as_of.slice(0, 16).replace("T", " ") + ` (${data.elapsed_ms} ms)`;
  const rows = $("rules").querySelectorAll("tbody tr");
  data.steps.forEach((step, i) => {
    if (!rows[i]) return;
    rows[i].querySelector(".own").textContent = step.matching.toLocaleString("en");
    rows[i].querySelector(".cumulative").textContent = step.cumulative.toLocaleString("en") +
      ` (${step.change >= 0 ? "+" : ""}${step.change.toLocaleString("en")})`;
  });
}

async function saveAudience() {
  const name = $("audience-name").value.trim();
  const { status, data } = await api("POST", "/audiences", { name, tree: currentTree() });
  $("save-result").textContent = status === 200
    ? `saved as #${data.audience_id} (${data.name} v${data.version}, ${data.total} persons)`
    : `not saved: ${data.error}` + (data.detail ? " — " + data.detail.map((p) => p.msg).join("; ") : "");
}

// ---- portrait --------------------------------------------------------------------------------
let viewer = null;
let portraitPage = 1;

function watermark(text) {
  const svg = `<svg xmlns='http://www.w3.org/2000/svg' width='260' height='140'>` +
    `<text x='10' y='80' transform='rotate(-20 130 70)' fill='rgba(29,53,87,0.13)' ` +
    `font-family='sans-serif' font-size='16'>${text.replace(/[<>&'"]/g, "")}</text></svg>`;
  const mark = $("watermark");
  mark.style.backgroundImage = `url("data:image/svg+xml;utf8,${encodeURIComponent(svg)}")`;
  mark.dataset.text = text;
  mark.title = text;
}

function pairs(dl, entries) {
  dl.replaceChildren(...entries.flatMap(([k, v]) => [el("dt", {}, k),
    el("dd", {}, v === null || v === undefined ? "—" : String(v))]));
}

function when(iso) { return iso ? iso.slice(0, 16).replace("T", " ") : "—"; }

async function openPortrait(page) {
  const id = $("person-id").value.trim();
  if (!id) return;
  portraitPage = page || 1;
  const { status, data } = await api("GET",
    `/persons/${encodeURIComponent(id)}?page=${portraitPage}&page_size=20`);
  const refused = $("portrait-refused");
  if (status !== 200) {
    $("portrait").hidden = true;
    refused.hidden = false;
    refused.dataset.status = String(status);
    refused.textContent = (status === 403 ? "Access refused: " : `Error ${status}: `) + data.error;
    return;
  }
  refused.hidden = true;
  $("portrait").hidden = false;
  viewer = data.viewer;
  watermark(`${viewer.agent_id} · ${new Date().toISOString().slice(0, 16).replace("T", " ")}`);
  $("portrait-title").textContent = `Person ${data.person_id}`;
  $("identifiers").replaceChildren(...data.identifiers.map((i) =>
    el("li", {}, `${i.type}: `, el("span", { class: "masked" }, i.masked || "(not recorded)"))));
  const p = data.profile, t = data.tags;
  pairs($("profile"), [["grade", p.grade], ["subject", p.subject], ["city", p.city],
    ["city tier", p.city_tier], ["leads", p.lead_count], ["first seen", when(p.first_seen)],
    ["last seen", when(p.last_seen)], ["source", t.fact.source], ["funnel step", t.fact.funnel_step]]);
  const pr = t.predictive;
  pairs($("predictive"), [["probability", pr.probability === null ? null : pr.probability.toFixed(3)],
    ["tier", pr.tier], ["channel", pr.channel], ["trend", pr.trend === null ? null :
      (pr.trend >= 0 ? "▲ +" : "▼ ") + pr.trend.toFixed(3)], ["scored", when(pr.scored_at)]]);
  pairs($("scores"), [["fit", t.score_2d.fit], ["interest", t.score_2d.interest],
    ["total", t.score_2d.total], ["RFM segment", t.rfm.segment], ["orders", t.rfm.frequency],
    ["monetary", t.rfm.monetary]]);
  $("leads").querySelector("tbody").replaceChildren(...data.leads.map((l) => el("tr", {},
    el("td", {}, l.lead_id), el("td", {}, when(l.created_at)), el("td", {}, l.channel),
    el("td", {}, l.funnel_step), el("td", {}, l.scores.map((s) =>
      `${when(s.scored_at)} ${s.probability.toFixed(3)} ${s.tier}`).join(" → ") || "—"))));
  const tl = data.timeline;
  $("timeline-info").textContent = `page ${tl.page} of ${tl.pages}, ${tl.total} events, newest first`;
  $("timeline").querySelector("tbody").replaceChildren(...tl.events.map((e) => el("tr", {},
    el("td", {}, when(e.event_time)), el("td", {}, e.event_type), el("td", {}, e.url || ""))));
  $("newer").disabled = tl.page <= 1;
  $("older").disabled = tl.page >= tl.pages;
}

// ---- wiring ----------------------------------------------------------------------------------
function show(view) {
  $("audience-view").hidden = view !== "audience";
  $("portrait-view").hidden = view !== "portrait";
  $("tab-audience").classList.toggle("active", view === "audience");
  $("tab-portrait").classList.toggle("active", view === "portrait");
}

$("tab-audience").addEventListener("click", () => show("audience"));
$("tab-portrait").addEventListener("click", () => show("portrait"));
$("add-tag").addEventListener("click", () => addRule("tag"));
$("add-behaviour").addEventListener("click", () => addRule("behaviour"));
$("combinator").addEventListener("change", scheduleCount);
$("save-audience").addEventListener("click", saveAudience);
$("open-portrait").addEventListener("click", () => openPortrait(1));
$("person-id").addEventListener("keydown", (e) => { if (e.key === "Enter") openPortrait(1); });
$("newer").addEventListener("click", () => openPortrait(portraitPage - 1));
$("older").addEventListener("click", () => openPortrait(portraitPage + 1));

if (!token) {
  $("auth-problem").textContent = "No agent token: open this page from the CRM " +
    "(/ui#token=<signed agent token>).";
  $("auth-problem").hidden = false;
} else {
  try {
    const claims = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    $("viewer").textContent = `${claims.sub} (${claims.role}${claims.team ? ", " + claims.team : ""})`;
  } catch (e) {
    $("viewer").textContent = "signed in";
  }
}
if (firstPerson) {
  $("person-id").value = firstPerson;
  show("portrait");
  openPortrait(1);
} else {
  show(firstView === "portrait" ? "portrait" : "audience");
}
