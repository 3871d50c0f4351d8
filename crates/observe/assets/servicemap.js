// Myelin service map: polls /api/servicemap, draws workloads and edges as
// SVG, and lists the recent flows of the selected edge. No dependencies:
// everything this page needs is served by the agent.
"use strict";

const POLL_MS = 1500;
const SVG_NS = "http://www.w3.org/2000/svg";
const NODE_W = 176;
const NODE_H = 52;
const MARGIN = 24;
// Distance between parallel edges of one pair of nodes.
const PARALLEL_GAP = 58;

// The edge whose flows are listed; kept in the URL (#edge=N) so that a link
// or a screenshot can open on it.
let selected = parseSelection();
let lastView = null;

function parseSelection() {
  const match = /^#edge=(\d+)$/.exec(window.location.hash);
  return match ? Number(match[1]) : null;
}

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs || {})) {
    node.setAttribute(key, String(value));
  }
  if (parent) parent.appendChild(node);
  return node;
}

function html(name, attrs, text) {
  const node = document.createElement(name);
  for (const [key, value] of Object.entries(attrs || {})) {
    node.setAttribute(key, String(value));
  }
  if (text !== undefined) node.textContent = text;
  return node;
}

function protoPort(edge) {
  return edge.port ? `${edge.protocol}/${edge.port}` : edge.protocol;
}

function errText(edge) {
  return edge.error_ratio === null || edge.error_ratio === undefined
    ? "–"
    : `${(edge.error_ratio * 100).toFixed(1)}%`;
}

function isHttp(edge) {
  return edge.protocol === "HTTP" || edge.http_requests > 0;
}

// Columns by longest path from the sources, ignoring edges that close a
// cycle, so that clients sit left of the servers they call.
function layout(view, width, height) {
  const ids = view.nodes.map((n) => n.id);
  const out = new Map(ids.map((id) => [id, []]));
  for (const e of view.edges) {
    if (e.source !== e.destination && out.has(e.source) && out.has(e.destination)) {
      out.get(e.source).push(e.destination);
    }
  }
  const state = new Map();
  const order = [];
  const back = new Set();
  function visit(id) {
    state.set(id, "open");
    for (const next of out.get(id)) {
      const s = state.get(next);
      if (s === "open") back.add(`${id}\u0000${next}`);
      else if (s === undefined) visit(next);
    }
    state.set(id, "done");
    order.push(id);
  }
  for (const id of ids) if (!state.has(id)) visit(id);
  const rank = new Map(ids.map((id) => [id, 0]));
  for (const id of order.reverse()) {
    for (const next of out.get(id)) {
      if (!back.has(`${id}\u0000${next}`)) {
        rank.set(next, Math.max(rank.get(next), rank.get(id) + 1));
      }
    }
  }
  const columns = [];
  for (const id of ids) {
    const r = rank.get(id);
    (columns[r] = columns[r] || []).push(id);
  }
  const pos = new Map();
  const preds = new Map(ids.map((id) => [id, []]));
  for (const [from, tos] of out) for (const to of tos) preds.get(to).push(from);
  // A map larger than the panel gets the room it needs and scrolls, rather
  // than drawing nodes on top of each other.
  const tallest = Math.max(1, ...columns.map((c) => c.length));
  width = Math.max(width, columns.length * (NODE_W + 150) + 2 * MARGIN);
  height = Math.max(height, tallest * (NODE_H + 30) + 2 * MARGIN);
  const colWidth = (width - 2 * MARGIN) / Math.max(columns.length, 1);
  columns.forEach((column, c) => {
    // Order a column by where its callers sit, to keep edges short.
    const key = (id) => {
      const ys = preds.get(id).filter((p) => pos.has(p)).map((p) => pos.get(p).y);
      return ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : -1;
    };
    if (c > 0) column.sort((a, b) => key(a) - key(b) || a.localeCompare(b));
    const rowHeight = (height - 2 * MARGIN) / column.length;
    column.forEach((id, i) => {
      pos.set(id, {
        x: MARGIN + colWidth * (c + 0.5),
        y: MARGIN + rowHeight * (i + 0.5),
      });
    });
  });
  return { pos, width, height };
}

// Where the segment from a node's centre toward `to` leaves its shape.
function boundary(center, to, kind) {
  const dx = to.x - center.x;
  const dy = to.y - center.y;
  if (dx === 0 && dy === 0) return { x: center.x, y: center.y };
  const a = NODE_W / 2 + 3;
  const b = NODE_H / 2 + 3;
  let t;
  if (kind === "rect") {
    t = Math.min(dx ? a / Math.abs(dx) : Infinity, dy ? b / Math.abs(dy) : Infinity);
  } else {
    t = 1 / Math.sqrt((dx / a) ** 2 + (dy / b) ** 2);
  }
  return { x: center.x + dx * t, y: center.y + dy * t };
}

function shapeOf(node) {
  return node.kind === "workload" || node.kind === "pod" ? "rect" : "ellipse";
}

function drawDefs(svg) {
  const defs = el("defs", {}, svg);
  for (const status of ["forwarded", "mixed", "denied"]) {
    const marker = el("marker", {
      id: `arrow-${status}`,
      viewBox: "0 0 10 10",
      refX: 9,
      refY: 5,
      markerWidth: 11,
      markerHeight: 11,
      markerUnits: "userSpaceOnUse",
      orient: "auto",
    }, defs);
    el("path", { d: "M0,0 L10,5 L0,10 z", class: `arrow-${status}` }, marker);
  }
}

function drawNode(svg, node, p) {
  const g = el("g", {
    class: `node ${node.kind}`,
    "data-node-id": node.id,
    transform: `translate(${p.x},${p.y})`,
  }, svg);
  el("title", {}, g).textContent = node.label;
  if (shapeOf(node) === "rect") {
    el("rect", { x: -NODE_W / 2, y: -NODE_H / 2, width: NODE_W, height: NODE_H, rx: 10 }, g);
  } else {
    el("ellipse", { rx: NODE_W / 2, ry: NODE_H / 2 }, g);
  }
  const name = el("text", { class: "name", "text-anchor": "middle", y: -2 }, g);
  name.textContent = node.name;
  const meta = el("text", { class: "meta", "text-anchor": "middle", y: 15 }, g);
  const where = node.namespace || node.kind;
  meta.textContent = node.identity ? `${where} · ID ${node.identity}` : where;
}

function edgeLines(edge) {
  const lines = [{ cls: "title", text: protoPort(edge) }];
  if (isHttp(edge)) {
    lines.push({ cls: "rate", text: `${edge.request_rate.toFixed(2)} req/s · ${errText(edge)} err` });
  } else {
    lines.push({ cls: "rate", text: `${edge.flow_rate.toFixed(2)} flows/s` });
  }
  if (edge.dropped > 0) {
    lines.push({ cls: "drops", text: `${edge.dropped} drop${edge.dropped === 1 ? "" : "s"}` });
  }
  return lines;
}

// Area two boxes share, counting a 2 px gap around them as shared.
function overlapArea(a, b) {
  const gap = 2;
  const w = Math.min(a.x + a.w, b.x + b.w) - Math.max(a.x, b.x) + gap;
  const h = Math.min(a.y + a.h, b.y + b.h) - Math.max(a.y, b.y) + gap;
  return w > 0 && h > 0 ? w * h : 0;
}

// Where a label goes: the middle of its edge if that is free, else the
// nearest free spot along the curve, or a little to its side (edges that
// cross at their middles, or run side by side, would otherwise stack their
// labels); a box that covers no other label and no node, or failing that
// the one that covers least. `taken` grows by the chosen box.
function placeLabel(geometry, size, taken) {
  const c = geometry.curve;
  const candidates = [];
  for (const t of c ? [0.5, 0.42, 0.58, 0.34, 0.66, 0.27, 0.73, 0.2, 0.8] : [0.5]) {
    for (const shift of c ? [0, 16, -16, 32, -32, 48, -48] : [0]) {
      candidates.push({ t, shift, penalty: Math.abs(t - 0.5) * 200 + Math.abs(shift) });
    }
  }
  candidates.sort((a, b) => a.penalty - b.penalty);
  let best = null;
  for (const { t, shift } of candidates) {
    let p = geometry.mid;
    if (c) {
      const u = 1 - t;
      const tx = 2 * u * (c.ctrl.x - c.start.x) + 2 * t * (c.end.x - c.ctrl.x);
      const ty = 2 * u * (c.ctrl.y - c.start.y) + 2 * t * (c.end.y - c.ctrl.y);
      const len = Math.hypot(tx, ty) || 1;
      p = {
        x: u * u * c.start.x + 2 * u * t * c.ctrl.x + t * t * c.end.x - (ty / len) * shift,
        y: u * u * c.start.y + 2 * u * t * c.ctrl.y + t * t * c.end.y + (tx / len) * shift,
      };
    }
    const box = { x: p.x + size.x, y: p.y + size.y, w: size.w, h: size.h };
    const cost = taken.reduce((sum, other) => sum + overlapArea(box, other), 0);
    if (best === null || cost < best.cost) best = { p, box, cost };
    if (cost === 0) break;
  }
  taken.push(best.box);
  return best;
}

function drawEdge(layer, labels, edge, geometry, taken) {
  const g = el("g", {
    class: `edge ${edge.status}${edge.id === selected ? " selected" : ""}`,
    "data-edge-id": edge.id,
    "data-source": edge.source,
    "data-destination": edge.destination,
    "data-protocol": edge.protocol,
    "data-port": edge.port,
  }, layer);
  el("title", {}, g).textContent =
    `${edge.source} → ${edge.destination} ${protoPort(edge)}: ${edge.flows} flows, ${edge.dropped} dropped`;
  const width = 1.8 + Math.min(4, Math.log2(1 + edge.flow_rate));
  el("path", {
    class: "line",
    d: geometry.d,
    "stroke-width": width.toFixed(2),
    "marker-end": `url(#arrow-${edge.status})`,
  }, g);
  el("path", { class: "hit", d: geometry.d }, g);
  g.addEventListener("click", () => select(edge.id));

  // Labels go in a layer above every line, so that no line crosses them.
  const label = el("g", {
    class: `edge-label ${edge.status}${edge.id === selected ? " selected" : ""}`,
    "data-edge-id": edge.id,
  }, labels);
  const box = el("g", {}, label);
  const rect = el("rect", {}, box);
  const lines = edgeLines(edge);
  lines.forEach((line, i) => {
    const t = el("text", { class: line.cls, "text-anchor": "middle", y: i * 14 }, box);
    t.textContent = line.text;
  });
  const bb = box.getBBox();
  rect.setAttribute("x", bb.x - 6);
  rect.setAttribute("y", bb.y - 3);
  rect.setAttribute("width", bb.width + 12);
  rect.setAttribute("height", bb.height + 6);
  const dy = ((lines.length - 1) * 14) / 2;
  // The label's box relative to the point it is centred on.
  const size = { x: bb.x - 6, y: bb.y - 3 - dy + 4, w: bb.width + 12, h: bb.height + 6 };
  const { p, box: placed } = placeLabel(geometry, size, taken);
  box.setAttribute("transform", `translate(${p.x},${p.y - dy + 4})`);
  label.setAttribute("data-box", [placed.x, placed.y, placed.w, placed.h].map((v) => v.toFixed(1)).join(" "));
  label.addEventListener("click", () => select(edge.id));
}

// Paths of all edges: parallel edges of a pair fan out as curves, in a frame
// shared by both directions so that A→B and B→A never overlap.
function geometries(view, pos, nodes) {
  const groups = new Map();
  for (const e of view.edges) {
    const [a, b] = [e.source, e.destination].sort();
    const key = `${a}\u0000${b}`;
    (groups.get(key) || groups.set(key, []).get(key)).push(e);
  }
  const result = new Map();
  for (const [key, edges] of groups) {
    const [a, b] = key.split("\u0000");
    const pa = pos.get(a);
    const pb = pos.get(b);
    if (!pa || !pb) continue;
    if (a === b) {
      edges.forEach((e, i) => {
        const lift = 48 + i * 34;
        const top = pa.y - NODE_H / 2;
        result.set(e.id, {
          d: `M${pa.x - 20},${top} C${pa.x - 60},${top - lift} ${pa.x + 60},${top - lift} ${pa.x + 20},${top}`,
          mid: { x: pa.x, y: top - lift * 0.75 - 8 },
        });
      });
      continue;
    }
    const len = Math.hypot(pb.x - pa.x, pb.y - pa.y) || 1;
    const normal = { x: -(pb.y - pa.y) / len, y: (pb.x - pa.x) / len };
    edges.forEach((e, i) => {
      const offset = (i - (edges.length - 1) / 2) * PARALLEL_GAP;
      const s = pos.get(e.source);
      const d = pos.get(e.destination);
      const mid = { x: (pa.x + pb.x) / 2 + normal.x * offset, y: (pa.y + pb.y) / 2 + normal.y * offset };
      // Control point of a quadratic curve whose midpoint is `mid`.
      const ctrl = { x: 2 * mid.x - (s.x + d.x) / 2, y: 2 * mid.y - (s.y + d.y) / 2 };
      const start = boundary(s, ctrl, shapeOf(nodes.get(e.source)));
      const end = boundary(d, ctrl, shapeOf(nodes.get(e.destination)));
      result.set(e.id, {
        d: `M${start.x.toFixed(1)},${start.y.toFixed(1)} Q${ctrl.x.toFixed(1)},${ctrl.y.toFixed(1)} ${end.x.toFixed(1)},${end.y.toFixed(1)}`,
        mid,
        // The curve between the centres: at t = 0.5 it passes `mid`.
        curve: { start: s, ctrl, end: d },
      });
    });
  }
  return result;
}

function drawGraph(view) {
  const svg = document.getElementById("map");
  const panel = document.getElementById("graph");
  // The panel's inner size, less a little so that no scroll bar appears
  // when the map fits.
  const { pos, width: w, height: h } = layout(view, panel.clientWidth - 2, panel.clientHeight - 2);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  svg.replaceChildren();
  document.getElementById("empty").hidden = view.edges.length > 0;
  drawDefs(svg);
  const nodes = new Map(view.nodes.map((n) => [n.id, n]));
  const edgeLayer = el("g", { class: "edges" }, svg);
  const nodeLayer = el("g", { class: "nodes" }, svg);
  const labelLayer = el("g", { class: "labels" }, svg);
  for (const node of view.nodes) drawNode(nodeLayer, node, pos.get(node.id));
  const paths = geometries(view, pos, nodes);
  // Nodes are in the way of labels from the start.
  const taken = view.nodes.map((n) => {
    const p = pos.get(n.id);
    return { x: p.x - NODE_W / 2, y: p.y - NODE_H / 2, w: NODE_W, h: NODE_H };
  });
  for (const edge of view.edges) {
    const geometry = paths.get(edge.id);
    if (geometry) drawEdge(edgeLayer, labelLayer, edge, geometry, taken);
  }
}

function drawTable(view) {
  const labels = new Map(view.nodes.map((n) => [n.id, n.label]));
  const body = document.querySelector("#edges tbody");
  body.replaceChildren();
  for (const edge of view.edges) {
    const row = html("tr", {
      class: `${edge.status}${edge.id === selected ? " selected" : ""}`,
      "data-edge-id": edge.id,
    });
    row.appendChild(html("td", {}, `${labels.get(edge.source) || edge.source} → ${labels.get(edge.destination) || edge.destination}`));
    row.appendChild(html("td", {}, protoPort(edge)));
    row.appendChild(html("td", { class: "num" }, isHttp(edge) ? edge.request_rate.toFixed(2) : "–"));
    row.appendChild(html("td", { class: "num" }, errText(edge)));
    row.appendChild(html("td", { class: `num${edge.dropped ? " bad" : ""}` }, String(edge.dropped)));
    row.addEventListener("click", () => select(edge.id));
    body.appendChild(row);
  }
}

function drawStatus(view, error) {
  const status = document.getElementById("status");
  if (error) {
    status.className = "error";
    status.textContent = `cannot reach the agent: ${error}`;
    return;
  }
  const parts = [
    `${view.nodes.length} workloads`,
    `${view.edges.length} edges`,
    `rates over ${view.window_seconds} s`,
  ];
  if (view.lost_flows) parts.push(`${view.lost_flows} flows lost`);
  if (view.evicted_edges) parts.push(`${view.evicted_edges} edges evicted`);
  parts.push(`updated ${new Date().toLocaleTimeString()}`);
  status.className = "";
  status.textContent = parts.join(" · ");
}

async function drawFlows(view) {
  const title = document.getElementById("details-title");
  const hint = document.getElementById("details-hint");
  const list = document.getElementById("flows");
  const edge = view && view.edges.find((e) => e.id === selected);
  if (!edge) {
    title.textContent = "Recent flows";
    hint.hidden = false;
    hint.textContent = selected === null
      ? "Select an edge to list its recent flows."
      : "That edge has expired; select another.";
    list.replaceChildren();
    return;
  }
  const labels = new Map(view.nodes.map((n) => [n.id, n.label]));
  title.textContent = `Recent flows: ${labels.get(edge.source)} → ${labels.get(edge.destination)} ${protoPort(edge)}`;
  try {
    const answer = await fetch(`/api/edges/${edge.id}/flows`, { cache: "no-store" });
    if (!answer.ok) throw new Error(`${answer.status} ${(await answer.text()).trim()}`);
    const data = await answer.json();
    hint.hidden = data.flows.length > 0;
    hint.textContent = "No flows kept for this edge.";
    // Newest first: the live end of the list stays in view.
    list.replaceChildren(...data.flows.slice().reverse().map((f) => html("li", { class: f.verdict }, f.line)));
  } catch (error) {
    hint.hidden = false;
    hint.textContent = `cannot load flows: ${error.message}`;
  }
}

function select(id) {
  selected = id;
  history.replaceState(null, "", `#edge=${id}`);
  if (lastView) render(lastView);
}

function render(view) {
  lastView = view;
  drawGraph(view);
  drawTable(view);
  return drawFlows(view);
}

async function refresh() {
  try {
    const answer = await fetch("/api/servicemap", { cache: "no-store" });
    if (!answer.ok) throw new Error(`${answer.status} ${answer.statusText}`);
    const view = await answer.json();
    drawStatus(view, null);
    await render(view);
  } catch (error) {
    drawStatus(null, error.message);
  } finally {
    setTimeout(refresh, POLL_MS);
  }
}

window.addEventListener("resize", () => lastView && render(lastView));
window.addEventListener("hashchange", () => {
  selected = parseSelection();
  if (lastView) render(lastView);
});
refresh();
