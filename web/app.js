/* llama_selfmod's web page: the LLooM (tree exploration) and the Inspector
 * (token-by-token view of a generation). Plain browser JavaScript, talking
 * to the server's own API. */
'use strict';

const $ = (id) => document.getElementById(id);
const SVG_NS = 'http://www.w3.org/2000/svg';

const state = {
  props: null,
  loomHistory: [],      // stories before each accept, for undo
  loomBusy: false,
  lastTree: null,
  insp: null,           // the generation on screen
  abort: null,
  autoChain: 0,         // suggestions auto-accepted in a row
};

const MODEL_COLOURS = ['#3a6ff7', '#e07b00', '#2a9d5b', '#b44be1', '#d9534f', '#1aa3b8', '#8a6d3b', '#555'];

/* ------------------------------------------------------------------ */
/* HTTP                                                                 */
/* ------------------------------------------------------------------ */

function headers() {
  const h = { 'Content-Type': 'application/json' };
  const key = $('api-key').value.trim();
  if (key) h.Authorization = 'Bearer ' + key;
  return h;
}

async function api(path, body) {
  const res = await fetch(path, body === undefined
    ? { headers: headers() }
    : { method: 'POST', headers: headers(), body: JSON.stringify(body) });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error((json.error && json.error.message) || ('HTTP ' + res.status));
  return json;
}

/* Server-sent events from a POST: calls onData(json) per event. */
async function streamPost(path, body, onData, signal) {
  const res = await fetch(path, { method: 'POST', headers: headers(), body: JSON.stringify(body), signal });
  if (!res.ok) {
    const json = await res.json().catch(() => ({}));
    throw new Error((json.error && json.error.message) || ('HTTP ' + res.status));
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let at;
    while ((at = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, at);
      buf = buf.slice(at + 2);
      for (const line of block.split('\n')) {
        if (!line.startsWith('data: ')) continue;
        const data = line.slice(6);
        if (data === '[DONE]') return;
        const json = JSON.parse(data);
        if (json.error) throw new Error(json.error.message);
        onData(json);
      }
    }
  }
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

const fmt = (x, d = 3) => (typeof x === 'number' && isFinite(x) ? x.toFixed(d) : '–');
const visible = (s) => s.replace(/\n/g, '↵').replace(/ /g, '·');
const confidenceColor = (p) => `hsl(${Math.round(Math.max(0, Math.min(1, p)) * 120)}, 60%, 86%)`;

/* ------------------------------------------------------------------ */
/* Start-up                                                             */
/* ------------------------------------------------------------------ */

async function loadProps() {
  try {
    const props = await api('/props');
    state.props = props;
    const select = $('model');
    select.innerHTML = '';
    props.models.forEach((m) => select.append(el('option', { value: m }, m)));
    $('server-status').textContent = `${props.n_models} model${props.n_models > 1 ? 's' : ''}, ${props.total_slots} slots, ctx ${props.n_ctx}`;
    const ops = $('operators');
    ops.innerHTML = '';
    for (const name of props.operators) {
      ops.append(el('label', {}, el('input', { type: 'checkbox', value: name, class: 'op' }), ' ' + name));
    }
    const modes = $('fusion_mode');
    modes.innerHTML = '';
    props.fusion_modes.forEach((m) => modes.append(el('option', { value: m }, m)));
    // With several models: each can be switched off, and any can be the reference.
    const members = props.n_models > 1 ? props.models.slice(1) : [];
    const ref = $('fusion_reference');
    const switches = $('model-switches');
    ref.innerHTML = '';
    switches.innerHTML = '';
    members.forEach((name, m) => {
      ref.append(el('option', { value: String(m) }, name));
      const box = el('input', { type: 'checkbox', id: 'model_on_' + m, class: 'model-on', checked: 'checked' });
      const swatch = el('span', { class: 'swatch' });
      swatch.style.background = MODEL_COLOURS[m % MODEL_COLOURS.length];
      switches.append(el('label', { title: 'off: its weight is 0' }, box, ' ', swatch, ' ' + name));
    });
    capInputs(props);
    updateFusionBox();
  } catch (e) {
    $('server-status').textContent = 'server: ' + e.message;
  }
}

/* Inputs hold only what the server allows: its beams, its context. */
function capInputs(props) {
  const cap = (id, max) => {
    const input = $(id);
    input.max = String(max);
    if (Number(input.value) > max) input.value = String(max);
  };
  if (props.loom_max_beams) cap('beam_limit', props.loom_max_beams);
  if (props.n_ctx) {
    cap('max_depth', Math.min(512, props.n_ctx - 1));
    cap('max_tokens', props.n_ctx - 1);
  }
}

/* A number typed beyond an input's bounds is brought back inside them. */
function clampNumber(input) {
  const v = Number(input.value);
  if (input.value === '' || !isFinite(v)) return;
  if (input.max !== '' && v > Number(input.max)) input.value = input.max;
  if (input.min !== '' && v < Number(input.min)) input.value = input.min;
}

function updateFusionBox() {
  const fused = state.props && state.props.n_models > 1 && $('model').value === state.props.default_model;
  $('fusion-box').classList.toggle('hidden', !fused);
}

function showView(name) {
  document.querySelectorAll('.tab').forEach((t) => t.classList.toggle('active', t.dataset.view === name));
  $('view-loom').classList.toggle('hidden', name !== 'loom');
  $('view-inspector').classList.toggle('hidden', name !== 'inspector');
}

/* ------------------------------------------------------------------ */
/* LLooM                                                                */
/* ------------------------------------------------------------------ */

function loomParams() {
  const num = (id) => Number($(id).value);
  state.lastPrefix = $('story').value;
  return {
    model: $('model').value || undefined,
    prefix: $('story').value,
    max_depth: num('max_depth'),
    beam_limit: num('beam_limit'),
    cutoff: num('cutoff'),
    multiplier: num('multiplier'),
    split_limit: num('split_limit'),
    auto_stop: $('auto_stop').checked,
    stop_chars: $('stop_chars').value,
    score: $('score').value,
  };
}

async function expand() {
  if (state.loomBusy) return null;
  state.loomBusy = true;
  $('expand').disabled = true;
  $('loom-status').textContent = 'expanding…';
  $('loom-status').classList.remove('error');
  const t0 = performance.now();
  try {
    const tree = await api('/loom/expand', loomParams());
    state.lastTree = tree;
    renderSuggestions(tree);
    renderTree(tree);
    $('export_dot').disabled = $('export_png').disabled = !tree.nodes.length;
    const wall = performance.now() - t0;
    const rate = tree.elapsed_ms > 0 ? tree.tokens_decoded / (tree.elapsed_ms / 1000) : 0;
    $('loom-status').textContent =
      `${tree.suggestions.length} suggestions in ${fmt(tree.elapsed_ms, 1)} ms, ${fmt(rate, 0)} tokens/s ` +
      `(${tree.levels} levels, up to ${tree.max_live_beams} beams at once, ${tree.decode_calls} decode calls; ` +
      `${fmt(wall, 0)} ms with HTTP)`;
    if (tree.suggestions.length === 1 && $('auto_accept').checked && state.autoChain < 20) {
      state.autoChain++;
      state.loomBusy = false;
      return await accept(shownText(tree.suggestions[0]));
    }
    state.autoChain = 0;
    return tree;
  } catch (e) {
    $('loom-status').textContent = 'error: ' + e.message;
    $('loom-status').classList.add('error');
    return null;
  } finally {
    state.loomBusy = false;
    $('expand').disabled = false;
  }
}

/* A suggestion as shown: without its leading space (the LLooM's way;
 * "prefix space" puts one back when it is accepted). */
const shownText = (s) => (s.text.startsWith(' ') ? s.text.slice(1) : s.text);

/* A suggestion's weight: its probability (log scores) or its score
 * (sums of probabilities). Bars are drawn relative to the best one. */
function weight(tree, s) {
  return tree.params.score === 'logprob' ? Math.exp(s.score) : s.score;
}

function renderSuggestions(tree) {
  const list = $('suggestions');
  list.innerHTML = '';
  if (!tree.suggestions.length) {
    list.append(el('li', { class: 'muted' }, 'No suggestions.'));
    return;
  }
  const best = Math.max(...tree.suggestions.map((s) => weight(tree, s)), 1e-12);
  tree.suggestions.forEach((s, i) => {
    const frac = Math.max(0, Math.min(1, weight(tree, s) / best));
    const bar = el('div', { class: 'bar', title: `score ${fmt(s.score, 4)}` }, el('span'));
    bar.firstChild.style.width = (frac * 100).toFixed(1) + '%';
    const text = el('span', { class: 'sugg-text', contenteditable: 'true', spellcheck: 'false', title: 'edit, then Enter to accept' });
    // The tokens' pieces, the first without its leading space, the last cut
    // where the suggestion's text ends (after its stop character).
    let left = shownText(s).length;
    s.tokens.forEach((t, k) => {
      let piece = k === 0 && s.text.startsWith(' ') ? t.piece.replace(/^ /, '') : t.piece;
      piece = piece.slice(0, Math.max(0, left));
      left -= piece.length;
      if (!piece) return;
      const span = el('span', { title: `${JSON.stringify(t.piece)} p=${fmt(t.prob)}` }, piece);
      span.style.background = confidenceColor(t.prob);
      text.append(span);
    });
    text.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter') {
        ev.preventDefault();
        accept(text.textContent);
      }
    });
    const label = el('div', { class: 'bar-label' }, tree.params.score === 'logprob' ? `p ${fmt(weight(tree, s) * 100, 1)}%` : `score ${fmt(s.score, 2)}`);
    const row = el('li', { class: 'suggestion', 'data-index': String(i) },
      el('div', {}, bar, label), text,
      el('button', { class: 'accept', title: 'accept', onclick: () => accept(text.textContent) }, '➜'));
    list.append(row);
  });
}

function accept(text) {
  state.loomHistory.push($('story').value);
  $('story').value += ($('prefix_space').checked ? ' ' : '') + text;
  $('undo').disabled = false;
  return expand();
}

function undo() {
  if (!state.loomHistory.length) return;
  $('story').value = state.loomHistory.pop();
  $('undo').disabled = state.loomHistory.length === 0;
  expand();
}

async function autopilot() {
  const n = Math.max(1, Number($('autopilot-n').value) || 1);
  $('autopilot').disabled = true;
  try {
    let tree = state.lastTree && state.lastTree.suggestions.length ? state.lastTree : await expand();
    for (let i = 0; i < n && tree && tree.suggestions.length; i++) {
      $('loom-status').textContent = `autopilot ${i + 1}/${n}…`;
      tree = await accept(shownText(tree.suggestions[0]));
    }
  } finally {
    $('autopilot').disabled = false;
  }
}

/* The tree, left to right: depth on x, leaves one per row, a parent
 * centred on its children. */
function renderTree(tree) {
  const box = $('tree');
  box.innerHTML = '';
  const nodes = tree.nodes;
  if (!nodes.length) return;
  const children = nodes.map(() => []);
  const roots = [];
  nodes.forEach((n, i) => (n.parent < 0 ? roots : children[n.parent]).push(i));
  const y = new Array(nodes.length);
  let row = 0;
  const place = (i) => {
    if (!children[i].length) { y[i] = row++; return; }
    children[i].forEach(place);
    y[i] = (y[children[i][0]] + y[children[i][children[i].length - 1]]) / 2;
  };
  roots.forEach(place);
  const rowH = 22, padX = 64, padY = 14;
  const maxDepth = Math.max(...nodes.map((n) => n.depth));
  // Columns shrink to fit the panel, down to a readable minimum.
  const colW = Math.max(64, Math.min(110, Math.floor(((box.clientWidth || 700) - padX - 20) / maxDepth)));
  // Narrow columns show only the token; its probability is in the tooltip,
  // the box's shade and the edge's width.
  const showPercent = colW >= 100;
  const chars = Math.max(3, Math.floor((colW - (showPercent ? 52 : 24)) / 6.6));
  const width = padX + maxDepth * colW + 20;
  const height = padY * 2 + Math.max(1, row) * rowH;
  const s = svg('svg', { width, height, viewBox: `0 0 ${width} ${height}` });
  const pos = (i) => [padX + (nodes[i].depth - 1) * colW, padY + y[i] * rowH];
  const rootY = padY + ((row - 1) / 2) * rowH;
  s.append(Object.assign(svg('text', { x: 4, y: rootY + 4 }), { textContent: 'prefix' }));
  nodes.forEach((n, i) => {
    const [x1, y1] = n.parent < 0 ? [44, rootY] : pos(n.parent).map((v, k) => (k === 0 ? v + colW - 14 : v));
    const [x2, y2] = pos(i);
    s.append(svg('path', {
      class: 'edge',
      d: `M${x1},${y1} C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2},${y2}`,
      'stroke-width': (0.6 + 3 * n.prob).toFixed(2),
    }));
  });
  const leafSuggestion = new Map(tree.suggestions.map((sg) => [sg.node, sg]));
  nodes.forEach((n, i) => {
    const [x, yy] = pos(i);
    const leaf = !children[i].length;
    const g = svg('g', { class: 'node' + (leaf ? ' leaf' : ''), transform: `translate(${x},${yy})` });
    const label = visible(n.piece).slice(0, chars);
    g.append(svg('rect', { x: 0, y: -8, width: colW - 16, height: 16, rx: 3, 'fill-opacity': (0.35 + 0.65 * n.prob).toFixed(2) }));
    const t = svg('text', { x: 4, y: 4 });
    t.textContent = showPercent ? `${label} ${Math.round(n.prob * 100)}%` : label;
    g.append(t);
    const title = svg('title');
    title.textContent = `${JSON.stringify(n.piece)}  p=${fmt(n.prob)}  score=${fmt(n.score)}` +
      (n.end === 'beam_limit' ? '  dropped: better beams took the places' : n.end ? '  end: ' + n.end : '');
    g.append(title);
    const sg = leafSuggestion.get(i);
    if (n.end === 'beam_limit') g.classList.add('dropped');
    if (leaf && sg) g.addEventListener('click', () => accept(shownText(sg)));
    s.append(g);
  });
  box.append(s);
  // Show the prefix: on a narrow screen the first rows are far-right leaves.
  box.scrollTop = Math.max(0, rootY - box.clientHeight / 2);
}

/* Saves text or a data URL as a file. */
function download(name, href) {
  const a = el('a', { href, download: name });
  document.body.append(a);
  a.click();
  a.remove();
}

/* The tree in Graphviz's DOT: the prefix, each token with its probability,
 * edges as thick as they are probable; dropped beams grey. */
function treeDot(tree) {
  const q = (s) => '"' + s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n') + '"';
  const lines = ['digraph lloom {', '  rankdir=LR;', '  node [shape=box, fontname="monospace"];',
    `  prefix [label=${q(state.lastPrefix || 'prefix')}];`];
  tree.nodes.forEach((n, i) => {
    const colour = n.end === 'beam_limit' ? ', color=grey, fontcolor=grey' : n.end ? ', color=darkgreen' : '';
    lines.push(`  n${i} [label=${q(n.piece + '\n' + Math.round(n.prob * 100) + '%')}${colour}];`);
    lines.push(`  ${n.parent < 0 ? 'prefix' : 'n' + n.parent} -> n${i} [penwidth=${(0.5 + 3 * n.prob).toFixed(2)}];`);
  });
  lines.push('}');
  return lines.join('\n') + '\n';
}

function exportDot() {
  if (!state.lastTree) return;
  download('lloom-tree.dot', 'data:text/vnd.graphviz;charset=utf-8,' + encodeURIComponent(treeDot(state.lastTree)));
}

/* The drawn tree as a PNG: its SVG with the page's tree styles inlined,
 * painted on a white canvas. */
function exportPng() {
  const drawn = document.querySelector('#tree svg');
  if (!drawn) return Promise.resolve();
  const copy = drawn.cloneNode(true);
  copy.setAttribute('xmlns', SVG_NS);
  const style = document.createElementNS(SVG_NS, 'style');
  style.textContent = 'text{font-family:monospace;font-size:11px}.node rect{fill:#eef2ff;stroke:#9db3f5}' +
    '.node.leaf rect{fill:#e7f7ea;stroke:#86c795}.node.dropped rect{fill:#f0f0f0;stroke:#bbb}.edge{stroke:#b7bfd0;fill:none}';
  copy.prepend(style);
  const img = new Image();
  const w = Number(drawn.getAttribute('width')), h = Number(drawn.getAttribute('height'));
  return new Promise((resolve) => {
    img.onload = () => {
      const canvas = el('canvas', { width: String(w), height: String(h) });
      const ctx = canvas.getContext('2d');
      ctx.fillStyle = '#fff';
      ctx.fillRect(0, 0, w, h);
      ctx.drawImage(img, 0, 0);
      download('lloom-tree.png', canvas.toDataURL('image/png'));
      resolve();
    };
    img.src = 'data:image/svg+xml;charset=utf-8,' + encodeURIComponent(new XMLSerializer().serializeToString(copy));
  });
}

/* ------------------------------------------------------------------ */
/* Inspector                                                            */
/* ------------------------------------------------------------------ */

function inspectorRequest() {
  const num = (id) => Number($(id).value);
  const selfmod = {
    enabled: $('sm_enabled').checked,
    aggressive: $('sm_aggressive').checked,
    retract: $('sm_retract').value === 'auto' ? 'auto' : $('sm_retract').value === 'true',
    max_retractions: num('sm_max_retractions'),
    confidence_threshold: num('sm_confidence'),
    critical_threshold: num('sm_critical'),
  };
  const ops = [...document.querySelectorAll('.op:checked')].map((c) => c.value);
  for (const spec of $('operator_specs').value.split(/\s+/)) if (spec) ops.push(spec);
  if (ops.length) selfmod.operators = ops;
  if (!$('fusion-box').classList.contains('hidden')) {
    selfmod.fusion_mode = $('fusion_mode').value;
    selfmod.fusion_reference = Number($('fusion_reference').value) || 0;
    const switches = [...document.querySelectorAll('.model-on')];
    let w = $('fusion_weights').value.split(',').map((x) => x.trim()).filter(Boolean).map(Number);
    // A model switched off weighs 0 (VisuaLL's checkboxes).
    if (switches.some((c) => !c.checked)) {
      if (w.length !== switches.length) w = switches.map(() => 1);
      w = w.map((x, m) => (switches[m].checked ? x : 0));
    }
    if (w.length) selfmod.fusion_weights = w;
  }
  const system = $('system').value.trim();
  const req = {
    model: $('model').value || undefined,
    max_tokens: num('max_tokens'),
    temperature: num('temperature'),
    top_p: num('top_p'),
    logprobs: num('top_logprobs'),
    stream: true,
    selfmod,
  };
  if (num('seed') >= 0) req.seed = num('seed');
  if ($('stop_str').value) req.stop = $('stop_str').value;
  // With a system prompt it is a chat, rendered through the model's template.
  if (system) {
    req.messages = [{ role: 'system', content: system }, { role: 'user', content: $('prompt').value }];
    req.top_logprobs = req.logprobs;
    req.logprobs = req.logprobs > 0;
  } else {
    req.prompt = $('prompt').value;
  }
  return req;
}

/* What the page knows of a generation: every token shown (kept or
 * removed) and the markers between them, in order. */
function newInspection() {
  return { items: [], live: [], finalText: '', summary: null, t0: performance.now(), nTokenEvents: 0 };
}

function applyEvent(insp, ev) {
  if (ev.type === 'token') {
    const item = { kind: 'token', ev, removed: false };
    insp.items.push(item);
    insp.live.length = ev.index;
    insp.live.push(item);
    insp.nTokenEvents++;
  } else if (ev.type === 'retraction' || ev.type === 'backtrack') {
    for (let i = ev.token_index; i < insp.live.length; i++) insp.live[i].removed = true;
    insp.live.length = Math.min(insp.live.length, ev.token_index);
    insp.items.push({ kind: 'marker', ev });
  }
}

/* A token's background: its confidence, or the model that led it. */
function tokenColour(ev) {
  if ($('color_by').value === 'model' && ev.fusion) {
    const m = ev.fusion.leading_model;
    return m >= 0 ? MODEL_COLOURS[m % MODEL_COLOURS.length] + '40' : '#eeeeee';
  }
  return confidenceColor(ev.p_chosen);
}

function renderOutput(insp) {
  const out = $('output');
  out.innerHTML = '';
  out.append(el('span', { class: 'muted' }, $('prompt').value));
  insp.items.forEach((item) => {
    if (item.kind === 'marker') {
      const bt = item.ev.type === 'backtrack';
      out.append(el('span', {
        class: 'marker' + (bt ? ' bt' : ''),
        title: `${item.ev.type} (${item.ev.source}): ${item.ev.description} — removed ${item.ev.n_removed}`,
      }, bt ? '⤺' : '↺'));
      return;
    }
    const ev = item.ev;
    const disagree = ev.fusion && ev.fusion.reference_differs;
    const span = el('span', {
      class: 'tok' + (item.removed ? ' removed' : '') + (disagree ? ' disagree' : ''),
      title: `p=${fmt(ev.p_chosen)} top1=${fmt(ev.p_top1)} H=${fmt(ev.entropy, 2)}`,
    }, ev.piece);
    if (!item.removed) span.style.background = tokenColour(ev);
    span.addEventListener('click', () => {
      document.querySelectorAll('.tok.selected').forEach((t) => t.classList.remove('selected'));
      span.classList.add('selected');
      showToken(item);
    });
    out.append(span);
  });
}

function showToken(item) {
  const ev = item.ev;
  const box = $('token-details');
  box.classList.remove('muted');
  box.innerHTML = '';
  box.append(el('div', {}, el('b', {}, JSON.stringify(ev.piece)),
    ` #${ev.index} · p=${fmt(ev.p_chosen)} · entropy ${fmt(ev.entropy, 2)} nats · T=${fmt(ev.temperature, 2)}` +
    (item.removed ? ' · removed' : '')));
  const table = el('table');
  for (const alt of ev.top || []) {
    const bar = el('div', { class: 'minibar' });
    bar.style.width = (alt.prob * 100).toFixed(1) + '%';
    table.append(el('tr', { class: alt.token === ev.token ? 'chosen' : '' },
      el('td', {}, JSON.stringify(alt.piece)), el('td', {}, fmt(alt.prob)), el('td', { class: 'p' }, bar)));
  }
  box.append(table);
  if (ev.fusion) {
    const f = ev.fusion;
    const models = (state.insp && state.insp.models) || [];
    box.append(el('div', {}, `agreement: top-1 ${fmt(f.top1_agreement, 2)}, top-3 ${fmt(f.top3_agreement, 2)}, JS divergence ${fmt(f.js_divergence, 3)} bits` +
      (f.reference_differs ? ' — reference disagrees' : '')));
    // VisuaLL's per-model table: each model's own top 3, the chosen token bold.
    const ft = el('table', { class: 'model-top' });
    ft.append(el('tr', {}, el('td', {}, 'model'), el('td', {}, 'p(chosen)'), el('td', {}, 'its top 3')));
    for (let m = 0; m < f.p_chosen.length; m++) {
      const cells = el('td', {});
      (f.top3 ? f.top3[m] : [{ token: f.top1[m], piece: f.top1_piece ? f.top1_piece[m] : String(f.top1[m]), prob: f.p_top1[m] }])
        .forEach((t, k) => {
          const entry = el(t.token === ev.token ? 'b' : 'span', { class: t.token === ev.token ? 'chosen-alt' : '' },
            `${JSON.stringify(t.piece)} ${fmt(t.prob)}`);
          cells.append(k ? ' · ' : '', entry);
        });
      const swatch = el('span', { class: 'swatch' });
      swatch.style.background = MODEL_COLOURS[m % MODEL_COLOURS.length];
      ft.append(el('tr', {}, el('td', {}, swatch, ' ' + (models[m] || `model ${m}`)), el('td', {}, fmt(f.p_chosen[m])), cells));
    }
    box.append(ft);
  }
}

/* Top-1 probability (line) and the chosen token's probability (dots) over
 * the kept tokens; retractions and backtracks as vertical marks. */
function renderChart(insp) {
  const box = $('chart');
  box.innerHTML = '';
  const kept = insp.live;
  const W = Math.max(240, box.clientWidth || 600), H = 170, L = 30, R = 8, T = 8, B = 8;
  const s = svg('svg', { width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  const n = Math.max(kept.length, 2);
  const x = (i) => L + (i / (n - 1)) * (W - L - R);
  const y = (p) => T + (1 - p) * (H - T - B);
  for (const p of [0, 0.5, 1]) {
    s.append(svg('line', { x1: L, x2: W - R, y1: y(p), y2: y(p), stroke: '#e4e7ee' }));
    s.append(Object.assign(svg('text', { x: 4, y: y(p) + 3 }), { textContent: p.toFixed(1) }));
  }
  const markers = insp.items.filter((it) => it.kind === 'marker');
  for (const m of markers) {
    const xi = x(Math.min(m.ev.token_index, n - 1));
    s.append(svg('line', { x1: xi, x2: xi, y1: T, y2: H - B, stroke: m.ev.type === 'backtrack' ? '#c77700' : '#d9534f', 'stroke-dasharray': '3,2' }));
  }
  const path = (values, attrs) => {
    const d = values.map((v, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    s.append(svg('path', Object.assign({ d, fill: 'none' }, attrs)));
  };
  if (kept.length) {
    // Cumulative probability of the alternatives shown (VisuaLL's top-N line).
    if (kept[0].ev.top) path(kept.map((it) => Math.min(1, (it.ev.top || []).reduce((a, t) => a + t.prob, 0))),
      { class: 'cumulative', stroke: '#9aa3b5', 'stroke-width': 1.2, 'stroke-dasharray': '4,2' });
    // Each model's own top-1 probability, with several models.
    const nm = kept[0].ev.fusion ? kept[0].ev.fusion.p_top1.length : 0;
    for (let m = 0; m < nm; m++)
      path(kept.map((it) => (it.ev.fusion ? it.ev.fusion.p_top1[m] : 0)),
        { class: 'model-line', stroke: MODEL_COLOURS[m % MODEL_COLOURS.length], 'stroke-width': 1, opacity: 0.7 });
    path(kept.map((it) => it.ev.p_top1), { class: 'top1', stroke: '#3a6ff7', 'stroke-width': 1.5 });
    kept.forEach((it, i) => {
      const c = svg('circle', { cx: x(i), cy: y(it.ev.p_chosen), r: 2.2, fill: it.ev.fusion && it.ev.fusion.reference_differs ? '#b44be1' : '#e07b00' });
      const title = svg('title');
      title.textContent = `#${i} ${JSON.stringify(it.ev.piece)} top1=${fmt(it.ev.p_top1)} chosen=${fmt(it.ev.p_chosen)}`;
      c.append(title);
      s.append(c);
    });
  }
  box.append(s);
  box.append(el('div', { class: 'muted chart-caption' },
    'blue: top-1 · grey dashes: cumulative top-N · thin: each model\'s top-1 · dots: chosen · red/orange dashes: removals'));
}

function renderSummary(insp, error) {
  const box = $('summary');
  box.classList.remove('muted');
  box.innerHTML = '';
  if (error) {
    box.append(el('span', { class: 'error' }, error));
    return;
  }
  const sm = insp.summary;
  if (!sm) return;
  const item = (k, v) => box.append(el('span', {}, k + ': ', el('b', {}, String(v))));
  item('stop', sm.stop_reason);
  item('tokens kept', insp.live.length);
  item('sampled', sm.tokens_sampled);
  item('retractions', sm.retractions);
  item('backtracks', sm.backtracks);
  // What each count counts: struck-through tokens were shown and then
  // removed; the total also holds candidates removed before they were shown.
  item('struck through', insp.items.filter((it) => it.kind === 'token' && it.removed).length);
  item('removed in all (shown or not)', sm.tokens_removed);
  item('avg confidence', fmt(sm.avg_confidence));
  item('final T', fmt(sm.final_temperature, 2));
  item('seed', sm.seed);
  if (insp.timings) item('tokens/s', fmt(insp.timings.predicted_per_second, 0));
  // VisuaLL's determinism (mean top-1 probability) and creativity (1 - it).
  const models = (insp.models && insp.models.length) ? insp.models : ['model'];
  const fused = insp.live.filter((it) => it.ev.fusion);
  models.forEach((name, m) => {
    const values = fused.length ? fused.map((it) => it.ev.fusion.p_top1[m]) : insp.live.map((it) => it.ev.p_top1);
    if (!values.length) return;
    const det = values.reduce((a, v) => a + v, 0) / values.length;
    box.append(el('span', { class: 'model-stat' }, name + ': determinism ', el('b', {}, fmt(det, 2)),
      ', creativity ', el('b', {}, fmt(1 - det, 2))));
  });
  if (sm.n_models > 1) {
    item('fusion', sm.fusion_mode);
    const agree = insp.live.filter((it) => it.ev.fusion);
    const mean = agree.reduce((a, it) => a + it.ev.fusion.top1_agreement, 0) / Math.max(1, agree.length);
    item('mean top-1 agreement', fmt(mean, 2));
    item('reference disagreements', agree.filter((it) => it.ev.fusion.reference_differs).length);
  }
}

/* The colour of each model, for the text coloured by model and the chart. */
function renderModelLegend(models) {
  const legend = $('legend-models');
  legend.innerHTML = '';
  models.forEach((name, m) => {
    const swatch = el('span', { class: 'swatch' });
    swatch.style.background = MODEL_COLOURS[m % MODEL_COLOURS.length];
    legend.append(el('span', {}, swatch, ' ' + name));
  });
  const byModel = $('color_by').value === 'model' && models.length > 0;
  legend.classList.toggle('hidden', !byModel);
  $('legend-confidence').classList.toggle('hidden', byModel);
}

async function generate() {
  const insp = newInspection();
  state.insp = insp;
  const req = inspectorRequest();
  if (state.props && state.props.n_models > 1 && req.model === state.props.default_model) {
    insp.models = state.props.models.slice(1);
  }
  renderModelLegend(insp.models || []);
  state.abort = new AbortController();
  $('generate').disabled = true;
  $('stop').disabled = false;
  $('insp-status').textContent = 'generating…';
  $('insp-status').classList.remove('error');
  $('token-details').textContent = 'Click a token.';
  let pending = false;
  const redraw = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; renderOutput(insp); renderChart(insp); });
  };
  try {
    await streamPost(req.messages ? '/v1/chat/completions' : '/v1/completions', req, (chunk) => {
      const choice = chunk.choices && chunk.choices[0];
      if (choice && choice.text) insp.finalText += choice.text;
      if (choice && choice.delta && choice.delta.content) insp.finalText += choice.delta.content;
      if (chunk.selfmod && chunk.selfmod.events) chunk.selfmod.events.forEach((ev) => applyEvent(insp, ev));
      if (chunk.selfmod && chunk.selfmod.stop_reason) insp.summary = chunk.selfmod;
      if (chunk.timings) insp.timings = chunk.timings;
      redraw();
    }, state.abort.signal);
    renderOutput(insp);
    renderChart(insp);
    renderSummary(insp);
    $('insp-status').textContent = `done: ${insp.live.length} tokens in ${fmt(performance.now() - insp.t0, 0)} ms`;
  } catch (e) {
    const msg = e.name === 'AbortError' ? 'stopped' : 'error: ' + e.message;
    $('insp-status').textContent = msg;
    if (e.name !== 'AbortError') {
      $('insp-status').classList.add('error');
      renderSummary(insp, e.message);
    }
    renderOutput(insp);
    renderChart(insp);
  } finally {
    $('generate').disabled = false;
    $('stop').disabled = true;
    state.abort = null;
  }
}

/* ------------------------------------------------------------------ */

function init() {
  $('api-key').value = localStorage.getItem('llama_selfmod_api_key') || '';
  $('api-key').addEventListener('change', () => {
    localStorage.setItem('llama_selfmod_api_key', $('api-key').value.trim());
    loadProps();
  });
  document.querySelectorAll('.tab').forEach((t) => t.addEventListener('click', () => showView(t.dataset.view)));
  $('model').addEventListener('change', updateFusionBox);
  $('expand').addEventListener('click', expand);
  $('undo').addEventListener('click', undo);
  $('autopilot').addEventListener('click', autopilot);
  $('story').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      expand();
    }
  });
  $('generate').addEventListener('click', generate);
  $('export_dot').addEventListener('click', exportDot);
  $('export_png').addEventListener('click', exportPng);
  $('story_preset').addEventListener('change', () => {
    if (!$('story_preset').value) return;
    $('story').value = $('story_preset').value;
    $('story_preset').value = '';
    state.loomHistory = [];
    $('undo').disabled = true;
  });
  $('color_by').addEventListener('change', () => {
    renderModelLegend((state.insp && state.insp.models) || []);
    if (state.insp) renderOutput(state.insp);
  });
  document.querySelectorAll('input[type=number]').forEach((i) => i.addEventListener('change', () => clampNumber(i)));
  $('stop').addEventListener('click', () => state.abort && state.abort.abort());
  loadProps();
}

init();
