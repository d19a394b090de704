// The studio page: sketch dropped photos one after another (progress shown), re-draw every sketch as the blend
// slider moves (a small preview while it moves, full size when it stops), and show what joining gave the
// studio. Text from the server or from file names is only ever set as textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const HEADERS = { "X-Fedgai-Studio": "page" };
const state = { cards: [], style: -1, alpha: 0, preview: 320, queue: 0, done: 0 };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value; else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

async function getJson(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  if (!response.ok) throw new Error(await response.text());
  return response.json();
}

function showError(message) {
  $("errors").append(el("li", { text: message }));
}

// ------------------------------------------------------------------------------------------------ sketching
function sketchUrl(card, full) {
  const params = new URLSearchParams({ style: state.style, alpha: state.alpha });
  if (!full) params.set("size", state.preview);
  return `/api/sketches/${card.id}.png?${params}`;
}

function updateProgress(current) {
  const total = state.queue;
  $("progress").hidden = total === 0 || state.done === total;
  $("progress-bar").max = Math.max(total, 1);
  $("progress-bar").value = state.done;
  $("progress-text").textContent = current ? `sketching ${state.done + 1} of ${total}: ${current}` : "";
}

async function addFiles(files) {
  const list = Array.from(files);
  if (state.queue === state.done) { state.queue = 0; state.done = 0; }
  state.queue += list.length;
  for (const file of list) {
    updateProgress(file.name);
    await sketchOne(file);
    state.done += 1;
    updateProgress(null);
  }
}

async function sketchOne(file) {
  const url = `/api/sketches?name=${encodeURIComponent(file.name)}`;
  let response;
  try {
    response = await fetch(url, { method: "POST", body: file, headers: HEADERS, credentials: "same-origin" });
  } catch (err) {
    showError(`${file.name}: the page did not answer (${err.message})`);
    return;
  }
  const data = await response.json().catch(() => ({ error: `${file.name}: refused (${response.status})` }));
  if (!response.ok) { showError(data.error || `${file.name}: refused (${response.status})`); return; }
  const card = makeCard(file, data);
  state.cards.push(card);
  $("cards-section").hidden = false;
  await drawCard(card, true);
  updateZip();
}

function makeCard(file, data) {
  const photo = el("img", { alt: `photo ${data.name}`, class: "photo" });
  photo.src = URL.createObjectURL(file);
  const sketch = el("img", { alt: `sketch of ${data.name}`, class: "sketch" });
  const link = el("a", { download: data.download, text: "download sketch", class: "download" });
  const node = el("article", { class: "card", "data-id": data.id },
    el("div", { class: "meta" }, el("span", { text: data.name }), el("span", { text: `${data.width} × ${data.height} px` })),
    el("div", { class: "pair" },
      el("figure", {}, photo, el("figcaption", { text: "photo" })),
      el("figure", {}, sketch, el("figcaption", { class: "caption", text: "sketch, my style" }))),
    link);
  $("cards").prepend(node);
  return { id: data.id, node, sketch, link, caption: node.querySelector(".caption") };
}

async function drawCard(card, full) {
  const url = sketchUrl(card, full);
  const alpha = state.alpha;
  const response = await fetch(url, { credentials: "same-origin" });
  if (!response.ok) {
    const data = await response.json().catch(() => ({ error: `could not draw (${response.status})` }));
    showError(data.error);
    return;
  }
  const blob = await response.blob();
  const old = card.sketch.src;
  await new Promise((resolve) => {
    card.sketch.onload = resolve;
    card.sketch.onerror = resolve;
    card.sketch.src = URL.createObjectURL(blob);
  });
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
  card.sketch.dataset.alpha = String(alpha);
  card.sketch.dataset.full = String(full);
  card.link.href = sketchUrl(card, true);
  card.caption.textContent = alpha > 0 ? `sketch, ${Math.round(alpha * 100)} % towards ${styleName()}` : "sketch, my style";
}

function updateZip() {
  const params = new URLSearchParams({ ids: state.cards.map((c) => c.id).join(","), style: state.style, alpha: state.alpha });
  $("zip").href = `/api/sketches.zip?${params}`;
}

// ------------------------------------------------------------------------------------------------ blending
let drawing = false;
let wanted = null;

function styleName() {
  const option = $("style").selectedOptions[0];
  return option ? option.textContent : "the shared style";
}

// Re-draws never pile up: while one pass runs, later slider moves only leave the newest wish for the next pass.
function redraw(full) {
  wanted = { full: full || (wanted !== null && wanted.full) };
  if (!drawing) runRedraws();
}

async function runRedraws() {
  drawing = true;
  document.body.dataset.drawing = "true";
  while (wanted !== null) {
    const pass = wanted;
    wanted = null;
    for (const card of state.cards) await drawCard(card, pass.full);
  }
  drawing = false;
  document.body.dataset.drawing = "false";
  updateZip();
}

function setupBlend(blend) {
  if (!blend.available) { $("blend-note").textContent = blend.reason; return; }
  const usable = blend.styles.filter((s) => s.problem === null);
  for (const s of blend.styles.filter((s) => s.problem !== null)) {
    $("style-problems").append(el("li", { text: `${s.label}: not usable (${s.problem})` }));
  }
  if (usable.length === 0) {
    $("blend-note").textContent = blend.folder
      ? `${blend.reason} No usable shared style file in ${blend.folder}.`
      : `${blend.reason} No shared styles yet: put the *.style.json files other studios gave you (from \`fedgai share-style\`) in a folder and start the page with --styles FOLDER.`;
    return;
  }
  $("blend-note").textContent = `${blend.reason} Move the slider to draw every sketch from your own style (left) towards the chosen one (right).`;
  for (const s of usable) $("style").append(el("option", { value: s.index, text: s.label }));
  state.style = usable[0].index;
  $("blend-controls").hidden = false;
  $("style").addEventListener("change", () => { state.style = Number($("style").value); if (state.alpha > 0) redraw(true); });
  const slider = $("alpha");
  slider.addEventListener("input", () => { setAlpha(slider.value); redraw(false); });
  slider.addEventListener("change", () => { setAlpha(slider.value); redraw(true); });
}

function setAlpha(value) {
  state.alpha = Number(value);
  $("alpha-value").textContent = `${Math.round(state.alpha * 100)} %`;
}

// ------------------------------------------------------------------------------------------------ joining
function table(header, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, ...header.map((h) => el("th", typeof h === "string" ? { text: h } : h)))),
    el("tbody", {}, ...rows.map((row) => el("tr", {}, ...row.map((cell) => el("td", typeof cell === "string" ? { text: cell } : cell))))));
}

function showEvaluation(ev) {
  const box = $("evaluation");
  if (ev.note) { box.append(el("p", { class: "note", text: ev.note })); return; }
  box.append(el("p", { class: "quiet", text: `Held-out test pairs, scored by fedgai evaluate (${ev.written}, ${ev.source}).` }));
  const header = ["run", ...ev.columns.map((c) => ({ text: `${c.name} ${c.better === "lower" ? "↓" : "↑"}`, title: c.meaning }))];
  box.append(table(header, ev.rows.map((r) => [r.run, ...r.values])));
  for (const gain of ev.gains) {
    const items = gain.changes.map((c) => el("li", { class: c.better ? "better" : "worse",
      text: `${c.name}: ${c.percent > 0 ? "+" : ""}${c.percent} % (${c.better ? "better" : "not better"})` }));
    box.append(el("p", { text: `${gain.run} compared with training alone (${gain.vs}):` }), el("ul", {}, ...items));
  }
  if (ev.report) box.append(el("p", {}, el("a", { href: "/evaluation/report", target: "_blank", text: "the full evaluation report" })));
}

function showRounds(rounds) {
  const box = $("rounds");
  if (rounds.note) { box.append(el("p", { class: "note", text: rounds.note })); return; }
  const total = rounds.total ? ` of ${rounds.total}` : "";
  box.append(el("p", { text: `Federation: round ${rounds.done}${total} done.` }));
  const label = (v, yes, no) => (v === null || v === undefined ? "–" : v === true ? yes : v === false ? no : String(v));
  box.append(table(["round", "studios aggregated", "my update"],
    rounds.records.map((r) => [String(r.round), label(r.aggregated), label(r.accepted, "accepted", "dropped")])));
}

// ------------------------------------------------------------------------------------------------ start
function setupDrop() {
  const drop = $("drop");
  $("files").addEventListener("change", (e) => { addFiles(e.target.files); e.target.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); addFiles(e.dataTransfer.files); });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("files").click(); });
}

async function start() {
  setupDrop();
  try {
    const info = await getJson("/api/info");
    $("model").textContent = `Sketching with the ${info.model}.`;
    $("limits").textContent = `up to ${info.limits.max_mb} MB and ${info.limits.max_megapixels} megapixels per photo`;
    state.preview = info.preview;
    setupBlend(info.blend);
    const joining = await getJson("/api/joining");
    showEvaluation(joining.evaluation);
    showRounds(joining.rounds);
  } catch (err) {
    showError(`The page could not load its settings: ${err.message}`);
  }
  document.body.dataset.ready = "true";
}

start();
