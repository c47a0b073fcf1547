// The ecomesh dashboard: polls the node's REST routes every few seconds and
// watches open collections live over the WebSocket. Everything it shows is
// built with DOM nodes and textContent, never parsed as HTML.
'use strict';
(function () {
  const TOKEN_KEY = 'ecomesh.token';
  const VIEWS_KEY = 'ecomesh.views';
  const POLL_MS = 3000;
  const MAX_ROWS = 200;

  const $ = (id) => document.getElementById(id);
  const report = window.__ecomeshReportError || function (t) { console.error(t); };

  const state = {
    token: null,
    pollTimer: null,
    ws: null,
    wsTimer: null,
    wsRetry: 0,
    views: new Map(),
    nextSub: 1,
    deleteArmed: null,
  };

  // ---------------------------------------------------------------- DOM

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else if (k === 'value' || k === 'max' || k === 'min') e[k] = v;
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  /** A table; each row is an array of cells or a ready <tr>. */
  function table(headers, rows, cls) {
    return el('table', { class: cls },
      el('thead', {}, el('tr', {}, headers.map((h) => el('th', {}, h)))),
      el('tbody', {}, rows.map((r) => (r instanceof Node ? r : el('tr', {}, r.map((c) => el('td', {}, c)))))));
  }

  function empty(text) {
    return el('p', { class: 'empty' }, text);
  }

  /** Scalar fields of `obj` not in `skip`, as a definition list. */
  function details(obj, skip) {
    const rows = Object.entries(obj || {}).filter(([k, v]) => !skip.includes(k) && (v === null || typeof v !== 'object'));
    if (!rows.length) return null;
    return el('dl', { class: 'details' }, rows.map(([k, v]) => [el('dt', {}, k.replace(/_/g, ' ')), el('dd', {}, scalar(k, v))]));
  }

  // --------------------------------------------------------- formatting

  function ago(ms) {
    if (typeof ms !== 'number' || !isFinite(ms) || ms <= 0) return el('span', { class: 'muted' }, 'never');
    const secs = Math.round((Date.now() - ms) / 1000);
    let text;
    if (secs < -1) text = 'in the future (clock skew)';
    else if (secs < 2) text = 'just now';
    else if (secs < 60) text = secs + ' s ago';
    else if (secs < 3600) text = Math.floor(secs / 60) + ' min ago';
    else if (secs < 86400) text = Math.floor(secs / 3600) + ' h ' + Math.floor((secs % 3600) / 60) + ' min ago';
    else text = new Date(ms).toLocaleString();
    return el('time', { datetime: new Date(ms).toISOString(), title: new Date(ms).toLocaleString() }, text);
  }

  function bytes(n) {
    if (typeof n !== 'number' || !isFinite(n)) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return (i === 0 ? String(v) : v.toFixed(v < 10 ? 1 : 0)) + ' ' + units[i];
  }

  function duration(secs) {
    if (typeof secs !== 'number') return '–';
    if (secs < 60) return secs + ' s';
    if (secs < 3600) return Math.floor(secs / 60) + ' min ' + (secs % 60) + ' s';
    return Math.floor(secs / 3600) + ' h ' + Math.floor((secs % 3600) / 60) + ' min';
  }

  function short(id) {
    const s = String(id);
    return s.length > 20 ? s.slice(0, 10) + '…' + s.slice(-6) : s;
  }

  function idCell(id) {
    return el('code', { title: String(id) }, short(id));
  }

  /** A CID as text: DAG-JSON link `{"/": cid}`, a string, or an array of them. */
  function cidText(v) {
    if (v === null || v === undefined) return '–';
    if (Array.isArray(v)) return v.map(cidText).join(', ');
    if (typeof v === 'object' && typeof v['/'] === 'string') return v['/'];
    return typeof v === 'string' ? v : JSON.stringify(v);
  }

  function scalar(key, v) {
    // `*_ms` fields are Unix times, except durations (`airtime_used_ms`): small values.
    if (typeof v === 'number' && /_ms$/.test(key)) return v > 1e12 ? ago(v) : duration(Math.round(v / 1000));
    if (typeof v === 'number' && /bytes|size/.test(key)) return bytes(v);
    if (typeof v === 'number' && /_secs$/.test(key)) return duration(v);
    if (v === null || v === undefined) return '–';
    return String(v);
  }

  function compact(v, limit) {
    const s = JSON.stringify(v);
    return s.length > limit ? s.slice(0, limit) + '…' : s;
  }

  function transportName(t) {
    if (typeof t === 'string') return t;
    if (t && typeof t === 'object') return t.type || t.transport || t.name || compact(t, 40);
    return String(t);
  }

  function reputation(r) {
    if (typeof r === 'number') return Number.isInteger(r) ? String(r) : r.toFixed(2);
    if (r && typeof r === 'object') {
      if (typeof r.score === 'number') return reputation(r.score);
      return compact(r, 80);
    }
    return '–';
  }

  function syncState(s) {
    if (!s) return '–';
    if (typeof s === 'string') return el('span', { class: 'badge', 'data-state': s }, s);
    const parts = [el('span', { class: 'badge', 'data-state': s.state || '' }, s.state || '?')];
    if (typeof s.pending === 'number') parts.push(' ' + s.pending + ' pending');
    return el('span', {}, parts);
  }

  function meter(used, max, label) {
    if (typeof used !== 'number') return null;
    const pct = typeof max === 'number' && max > 0 ? Math.min(100, (used / max) * 100) : null;
    return el('div', { class: 'meter-row' },
      el('span', { class: 'meter-label' }, label),
      el('meter', { min: 0, max: typeof max === 'number' && max > 0 ? max : 1, value: used, high: (max || 1) * 0.8 }),
      el('span', {}, pct === null ? String(used) : pct.toFixed(pct < 10 ? 1 : 0) + ' %'));
  }

  // ------------------------------------------------------------------ API

  class ApiFailure extends Error {
    constructor(kind, message, status) {
      super(message);
      this.kind = kind;
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: 'Bearer ' + state.token };
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch('/api/v1' + path, init);
    } catch (e) {
      throw new ApiFailure('unreachable', 'the node does not answer (' + e.message + ')', 0);
    }
    const text = await res.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
    if (!res.ok) {
      const err = (json && json.error) || { kind: 'http_' + res.status, message: text.slice(0, 200) };
      throw new ApiFailure(err.kind, err.message, res.status);
    }
    return json;
  }

  function isAuthFailure(e) {
    return e instanceof ApiFailure && e.status === 401;
  }

  /** Handles an error of an action: back to the login on 401, true when handled. */
  function handleAuth(e) {
    if (!isAuthFailure(e)) return false;
    logout('The node refused the token (' + e.kind + '): ' + e.message);
    return true;
  }

  // --------------------------------------------------------------- panels

  function renderStatus(s) {
    const summary = $('node-summary');
    summary.replaceChildren(
      el('span', {}, 'node ', idCell(s.peer_id)),
      el('span', {}, (s.transports || []).join(', ') || 'no transports'),
      el('span', {}, (s.peers || 0) + ' peers'),
      el('span', {}, 'up ' + duration(s.uptime_secs)),
      el('span', {}, 'stream ' + (s.stream_head || 0)),
      el('span', { title: s.replicated_root || '' }, 'root ', el('code', {}, short(s.replicated_root || s.root_cid || '–'))));
  }

  function renderCollections(data) {
    const cols = Array.isArray(data.collections) ? data.collections : [];
    if (!cols.length) return empty('No collections yet: write a document.');
    return table(['Collection', 'Documents', ''], cols.map((c) => [
      c.name,
      String(c.documents !== undefined ? c.documents : '–'),
      el('button', { type: 'button', class: 'small', onclick: () => openView(c.name) }, 'Watch live'),
    ]));
  }

  function renderPeers(data) {
    const peers = Array.isArray(data.peers) ? data.peers : [];
    if (!peers.length) return empty('No peers reachable.');
    const groups = new Map();
    for (const p of peers) {
      const ts = Array.isArray(p.transports) && p.transports.length ? p.transports.map(transportName) : ['(no transport)'];
      for (const t of ts) {
        if (!groups.has(t)) groups.set(t, []);
        groups.get(t).push(p);
      }
    }
    return [...groups].map(([t, ps]) => el('div', { class: 'group', 'data-transport': t },
      el('h3', {}, t + ' · ' + ps.length),
      table(['Peer', 'Last seen', 'Reputation', 'Sync'], ps.map((p) => [
        p.display_name ? el('span', {}, p.display_name, el('br'), idCell(p.peer_id)) : idCell(p.peer_id),
        ago(p.last_seen_ms), reputation(p.reputation), syncState(p.sync),
      ]))));
  }

  function renderSync(data) {
    const peers = Array.isArray(data.peers) ? data.peers : [];
    return [
      el('p', {}, 'This node: ', syncState(data.state || '?')),
      details(data, ['state']),
      peers.length
        ? table(['Peer', 'State', 'Pending', 'Last sync'], peers.map((p) => [
          idCell(p.peer_id), syncState(p.state), String(p.pending !== undefined ? p.pending : '–'), ago(p.last_sync_ms),
        ]))
        : empty('No peers to sync with.'),
    ];
  }

  function renderQueue(data) {
    const dests = Array.isArray(data.by_destination) ? data.by_destination : [];
    return [
      meter(data.messages, data.max_messages, (data.messages || 0) + ' of ' + (data.max_messages || '?') + ' messages'),
      meter(data.bytes, data.max_bytes, bytes(data.bytes) + ' of ' + bytes(data.max_bytes)),
      details(data, ['messages', 'max_messages', 'bytes', 'max_bytes']),
      dests.length
        ? table(['Destination', 'Messages'], dests.map((d) => [
          d.peer_id ? idCell(d.peer_id) : el('span', { class: 'muted' }, '(broadcast)'), String(d.messages),
        ]))
        : empty('Nothing waiting for a peer.'),
    ];
  }

  function renderTransports(data) {
    const ts = Array.isArray(data.transports) ? data.transports : [];
    const lora = ts.filter((t) => t.lora || t.type === 'lora');
    return [
      ts.length
        ? table(['Transport', 'Listening on', 'Peers'], ts.map((t) => [
          transportName(t), (t.listen || []).join(' ') || '–', String(t.peers !== undefined ? t.peers : '–'),
        ]))
        : empty('No transports running.'),
      lora.length
        ? lora.map((t) => {
          if (!t.lora) return empty('LoRa is running, but its radio did not report its airtime.');
          const d = t.lora;
          const span = typeof d.window_secs === 'number' ? ' over ' + duration(d.window_secs) : '';
          return el('div', { class: 'lora' },
            el('h3', {}, 'LoRa duty cycle'),
            meter(d.duty_cycle_used, d.duty_cycle_budget, 'budget used' + span),
            details(d, ['duty_cycle_used', 'duty_cycle_budget', 'window_secs']));
        })
        : empty('No LoRa transport: no duty-cycle budget to spend.'),
    ];
  }

  function renderBlobs(data) {
    const blobs = Array.isArray(data.blobs) ? data.blobs : [];
    if (!blobs.length) return empty('No blobs.');
    const shown = blobs.slice(0, MAX_ROWS);
    return [
      table(['Blob', 'Collection', 'Size', 'Details'], shown.map((b) => [
        idCell(cidText(b.id)), b.collection || '–', bytes(b.size),
        compact(Object.fromEntries(Object.entries(b).filter(([k]) => !['id', 'collection', 'size'].includes(k))), 120),
      ])),
      blobs.length > shown.length ? empty('… and ' + (blobs.length - shown.length) + ' more') : null,
    ];
  }

  const PANELS = {
    '/collections': renderCollections,
    '/peers': renderPeers,
    '/sync': renderSync,
    '/queue': renderQueue,
    '/transports': renderTransports,
    '/blobs': renderBlobs,
  };

  function failureNote(route, e) {
    if (e.kind === 'unknown_route') return empty('This node does not serve /api/v1' + route + ' (an older version?).');
    return el('p', { class: 'error' }, e.kind + ': ' + e.message);
  }

  async function refreshPanel(body) {
    const route = body.dataset.route;
    let data;
    try {
      data = await api('GET', route);
    } catch (e) {
      if (isAuthFailure(e)) throw e;
      body.dataset.state = 'error';
      body.replaceChildren(failureNote(route, e));
      return;
    }
    try {
      body.replaceChildren(...[PANELS[route](data || {})].flat(Infinity).filter((n) => n));
      body.dataset.state = 'ok';
    } catch (e) {
      body.dataset.state = 'error';
      body.replaceChildren(el('p', { class: 'error' }, 'cannot show this answer: ' + e.message));
      report('rendering ' + route + ': ' + (e.stack || e));
    }
  }

  async function refreshAll() {
    try {
      renderStatus(await api('GET', '/status'));
      setConnection('connected');
      await Promise.all([...document.querySelectorAll('[data-route]')].map(refreshPanel));
    } catch (e) {
      if (handleAuth(e)) return;
      setConnection('offline', e.message);
    }
  }

  function refreshRoutes(routes) {
    for (const r of routes) {
      const body = document.querySelector('[data-route="' + r + '"]');
      if (body) refreshPanel(body).catch(handleAuth);
    }
  }

  function poll() {
    clearTimeout(state.pollTimer);
    refreshAll().finally(() => {
      if (state.token) state.pollTimer = setTimeout(poll, POLL_MS);
    });
  }

  function setConnection(s, why) {
    const c = $('connection');
    c.dataset.state = s;
    c.textContent = s === 'connected' ? (state.ws && state.ws.readyState === WebSocket.OPEN ? 'connected · live' : 'connected') : 'offline';
    c.title = why || '';
  }

  // ----------------------------------------------------------- live views

  function saveViews() {
    sessionStorage.setItem(VIEWS_KEY, JSON.stringify([...state.views.keys()]));
  }

  function setViewState(v, s, text) {
    v.root.dataset.state = s;
    v.status.dataset.state = s;
    v.status.textContent = text;
  }

  function openView(name) {
    const collection = String(name).trim();
    if (!collection) return;
    if (state.views.has(collection)) {
      state.views.get(collection).root.scrollIntoView({ block: 'nearest' });
      return;
    }
    const v = {
      collection,
      sub: 'c' + state.nextSub++,
      body: el('div', { class: 'view-body' }, empty('waiting for the first snapshot…')),
      status: el('span', { class: 'badge' }, ''),
    };
    v.root = el('div', { class: 'live-view', 'data-collection': collection },
      el('div', { class: 'view-head' },
        el('h3', {}, collection), v.status,
        el('button', { type: 'button', class: 'small', onclick: () => closeView(collection) }, 'Close')),
      v.body);
    setViewState(v, 'connecting', 'connecting');
    state.views.set(collection, v);
    $('live-views').append(v.root);
    saveViews();
    sendSubscribe(v);
    connectWs();
  }

  function closeView(collection) {
    const v = state.views.get(collection);
    if (!v) return;
    state.views.delete(collection);
    v.root.remove();
    saveViews();
    send({ type: 'unsubscribe', sub: v.sub });
  }

  function renderView(v, docs, pending) {
    setViewState(v, 'live', 'live' + (pending ? ' · pending writes' : ''));
    v.root.dataset.pendingWrites = pending ? 'true' : 'false';
    if (!docs.length) {
      v.body.replaceChildren(empty('No documents.'));
      return;
    }
    const rows = docs.slice(0, MAX_ROWS).map((d) => el('tr', {
      'data-doc-id': d.id,
      title: 'click to edit',
      onclick: () => editDocument(v.collection, d),
    }, el('td', {}, el('code', {}, d.id)), el('td', { class: 'fields' }, compact(d.fields, 400))));
    v.body.replaceChildren(
      el('p', { class: 'muted' }, docs.length + ' document' + (docs.length === 1 ? '' : 's')),
      table(['Id', 'Fields'], rows, 'docs'));
  }

  function viewOf(sub) {
    for (const v of state.views.values()) if (v.sub === sub) return v;
    return null;
  }

  function send(msg) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(msg));
  }

  function sendSubscribe(v) {
    send({ type: 'subscribe', sub: v.sub, query: { collection: v.collection, query: {} } });
  }

  function onWsMessage(data) {
    let msg;
    try { msg = JSON.parse(data); } catch (_) {
      console.warn('the node sent a frame that is not JSON');
      return;
    }
    if (msg.sub === 'sync') {
      if (msg.type === 'event') refreshRoutes(['/sync', '/peers', '/queue']);
      return;
    }
    const v = msg.sub ? viewOf(msg.sub) : null;
    switch (msg.type) {
      case 'subscribed':
        if (v) setViewState(v, 'subscribed', 'subscribed');
        break;
      case 'snapshot':
        if (v) renderView(v, Array.isArray(msg.documents) ? msg.documents : (msg.doc ? [msg.doc] : []), !!msg.pending_writes);
        break;
      case 'error': {
        const err = msg.error || {};
        if (v) setViewState(v, 'error', (err.kind || 'error') + ': ' + (err.message || ''));
        else setConnection('connected', 'live updates: ' + (err.kind || 'error') + ': ' + (err.message || ''));
        break;
      }
      default:
        break;
    }
  }

  function connectWs() {
    if (state.ws || !state.token) return;
    clearTimeout(state.wsTimer);
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(scheme + '//' + location.host + '/api/v1/ws?access_token=' + encodeURIComponent(state.token));
    state.ws = ws;
    ws.addEventListener('open', () => {
      state.wsRetry = 0;
      send({ type: 'subscribe', sub: 'sync', sync: true });
      for (const v of state.views.values()) sendSubscribe(v);
      setConnection('connected');
    });
    ws.addEventListener('message', (e) => onWsMessage(e.data));
    ws.addEventListener('close', () => {
      if (state.ws !== ws) return;
      state.ws = null;
      for (const v of state.views.values()) setViewState(v, 'connecting', 'reconnecting');
      if (!state.token) return;
      const delay = Math.min(10000, 500 * 2 ** state.wsRetry);
      state.wsRetry += 1;
      state.wsTimer = setTimeout(connectWs, delay);
    });
  }

  // ---------------------------------------------------------- write form

  function docPath(collection, id) {
    return '/collections/' + encodeURIComponent(collection) + '/docs/' + encodeURIComponent(id);
  }

  function writeResult(s, text) {
    const r = $('write-result');
    r.dataset.state = s;
    r.textContent = text;
  }

  function editDocument(collection, d) {
    $('write-collection').value = collection;
    $('write-id').value = d.id;
    $('write-fields').value = JSON.stringify(d.fields, null, 2);
    $('write-id').focus();
  }

  function formTarget() {
    const collection = $('write-collection').value.trim();
    const id = $('write-id').value.trim();
    if (!collection || !id) {
      writeResult('error', 'Name the collection and the document id.');
      return null;
    }
    return { collection, id };
  }

  async function onWrite(e) {
    e.preventDefault();
    const t = formTarget();
    if (!t) return;
    let fields;
    try {
      fields = JSON.parse($('write-fields').value);
    } catch (err) {
      writeResult('error', 'The fields are not JSON: ' + err.message);
      return;
    }
    if (!fields || typeof fields !== 'object' || Array.isArray(fields)) {
      writeResult('error', 'The fields must be a JSON object, like {"title": "hello"}.');
      return;
    }
    const method = $('write-mode').value === 'merge' ? 'PATCH' : 'PUT';
    writeResult('pending', 'writing…');
    try {
      const r = await api(method, docPath(t.collection, t.id), { fields });
      writeResult('ok', 'Wrote ' + t.collection + '/' + t.id + ': version ' + cidText(r && r.version) + ', root ' + cidText(r && r.root_cid));
      refreshRoutes(['/collections']);
    } catch (err) {
      if (!handleAuth(err)) writeResult('error', err.kind + ': ' + err.message);
    }
  }

  async function onDelete() {
    const t = formTarget();
    if (!t) return;
    const key = t.collection + '/' + t.id;
    const button = $('write-delete');
    if (state.deleteArmed !== key) {
      state.deleteArmed = key;
      button.textContent = 'Delete ' + key + '?';
      setTimeout(() => {
        if (state.deleteArmed === key) {
          state.deleteArmed = null;
          button.textContent = 'Delete';
        }
      }, 4000);
      return;
    }
    state.deleteArmed = null;
    button.textContent = 'Delete';
    writeResult('pending', 'deleting…');
    try {
      await api('DELETE', docPath(t.collection, t.id));
      writeResult('ok', 'Deleted ' + key + '.');
      refreshRoutes(['/collections']);
    } catch (err) {
      if (!handleAuth(err)) writeResult('error', err.kind + ': ' + err.message);
    }
  }

  async function onSyncNow() {
    try {
      await api('POST', '/sync', {});
      refreshRoutes(['/sync', '/peers']);
    } catch (err) {
      if (!handleAuth(err)) setConnection('connected', 'sync: ' + err.kind + ': ' + err.message);
    }
  }

  // ------------------------------------------------------- login, start

  function takeTokenFromFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    const t = params.get('token');
    if (!t) return;
    sessionStorage.setItem(TOKEN_KEY, t);
    history.replaceState(null, '', location.pathname + location.search);
  }

  function showLogin(message) {
    $('main').hidden = true;
    $('logout').hidden = true;
    $('login').hidden = false;
    $('login-message').textContent = message || '';
    $('login-token').focus();
  }

  function logout(message) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    clearTimeout(state.pollTimer);
    clearTimeout(state.wsTimer);
    if (state.ws) {
      const ws = state.ws;
      state.ws = null;
      ws.close();
    }
    setConnection('offline');
    showLogin(message);
  }

  function start() {
    state.token = sessionStorage.getItem(TOKEN_KEY);
    if (!state.token) {
      showLogin('');
      return;
    }
    $('login').hidden = true;
    $('main').hidden = false;
    $('logout').hidden = false;
    let saved = [];
    try { saved = JSON.parse(sessionStorage.getItem(VIEWS_KEY) || '[]'); } catch (_) { saved = []; }
    if (Array.isArray(saved)) saved.forEach(openView);
    connectWs();
    poll();
  }

  function init() {
    takeTokenFromFragment();
    $('login-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const t = $('login-token').value.trim();
      if (!t) return;
      sessionStorage.setItem(TOKEN_KEY, t);
      $('login-token').value = '';
      start();
    });
    $('logout').addEventListener('click', () => logout('Token forgotten.'));
    $('open-form').addEventListener('submit', (e) => {
      e.preventDefault();
      openView($('open-collection').value);
      $('open-collection').value = '';
    });
    $('write-form').addEventListener('submit', onWrite);
    $('write-delete').addEventListener('click', onDelete);
    $('sync-now').addEventListener('click', onSyncNow);
    start();
  }

  init();
})();
