// pp-agent's local UI: one page for both roles, in English and Bahasa
// Indonesia. It polls /api/state every second and never loads anything
// from the internet. Text from the hub or other users is only ever set as
// textContent (never HTML).
'use strict';

const T = {
  en: {
    title: 'Pahlawan Pangan', post_title: 'Post surplus food', category: 'Category',
    description: 'What is it?', quantity_kg: 'Weight (kg)', portions: 'Portions', storage: 'Storage',
    allergens: 'Allergens', best_before: 'Good for', instructions: 'Instructions for the driver',
    post_button: 'Post', my_posts: 'My posts', offers: 'Offers for you', my_pickups: 'My pickups',
    nearby: 'Available nearby', vehicle: 'My vehicle', free_kg: 'Free capacity (kg)', on_duty: 'On duty',
    update: 'Update', online: 'Online', offline: 'Offline', queued_n: n => `${n} waiting to send`,
    last_sync: 'last sync', never: 'never', queue_full: 'Queue full: new entries cannot be saved until the device is back online.',
    accept: 'Accept', decline: 'Decline', claim: 'Claim', picked_up_btn: 'Picked up', delivered_btn: 'Delivered',
    handover_code: 'Handover code', code_for_driver: 'Give this code to the driver',
    actual_kg: 'Weight taken (kg)', answer_in: 'answer within', best_before_in: 'good for',
    km: 'km', claimed_by: 'Claimed by', eta: 'arriving about', none: 'Nothing here yet.',
    saved: 'Saved on this device and queued for the hub.',
    st: { queued: 'Waiting to send', available: 'Posted, looking for an NGO', offered: 'Offered to an NGO',
          claimed: 'Claimed', picked_up: 'Picked up', delivered: 'Delivered', expired: 'Expired',
          cancelled: 'Cancelled', dead_lettered: 'No NGO found yet: the hub keeps trying' },
    conflict_claim: 'Already claimed by another NGO.',
    conflict_offer: 'This offer is no longer open (it expired or went to someone else).',
    conflict: 'Someone changed this first; the screen shows what is true now.',
    rejected: 'The hub refused this', rejected_code: 'Wrong handover code: ask the restaurant again.',
    storage_v: { hot: 'Hot', chilled: 'Chilled', frozen: 'Frozen', ambient: 'Room temperature' },
    pickup_window: 'Pickup window', win_any: 'Any time before then', win_now: 'now', win_in: 'in',
    pickup_at: 'pick up', contains: 'contains', cooked: 'Cooked', cooked_unsaid: 'Not said',
    cooked_now: 'just now', cooked_ago: 'ago', cooked_at: 'cooked', release_btn: "Can't make it",
  },
  id: {
    title: 'Pahlawan Pangan', post_title: 'Laporkan makanan berlebih', category: 'Kategori',
    description: 'Makanan apa?', quantity_kg: 'Berat (kg)', portions: 'Porsi', storage: 'Penyimpanan',
    allergens: 'Alergen', best_before: 'Layak selama', instructions: 'Petunjuk untuk pengemudi',
    post_button: 'Kirim', my_posts: 'Laporan saya', offers: 'Tawaran untuk Anda', my_pickups: 'Pengambilan saya',
    nearby: 'Tersedia di sekitar', vehicle: 'Kendaraan saya', free_kg: 'Kapasitas kosong (kg)', on_duty: 'Sedang bertugas',
    update: 'Perbarui', online: 'Daring', offline: 'Luring', queued_n: n => `${n} menunggu dikirim`,
    last_sync: 'sinkron terakhir', never: 'belum pernah', queue_full: 'Antrean penuh: data baru tidak bisa disimpan sampai perangkat daring lagi.',
    accept: 'Terima', decline: 'Tolak', claim: 'Ambil', picked_up_btn: 'Sudah diambil', delivered_btn: 'Sudah diantar',
    handover_code: 'Kode serah terima', code_for_driver: 'Berikan kode ini kepada pengemudi',
    actual_kg: 'Berat yang diambil (kg)', answer_in: 'jawab dalam', best_before_in: 'layak selama',
    km: 'km', claimed_by: 'Diambil oleh', eta: 'tiba sekitar', none: 'Belum ada apa-apa.',
    saved: 'Tersimpan di perangkat ini dan masuk antrean ke hub.',
    st: { queued: 'Menunggu dikirim', available: 'Terkirim, mencari LSM', offered: 'Ditawarkan ke LSM',
          claimed: 'Sudah diklaim', picked_up: 'Sudah diambil', delivered: 'Sudah diantar', expired: 'Kedaluwarsa',
          cancelled: 'Dibatalkan', dead_lettered: 'Belum ada LSM: hub terus mencoba' },
    conflict_claim: 'Sudah diklaim oleh LSM lain.',
    conflict_offer: 'Tawaran ini sudah tidak berlaku (kedaluwarsa atau diberikan ke pihak lain).',
    conflict: 'Ada yang mengubahnya lebih dulu; layar menunjukkan keadaan terkini.',
    rejected: 'Hub menolak ini', rejected_code: 'Kode serah terima salah: tanyakan lagi ke restoran.',
    storage_v: { hot: 'Panas', chilled: 'Dingin', frozen: 'Beku', ambient: 'Suhu ruang' },
    pickup_window: 'Waktu pengambilan', win_any: 'Kapan saja sebelum itu', win_now: 'sekarang', win_in: 'dalam',
    pickup_at: 'ambil', contains: 'mengandung', cooked: 'Dimasak', cooked_unsaid: 'Tidak disebut',
    cooked_now: 'baru saja', cooked_ago: 'yang lalu', cooked_at: 'dimasak', release_btn: 'Tidak bisa datang',
  },
};
// Pickup windows a kiosk offers, in minutes from now ("" = none: any time
// before best-before). Times windows, not exact times: what staff can promise.
const WINDOWS = ['', '0-60', '0-120', '60-180', '120-240'];
const windowMinutes = w => w.split('-').map(Number);  // '60-180' -> [60, 180]
// When it was cooked, in minutes ago ("" = not said).
const COOKED = ['', '0', '60', '120', '240'];
const CATEGORIES = ['prepared_meals', 'bakery', 'produce', 'dairy', 'meat_fish', 'dry_goods', 'beverages', 'other'];
const ALLERGENS = ['celery', 'cereals_gluten', 'crustaceans', 'eggs', 'fish', 'lupin', 'milk', 'molluscs',
                   'mustard', 'nuts', 'peanuts', 'sesame', 'soya', 'sulphites'];

let lang = localStorage.getItem('pp-lang') || null;
let state = null;
let fetchedAt = 0;       // performance.now() when state arrived
let localNotices = [];   // answers from the local API (queued / refused)
let rendered = '';       // what the lists were last drawn from: redraw only on change
const drafts = {};       // what the driver is typing, by field: kept across redraws
let formsLang = null;    // the language the form's choices were last built in
const t = k => (T[lang] && T[lang][k]) || T.en[k] || k;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c.nodeType ? c : String(c));
  return e;
}

// The hub's clock, ticking on from the last answer (the device clock may be wrong).
function hubNow() { return Date.parse(state.hub_now) + (performance.now() - fetchedAt); }
function minutesLeft(iso) { return Math.round((Date.parse(iso) - hubNow()) / 60000); }
function secondsLeft(iso) { return Math.max(0, Math.round((Date.parse(iso) - hubNow()) / 1000)); }
function hhmm(iso) { const d = new Date(iso); return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }); }
function km(a, b) {
  const r = x => x * Math.PI / 180, R = 6371.0088;
  const dlat = r(b.lat - a.lat), dlon = r(b.lon - a.lon);
  const h = Math.sin(dlat / 2) ** 2 + Math.cos(r(a.lat)) * Math.cos(r(b.lat)) * Math.sin(dlon / 2) ** 2;
  return 2 * R * Math.asin(Math.sqrt(h));
}

async function api(method, path, body) {
  const res = await fetch(path, { method, headers: { 'Content-Type': 'application/json' },
                                  body: body === undefined ? undefined : JSON.stringify(body) });
  const json = await res.json().catch(() => ({}));
  if (res.ok) localNotices.unshift({ ok: true, text: t('saved') });
  else localNotices.unshift({ ok: false, text: problemText(json) });
  localNotices = localNotices.slice(0, 3);
  await refresh();
  return res.ok;
}

function problemText(p) {
  const fields = (p.errors || []).map(e => `${e.field}: ${e.reason}`).join('; ');
  return (p.detail || 'error') + (fields ? ` (${fields})` : '');
}

// A hub answer in plain words.
function outcomeText(o) {
  if (o.status === 'conflict') {
    if (o.type === 'claim') return t('conflict_claim');
    if (o.type === 'accept' || o.type === 'decline') return t('conflict_offer');
    return t('conflict');
  }
  if (o.status === 'rejected') {
    const fields = Array.isArray(o.data) ? o.data : [];
    if (fields.some(f => f.field === 'handover_code')) return t('rejected_code');
    return `${t('rejected')}: ${o.message}` + (fields.length ? ` (${fields.map(f => `${f.field}: ${f.reason}`).join('; ')})` : '');
  }
  return null;
}

function renderChrome() {
  document.documentElement.lang = lang;
  document.querySelectorAll('[data-t]').forEach(e => { e.textContent = t(e.dataset.t); });
  document.querySelectorAll('button.lang').forEach(b => b.classList.toggle('active', b.dataset.lang === lang));
  const banner = document.getElementById('banner');
  const sync = state.last_sync ? hhmm(state.last_sync) : t('never');
  banner.className = state.queue_full ? 'full' : state.online ? 'online' : 'offline';
  banner.textContent = state.queue_full ? t('queue_full')
    : `${state.online ? t('online') : t('offline')} · ${t('queued_n')(state.queued)} · ${t('last_sync')} ${sync}`;
  document.getElementById('who').textContent = state.device;
  const notices = document.getElementById('notices');
  notices.replaceChildren();
  for (const n of localNotices) notices.append(el('div', { class: 'notice' + (n.ok ? ' ok' : '') }, n.text));
  // The hub's refusals of the last quarter hour (times are this device's).
  const recent = state.outcomes.filter(o => Date.now() - Date.parse(o.at) < 15 * 60000);
  for (const o of recent.slice(0, 5)) {
    const text = outcomeText(o);
    if (text) notices.append(el('div', { class: 'notice', 'data-code': o.code }, text));
  }
}

function statusChip(status) { return el('span', { class: 'status ' + status }, (T[lang].st[status]) || status); }
const OPEN = new Set(['queued', 'available', 'offered', 'claimed', 'dead_lettered']);
function describe(p) {
  const bits = [];
  if (p.quantity_kg) bits.push(`${p.quantity_kg} kg`);
  if (p.portions) bits.push(`${p.portions} ×`);
  if (p.storage) bits.push(t('storage_v')[p.storage] || p.storage);
  if (p.prepared_at) bits.push(`${t('cooked_at')} ${hhmm(p.prepared_at)}`);
  if (p.best_before && OPEN.has(p.status || 'available'))
    bits.push(`${t('best_before_in')} ${Math.max(0, minutesLeft(p.best_before))} min`);
  if (p.pickup_start && p.pickup_end) bits.push(`${t('pickup_at')} ${hhmm(p.pickup_start)}–${hhmm(p.pickup_end)}`);
  if (p.allergens && p.allergens.length) bits.push(`${t('contains')} ${p.allergens.map(a => a.replace('_', ' ')).join(', ')}`);
  return bits.join(' · ');
}
// An input whose value survives redraws.
function draft(key, attrs) {
  const input = el('input', attrs);
  if (drafts[key] !== undefined) input.value = drafts[key];
  input.addEventListener('input', () => { drafts[key] = input.value; });
  return input;
}
function list(id, items, render) {
  const ul = document.getElementById(id);
  ul.replaceChildren(...(items.length ? items.map(render) : [el('li', { class: 'empty' }, t('none'))]));
}

function renderKiosk() {
  const queued = state.queued_ops.filter(o => o.type === 'post_surplus').map(o => ({ ...o.body, status: 'queued', op: o.op }));
  const posts = state.posts.filter(p => p.provider_id === state.org_id);
  list('my-posts', [...queued.reverse(), ...posts], p => el('li', { 'data-id': p.id || '', 'data-status': p.status },
    el('div', { class: 'title' }, p.description, ' ', statusChip(p.status)),
    el('div', { class: 'meta' }, describe(p)),
    p.claimed_by ? el('div', { class: 'meta' }, `${t('claimed_by')} ${p.claimed_by_name || ('NGO ' + p.claimed_by)}`,
                      p.pickup_eta && p.status === 'claimed' ? ` · ${t('eta')} ${hhmm(p.pickup_eta)}` : '') : null,
    p.handover_code && p.status === 'claimed'
      ? el('div', {}, el('div', { class: 'meta' }, t('code_for_driver')), el('div', { class: 'code' }, p.handover_code)) : null));
}

function renderTablet() {
  const me = state.vehicle && state.vehicle.lat !== undefined ? state.vehicle : null;
  const dist = p => (me && p.lat !== undefined) ? `${km(me, p).toFixed(1)} ${t('km')} · ` : (p.distance_km !== undefined ? `${p.distance_km.toFixed(1)} ${t('km')} · ` : '');
  const offers = state.posts.filter(p => p.status === 'offered' && p.offer && p.offer.ngo_id === state.org_id);
  list('offers', offers, p => el('li', { 'data-id': p.id },
    el('div', { class: 'title' }, p.description),
    el('div', { class: 'meta' }, dist(p) + describe(p)),
    p.instructions ? el('div', { class: 'meta' }, p.instructions) : null,
    el('div', { class: 'meta' }, `${t('answer_in')} `,
       el('span', { class: 'countdown', 'data-until': p.offer.expires_at }, `${secondsLeft(p.offer.expires_at)} s`)),
    el('div', { class: 'actions' },
      el('button', { class: 'accept', onclick: () => api('POST', `/api/surplus/${p.id}/accept`, {}) }, t('accept')),
      el('button', { class: 'secondary decline', onclick: () => api('POST', `/api/surplus/${p.id}/decline`, {}) }, t('decline')))));
  const mine = state.posts.filter(p => p.claimed_by === state.org_id && (p.status === 'claimed' || p.status === 'picked_up'));
  list('pickups', mine, p => {
    const li = el('li', { 'data-id': p.id, 'data-status': p.status },
      el('div', { class: 'title' }, p.description, ' ', statusChip(p.status)),
      el('div', { class: 'meta' }, dist(p) + describe(p)),
      p.instructions ? el('div', { class: 'meta' }, p.instructions) : null);
    if (p.status === 'claimed') {
      const code = draft(`${p.id}:code`, { class: 'handover', inputmode: 'numeric', maxlength: '6', placeholder: t('handover_code') });
      const kg = draft(`${p.id}:kg`, { class: 'kg', type: 'number', step: '0.1', min: '0.1', value: p.quantity_kg || '' });
      li.append(el('label', {}, el('span', {}, t('handover_code')), code),
                el('label', {}, el('span', {}, t('actual_kg')), kg),
                el('div', { class: 'actions' }, el('button', { class: 'pickup', onclick: () =>
                  api('POST', `/api/surplus/${p.id}/pickup`, { handover_code: code.value, actual_kg: Number(kg.value) }) }, t('picked_up_btn')),
                  // The driver cannot come after all: the hub offers it to the next NGO at once.
                  el('button', { class: 'secondary release', onclick: () =>
                    api('POST', `/api/surplus/${p.id}/release`, {}) }, t('release_btn'))));
    } else {
      li.append(el('div', { class: 'actions' }, el('button', { class: 'deliver', onclick: () =>
        api('POST', `/api/surplus/${p.id}/deliver`, {}) }, t('delivered_btn'))));
    }
    return li;
  });
  const taken = new Set(state.posts.filter(p => p.claimed_by).map(p => p.id));
  list('nearby', state.nearby.filter(p => !taken.has(p.id)), p => el('li', { 'data-id': p.id },
    el('div', { class: 'title' }, p.description),
    el('div', { class: 'meta' }, dist(p) + describe(p)),
    el('div', { class: 'actions' }, el('button', { class: 'claim', onclick: () =>
      api('POST', `/api/surplus/${p.id}/claim`, { version: p.version }) }, t('claim')))));
}

function fillForms() {
  const cat = document.getElementById('category');
  if (!cat.options.length) {
    for (const c of CATEGORIES) cat.append(el('option', { value: c }, c.replace('_', ' ')));
    for (const a of ALLERGENS) document.getElementById('allergens').append(
      el('label', {}, el('input', { type: 'checkbox', name: 'allergen', value: a }), a.replace('_', ' ')));
  }
  // The translated choices are rebuilt only when the language changes: a
  // list replaced every second would close under the person's finger.
  if (formsLang === lang) return;
  formsLang = lang;
  // A select's choices in this language, keeping what the person picked.
  const choices = (id, values, label, fallback = '') => {
    const select = document.getElementById(id);
    const picked = select.value || fallback;
    select.replaceChildren(...values.map(v => el('option', { value: v }, label(v))));
    select.value = picked;
  };
  choices('storage', ['hot', 'chilled', 'frozen', 'ambient'], s => t('storage_v')[s], 'ambient');
  choices('pickup_window', WINDOWS, w => {
    if (!w) return t('win_any');
    const [from, to] = windowMinutes(w);
    return `${from ? `${t('win_in')} ${from / 60} h` : t('win_now')} – ${to / 60} h`;
  });
  choices('prepared_min_ago', COOKED,
          c => c === '' ? t('cooked_unsaid') : c === '0' ? t('cooked_now') : `${Number(c) / 60} h ${t('cooked_ago')}`);
}

async function refresh() {
  try {
    const res = await fetch('/api/state');
    state = await res.json();
    fetchedAt = performance.now();
  } catch (e) {
    return;  // the agent is restarting: keep the last screen
  }
  if (!lang) lang = state.language;
  document.getElementById(state.role).hidden = false;
  renderChrome();
  fillForms();
  // Redraw the lists only when what they show changed (or each minute, for
  // "good for N min"), so that a driver typing a code is not interrupted.
  const minute = Math.floor(hubNow() / 60000);
  const signature = JSON.stringify([lang, minute, state.posts, state.queued_ops, state.nearby, state.vehicle]);
  if (signature !== rendered) {
    rendered = signature;
    if (state.role === 'kiosk') renderKiosk(); else renderTablet();
  }
  document.querySelectorAll('.countdown[data-until]').forEach(c => { c.textContent = `${secondsLeft(c.dataset.until)} s`; });
  if (state.role === 'tablet' && state.vehicle && !document.getElementById('vehicle-form').dataset.touched) {
    document.getElementById('v-lat').value = state.vehicle.lat;
    document.getElementById('v-lon').value = state.vehicle.lon;
    document.getElementById('v-free').value = state.vehicle.free_kg;
  }
}

document.getElementById('post-form').addEventListener('submit', async ev => {
  ev.preventDefault();
  const f = ev.target;
  const body = { category: f.category.value, description: f.description.value, storage: f.storage.value,
                 best_before_in_min: Number(f.best_before_in_min.value),
                 allergens: [...f.querySelectorAll('input[name=allergen]:checked')].map(i => i.value) };
  if (f.quantity_kg.value) body.quantity_kg = Number(f.quantity_kg.value);
  if (f.portions.value) body.portions = Number(f.portions.value);
  if (f.instructions.value) body.instructions = f.instructions.value;
  if (f.prepared_min_ago.value !== '') body.prepared_min_ago = Number(f.prepared_min_ago.value);
  if (f.pickup_window.value) {
    [body.pickup_start_in_min, body.pickup_end_in_min] = windowMinutes(f.pickup_window.value);
  }
  if (await api('POST', '/api/posts', body)) f.reset();
});
document.getElementById('vehicle-form').addEventListener('input', ev => { ev.currentTarget.dataset.touched = '1'; });
document.getElementById('vehicle-form').addEventListener('submit', async ev => {
  ev.preventDefault();
  const f = ev.target;
  const body = { online: f.online.checked };
  if (f.lat.value !== '' && f.lon.value !== '') { body.lat = Number(f.lat.value); body.lon = Number(f.lon.value); }
  if (f.free_kg.value !== '') body.free_kg = Number(f.free_kg.value);
  if (await api('PUT', '/api/vehicle', body)) delete f.dataset.touched;
});
document.querySelectorAll('button.lang').forEach(b => b.addEventListener('click', () => {
  lang = b.dataset.lang;
  localStorage.setItem('pp-lang', lang);
  rendered = '';
  if (state) refresh();
}));

refresh();
setInterval(refresh, 1000);
