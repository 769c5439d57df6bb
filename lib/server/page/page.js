// page/page.js — the serve command's web page: streams completions from /v1/completions (showing the
// route each prompt took), posts edits to /v1/edits, rolls them back, and polls the edit queue.
'use strict';

const $ = (id) => document.getElementById(id);
const keyInput = $('apikey');
keyInput.value = sessionStorage.getItem('repair-api-key') || '';
keyInput.addEventListener('change', () => sessionStorage.setItem('repair-api-key', keyInput.value));

function headers(json = true) {
  const h = json ? { 'content-type': 'application/json' } : {};
  if (keyInput.value) h.authorization = `Bearer ${keyInput.value}`;
  return h;
}

async function api(method, path, body) {
  const r = await fetch(path, { method, headers: headers(body !== undefined), body: body === undefined ? undefined : JSON.stringify(body) });
  const j = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(j.error ? `${j.error.code}: ${j.error.message}` : `HTTP ${r.status}`);
  return j;
}

function routeText(route) {
  if (!route) return '';
  if (route.memory === 'main' && route.threshold >= 1e6) return 'route: main weights (no edits yet)';
  const where = route.memory === 'main' ? 'main weights (no memory cleared its threshold)' : route.memory === 'working' ? 'the working memory' : `side memory ${route.memory}`;
  return `route: ${where} — score ${route.score.toFixed(3)} ${route.memory === 'main' ? '<' : '≥'} threshold ${route.threshold.toFixed(3)}`;
}

// ---- generation (server-sent events, as the OpenAI API streams them) ----
$('gen-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const out = $('output');
  const routeEl = $('route');
  const btn = $('generate');
  out.textContent = '';
  routeEl.textContent = '';
  routeEl.className = 'route';
  btn.disabled = true;
  try {
    const r = await fetch('/v1/completions', {
      method: 'POST',
      headers: headers(),
      body: JSON.stringify({
        prompt: $('prompt').value,
        max_tokens: Number($('max-tokens').value) || 32,
        temperature: Number($('temperature').value) || 0,
        stream: true,
      }),
    });
    if (!r.ok) {
      const j = await r.json().catch(() => ({}));
      throw new Error(j.error ? `${j.error.code}: ${j.error.message}` : `HTTP ${r.status}`);
    }
    out.textContent = $('prompt').value;
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const ev1 = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (!ev1.startsWith('data: ')) continue;
        const data = ev1.slice(6);
        if (data === '[DONE]') continue;
        const j = JSON.parse(data);
        if (j.error) throw new Error(`${j.error.code}: ${j.error.message}`);
        if (j.repair && j.repair.route) routeEl.textContent = routeText(j.repair.route);
        for (const c of j.choices) out.textContent += c.text;
      }
    }
  } catch (e) {
    routeEl.textContent = String(e.message || e);
    routeEl.className = 'route err';
  } finally {
    btn.disabled = false;
  }
});

// ---- edits ----
$('edit-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const msg = $('edit-msg');
  try {
    const j = await api('POST', '/v1/edits', { prompt: $('edit-prompt').value, target: $('edit-target').value });
    msg.textContent = `accepted ${j.data.map((d) => d.id).join(', ')} (queued)`;
    msg.className = 'muted';
    $('edit-prompt').value = '';
    $('edit-target').value = '';
    refresh();
  } catch (e) {
    msg.textContent = String(e.message || e);
    msg.className = 'err';
  }
});

async function rollback(id) {
  try {
    await api('DELETE', `/v1/edits/${encodeURIComponent(id)}`);
  } catch (e) {
    $('edit-msg').textContent = String(e.message || e);
    $('edit-msg').className = 'err';
  }
  refresh();
}

function cell(tr, text, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

async function refresh() {
  try {
    const j = await api('GET', '/v1/edits');
    const q = j.queue;
    $('queue-summary').textContent = `— ${q.depth} waiting${q.training ? `, training ${q.training}` : ''}, ${q.counts.live} live`;
    const tbody = $('edits');
    tbody.textContent = '';
    for (const e of j.data.slice().reverse()) {
      const tr = document.createElement('tr');
      tr.dataset.id = e.id;
      cell(tr, e.id);
      cell(tr, e.state.replace('_', ' '), `state ${e.state}`).title = e.error ? `${e.error.code}: ${e.error.message}` : '';
      cell(tr, e.prompt);
      cell(tr, e.target);
      cell(tr, e.latency_ms === null ? '' : `${(e.latency_ms / 1000).toFixed(2)} s`);
      const td = cell(tr, '');
      if (e.state === 'live' || e.state === 'queued' || e.state === 'training') {
        const b = document.createElement('button');
        b.className = 'rollback';
        b.textContent = 'Roll back';
        b.addEventListener('click', () => rollback(e.id));
        td.appendChild(b);
      }
      tbody.appendChild(tr);
    }
  } catch (e) {
    $('queue-summary').textContent = String(e.message || e);
  }
}

fetch('/health')
  .then((r) => r.json())
  .then((h) => ($('model').textContent = `${h.model} (${h.backend})`))
  .catch(() => {});
refresh();
setInterval(refresh, 1000);
