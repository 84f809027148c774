// The wagate console: drives the whatsapp-web.js routes of this shim and
// follows its live event feed (/api/events, Server-Sent Events). Every
// value from the server is shown with textContent, never as markup.
'use strict';

const $ = (id) => document.getElementById(id);
// The wagate state names, from the whatsapp-web.js vocabulary the /api
// routes answer in.
const STATES = {
  initializing: 'CONNECTING',
  qr: 'QR_READY',
  ready: 'CONNECTED',
  disconnected: 'DISCONNECTED',
  logged_out: 'LOGGED_OUT',
};
const FEED_MAX = 200;

// Per tab only: the key is not left behind in the browser's storage.
let key = sessionStorage.getItem('wagate-api-key') || '';
let current = null;
let source = null;
const sessions = new Map();

function notice(text) {
  const el = $('notice');
  el.textContent = text || '';
  el.hidden = !text;
}

async function api(method, path, body) {
  const headers = {};
  if (key) headers['X-API-Key'] = key;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) {
    const why = (data && data.error) || res.statusText;
    const err = new Error(`${res.status}: ${why}`);
    err.status = res.status;
    throw err;
  }
  return data;
}

function session(id) {
  if (!sessions.has(id)) sessions.set(id, { state: 'CONNECTING', phone: '', pushname: '' });
  return sessions.get(id);
}

function renderSessions() {
  const body = $('sessions').tBodies[0];
  body.replaceChildren();
  for (const [id, s] of [...sessions].sort((a, b) => a[0].localeCompare(b[0]))) {
    const row = body.insertRow();
    row.dataset.session = id;
    if (id === current) row.className = 'selected';
    for (const [text, cls] of [[id, ''], [s.state, 'state ' + s.state], [s.phone, ''], [s.pushname, '']]) {
      const cell = row.insertCell();
      cell.textContent = text;
      if (cls) cell.className = cls;
    }
    row.addEventListener('click', () => select(id));
  }
}

function renderCurrent() {
  const s = current ? session(current) : null;
  $('current').textContent = current ? `Session ${current}` : 'No session selected';
  $('state').textContent = s ? s.state : '—';
  $('state').className = s ? s.state : '';
  $('account').textContent = s && s.phone ? `+${s.phone}${s.pushname ? ' · ' + s.pushname : ''}` : '';
  $('logout').disabled = !s || s.state === 'LOGGED_OUT';
  $('send').disabled = !s || s.state !== 'CONNECTED';
  if (!s || s.state !== 'QR_READY') showQr(null);
}

function showQr(image) {
  $('qr-box').hidden = !image;
  if (image) $('qr').src = image;
  else $('qr').removeAttribute('src');
}

function setState(id, state) {
  session(id).state = state;
  renderSessions();
  if (id === current) renderCurrent();
}

async function refresh(id) {
  try {
    const st = await api('GET', `/api/status/${encodeURIComponent(id)}`);
    const s = session(id);
    s.state = STATES[st.status] || st.status;
    s.phone = (st.info && st.info.phone) || '';
    s.pushname = (st.info && st.info.pushname) || '';
    renderSessions();
    if (id === current) renderCurrent();
  } catch (e) {
    if (e.status === 404) sessions.delete(id);
    renderSessions();
  }
}

async function loadSessions() {
  try {
    const list = await api('GET', '/api/sessions');
    sessions.clear();
    for (const s of list.sessions) {
      sessions.set(s.sessionId, { state: STATES[s.status] || s.status, phone: s.phone || '', pushname: '' });
    }
    renderSessions();
    notice('');
    await Promise.all([...sessions.keys()].map(refresh));
    if (current) renderCurrent();
  } catch (e) {
    notice(e.status === 401 ? 'Enter the API key to use the console.' : `Cannot list sessions: ${e.message}`);
  }
}

async function loadQr(id) {
  try {
    const qr = await api('GET', `/api/qr/${encodeURIComponent(id)}`);
    if (id === current) showQr(qr.qr);
    setState(id, 'QR_READY');
  } catch (e) {
    // 409: connected already, or no QR yet (the feed brings it).
    if (e.status !== 409) notice(`QR of ${id}: ${e.message}`);
  }
}

function addMessage(m) {
  const list = $('messages');
  if (m.id && list.querySelector(`li[data-id="${CSS.escape(m.id)}"]`)) return;
  const li = document.createElement('li');
  li.dataset.id = m.id || '';
  li.className = m.fromMe ? 'out' : 'in';
  const who = document.createElement('span');
  who.className = 'who';
  const name = m.contact && m.contact.name ? ` (${m.contact.name})` : '';
  who.textContent = m.fromMe ? `to ${m.chat}` : `from ${m.from}${name}`;
  const text = document.createElement('span');
  text.className = 'body';
  text.textContent = m.type === 'chat' ? m.body : `[${m.type}] ${m.body || ''}`;
  li.append(who, text);
  list.append(li);
  list.scrollTop = list.scrollHeight;
}

async function loadMessages(id) {
  $('messages').replaceChildren();
  try {
    const page = await api('GET', `/api/messages/${encodeURIComponent(id)}?limit=50`);
    if (id === current) page.messages.forEach(addMessage);
  } catch (e) {
    if (e.status !== 404) notice(`Messages of ${id}: ${e.message}`);
  }
}

async function select(id) {
  current = id;
  renderSessions();
  renderCurrent();
  await loadMessages(id);
  if (session(id).state === 'QR_READY') await loadQr(id);
}

function feedLine(kind, data) {
  const li = document.createElement('li');
  let what = '';
  switch (kind) {
    case 'qr': what = 'QR code'; break;
    case 'connection': what = data.state + (data.reason ? ` (${data.reason})` : ''); break;
    case 'message': what = `${data.fromMe ? 'sent to ' + data.chat : 'from ' + data.from}: ${data.body}`; break;
    case 'receipt': what = `${data.type} ${data.ids.join(', ')}`; break;
    default: what = JSON.stringify(data);
  }
  li.textContent = `${(data.at || '').slice(11, 19)} ${data.sessionId} ${kind} ${what}`;
  const feed = $('feed');
  feed.prepend(li);
  while (feed.children.length > FEED_MAX) feed.lastChild.remove();
}

function connect() {
  if (source) source.close();
  const url = '/api/events' + (key ? `?apiKey=${encodeURIComponent(key)}` : '');
  source = new EventSource(url);
  source.addEventListener('open', () => {
    $('live').textContent = 'live';
    $('live').className = 'on';
    // Whatever happened while the feed was down is read again.
    loadSessions();
  });
  source.addEventListener('error', () => {
    $('live').textContent = 'offline';
    $('live').className = 'off';
  });
  const on = (kind, handle) => source.addEventListener(kind, (ev) => {
    let data;
    try { data = JSON.parse(ev.data); } catch (_) { return; }
    feedLine(kind, data);
    handle(data);
  });
  on('qr', (d) => {
    setState(d.sessionId, 'QR_READY');
    if (d.sessionId === current) showQr(d.image);
  });
  on('connection', (d) => {
    setState(d.sessionId, d.state);
    if (d.state === 'CONNECTED' || d.state === 'LOGGED_OUT') refresh(d.sessionId);
  });
  on('message', (d) => {
    if (d.sessionId === current) addMessage(d);
    // The account's name comes from its app-state a moment after it
    // connects; read it again while it is not known.
    if (!session(d.sessionId).pushname) refresh(d.sessionId);
  });
  on('receipt', (d) => { if (!session(d.sessionId).pushname) refresh(d.sessionId); });
  on('group', () => {});
}

$('key-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  key = $('api-key').value.trim();
  sessionStorage.setItem('wagate-api-key', key);
  connect();
});

$('create-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const id = $('new-session').value.trim();
  if (!id) return;
  current = id;
  session(id);
  renderSessions();
  renderCurrent();
  $('messages').replaceChildren();
  try {
    const started = await api('POST', '/api/start-session', { sessionId: id });
    const s = session(id);
    if (s.state === 'CONNECTING') s.state = STATES[started.status] || started.status;
    renderSessions();
    renderCurrent();
    notice('');
    $('new-session').value = '';
    if (session(id).state !== 'CONNECTED') await loadQr(id);
  } catch (e) {
    notice(`Cannot create ${id}: ${e.message}`);
  }
});

$('logout').addEventListener('click', async () => {
  if (!current) return;
  try {
    await api('POST', `/api/logout/${encodeURIComponent(current)}`);
    await refresh(current);
  } catch (e) {
    notice(`Cannot log out ${current}: ${e.message}`);
  }
});

$('chat-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  if (!current) return;
  const number = $('to').value.trim();
  const message = $('text').value;
  try {
    await api('POST', '/api/send-message', { sessionId: current, number, message });
    $('text').value = '';
    notice('');
  } catch (e) {
    notice(`Not sent: ${e.message}`);
  }
});

$('api-key').value = key;
connect();
// Also when the feed is refused (no key yet): says what is missing.
loadSessions();
