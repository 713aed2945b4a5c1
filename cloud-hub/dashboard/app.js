// The hub's dashboard: everything from /api/v1 with the operator's token
// (kept in this tab's sessionStorage only), redrawn every 2 seconds. No
// libraries and nothing from a CDN: the map is an SVG projection, the chart
// SVG bars. Text from posts is set as text, never as HTML.
'use strict';

const COLORS = { available: '#2f6b3a', offered: '#2a62b8', dead_lettered: '#b3261e',
                 claimed: '#c77c0e', picked_up: '#6d3fa0' };
const SVG = 'http://www.w3.org/2000/svg';
let token = sessionStorage.getItem('pp-token') || '';

function el(tag, attrs, ...children) {
  const svg = ['svg', 'circle', 'rect', 'line', 'text', 'title', 'g'].includes(tag);
  const e = svg ? document.createElementNS(SVG, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k === 'class' && !svg ? 'class' : k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c.nodeType ? c : String(c));
  return e;
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    headers['Idempotency-Key'] = `dash-${Date.now()}-${Math.random().toString(16).slice(2)}`;
  }
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const json = await res.json().catch(() => ({}));
  if (res.status === 401) { showLogin(json.detail || 'token refused'); throw new Error('unauthenticated'); }
  if (!res.ok) throw new Error(json.detail || `HTTP ${res.status}`);
  return json;
}

function showLogin(message) {
  document.getElementById('board').hidden = true;
  document.getElementById('login').hidden = false;
  document.getElementById('login-error').textContent = message || '';
}

function counter(label, value, bad) {
  return el('div', { class: 'counter' + (bad ? ' bad' : ''), 'data-name': label }, el('b', {}, value), label);
}

function drawMap(posts, vehicles) {
  const svg = document.getElementById('map');
  svg.replaceChildren();
  const pts = [...posts, ...vehicles];
  if (!pts.length) { svg.append(el('text', { x: 20, y: 30 }, 'Nothing open.')); return; }
  let [minLat, maxLat, minLon, maxLon] = [90, -90, 180, -180];
  for (const p of pts) {
    minLat = Math.min(minLat, p.lat); maxLat = Math.max(maxLat, p.lat);
    minLon = Math.min(minLon, p.lon); maxLon = Math.max(maxLon, p.lon);
  }
  // Equirectangular, longitudes shrunk by cos(latitude): right for a city.
  const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
  const w = Math.max((maxLon - minLon) * k, 0.01), h = Math.max(maxLat - minLat, 0.01);
  const scale = Math.min(560 / w, 360 / h);
  const x = lon => 20 + (lon - minLon) * k * scale, y = lat => 380 - (lat - minLat) * scale;
  for (const v of vehicles)
    svg.append(el('rect', { x: x(v.lon) - 4, y: y(v.lat) - 4, width: 8, height: 8, class: 'vehicle',
                            fill: v.online && !v.silent ? '#444' : '#bbb' },
                  el('title', {}, `NGO ${v.ngo_id}: ${v.free_kg} kg free` +
                     (!v.online ? ' (off duty)' : v.silent ? ` (tablet silent since ${new Date(v.updated_at).toLocaleTimeString()})` : ''))));
  for (const p of posts)
    svg.append(el('circle', { cx: x(p.lon), cy: y(p.lat), r: 5, class: `post ${p.status}`, 'data-id': p.id,
                              fill: COLORS[p.status] || '#999' },
                  el('title', {}, `#${p.id} ${p.description} (${p.status})`)));
  // Colours by class (app.css): the page's CSP forbids inline styles.
  document.getElementById('legend').replaceChildren(
    ...Object.keys(COLORS).map(s => el('span', {}, el('i', { class: `dot ${s}` }), s.replace('_', ' '))));
}

async function drawDlq() {
  const dlq = await api('GET', '/api/v1/dlq');
  const ul = document.getElementById('dlq');
  if (!dlq.items.length) { ul.replaceChildren(el('li', { class: 'empty' }, 'Empty: every post found an NGO.')); return; }
  // The list is redrawn on every refresh: keep what the operator was typing
  // (an NGO id, and the focus) rather than wiping it under their fingers.
  const typed = {};
  ul.querySelectorAll('li[data-id] input.ngo').forEach(i => { typed[i.closest('li').dataset.id] = i.value; });
  const focused = document.activeElement && document.activeElement.matches('#dlq input.ngo')
    ? document.activeElement.closest('li').dataset.id : null;
  ul.replaceChildren(...dlq.items.map(p => {
    const ngo = el('input', { type: 'number', min: 1, placeholder: 'NGO id', class: 'ngo' });
    if (typed[p.id]) ngo.value = typed[p.id];
    const msg = el('span', { class: 'error' });
    const act = async (what, body) => {
      try { await api('POST', `/api/v1/surplus/${p.id}/${what}`, body); refresh(); }
      catch (e) { msg.textContent = e.message; }
    };
    return el('li', { 'data-id': p.id },
      el('div', {}, el('b', {}, `#${p.id} `), p.description, ` — ${p.quantity_kg ?? '?'} kg, tries ${p.dlq ? p.dlq.attempts : 0}`),
      el('div', {}, ngo, ' ', el('button', { class: 'assign', onclick: () => act('assign', { ngo_id: Number(ngo.value) }) }, 'Assign'),
         ' ', el('button', { class: 'secondary cancel', onclick: () => act('cancel', {}) }, 'Cancel'), ' ', msg));
  }));
  if (focused) { const i = ul.querySelector(`li[data-id="${focused}"] input.ngo`); if (i) i.focus(); }
}

async function drawImpact() {
  const impact = await api('GET', '/api/v1/impact?by=day');
  const svg = document.getElementById('impact');
  svg.replaceChildren();
  const rows = impact.rows.slice(-30);
  const max = Math.max(1, ...rows.map(r => r.kg));
  const bw = 560 / Math.max(rows.length, 1);
  rows.forEach((r, i) => {
    const h = 150 * r.kg / max;
    svg.append(el('rect', { x: 20 + i * bw, y: 170 - h, width: Math.max(bw - 4, 2), height: h, fill: '#2f6b3a', class: 'bar' },
                  el('title', {}, `${r.day}: ${r.kg.toFixed(1)} kg, ${Math.round(r.meals)} meals, ${r.co2e_kg.toFixed(1)} kg CO2e`)),
               el('text', { x: 20 + i * bw, y: 190, 'font-size': 10 }, r.day.slice(5)));
  });
  document.getElementById('impact-total').textContent =
    `${impact.total_kg.toFixed(1)} kg rescued in all: ${Math.round(impact.total_kg * 1000 / impact.grams_per_meal)} meals ` +
    `(${impact.grams_per_meal} g each), ${(impact.total_kg * impact.co2e_kg_per_kg).toFixed(1)} kg CO2e avoided.`;
}

async function refresh() {
  if (!token) return showLogin();
  try {
    const s = await api('GET', '/api/v1/summary');
    document.getElementById('login').hidden = true;
    document.getElementById('board').hidden = false;
    document.getElementById('clock').textContent = new Date(s.now).toLocaleTimeString();
    const c = s.counts;
    const silent = s.vehicles.filter(v => v.online && v.silent).length;
    document.getElementById('counters').replaceChildren(
      ...['available', 'offered', 'claimed', 'picked_up', 'dead_lettered'].map(k => counter(k.replace('_', ' '), c[k] || 0, k === 'dead_lettered' && c[k] > 0)),
      counter('vehicles online', s.vehicles.filter(v => v.online).length - silent),
      counter('tablets silent', silent, silent > 0),
      counter('pickups overdue', s.pickups_overdue || 0, s.pickups_overdue > 0));
    const st = s.status || {};
    document.getElementById('health').replaceChildren(
      counter('routing breaker', st.routing_breaker || '?', st.routing_breaker === 'open'),
      counter('outbox lag (s)', (st.outbox_lag_seconds || 0).toFixed(1), st.outbox_lag_seconds > 30),
      counter('broker', st.broker || '?', st.broker === 'disconnected'),
      counter('matching saturation', ((st.saturation || 0) * 100).toFixed(0) + '%', st.saturation > 0.8));
    drawMap(s.posts, s.vehicles);
    await drawDlq();
    await drawImpact();
  } catch (e) {
    if (e.message !== 'unauthenticated') document.getElementById('login-error').textContent = e.message;
  }
}

document.getElementById('token-form').addEventListener('submit', ev => {
  ev.preventDefault();
  token = document.getElementById('token').value.trim();
  sessionStorage.setItem('pp-token', token);
  refresh();
});
refresh();
setInterval(refresh, 2000);
