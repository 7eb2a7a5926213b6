// Shared by the server tests: where the servers are, raw HTTP helpers and
// a server-sent-events reader. The servers are started by tests/test_server.sh.
'use strict';

const assert = require('node:assert/strict');

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through tests/test_server.sh`);
  return value;
}

const servers = {
  get plain() { return env('SM_SERVER_URL'); },
  get keyed() { return env('SM_SERVER_KEY_URL'); },
  get fused() { return env('SM_SERVER_FUSED_URL'); },
  get aligned() { return env('SM_SERVER_ALIGNED_URL'); },
  get templated() { return env('SM_SERVER_TEMPLATED_URL'); },
  get tools() { return env('SM_SERVER_TOOLS_URL'); },
  get apiKey() { return env('SM_API_KEY'); },
};

async function post(base, path, body, headers = {}) {
  const res = await fetch(base + path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, text, json };
}

async function get(base, path, headers = {}) {
  const res = await fetch(base + path, { headers });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, text, json };
}

/* Every "data: ..." of a server-sent-events body, parsed ("[DONE]" kept as a string). */
function sseEvents(text) {
  const out = [];
  for (const block of text.split('\n\n')) {
    for (const line of block.split('\n')) {
      if (!line.startsWith('data: ')) continue;
      const data = line.slice(6);
      out.push(data === '[DONE]' ? data : JSON.parse(data));
    }
  }
  return out;
}

/* An OpenAI-style error body with the given status. */
function assertError(res, status, param) {
  assert.equal(res.status, status, `expected ${status}, got ${res.status}: ${res.text}`);
  assert.ok(res.json && res.json.error, `no error object in ${res.text}`);
  const e = res.json.error;
  assert.equal(typeof e.message, 'string');
  assert.ok(e.message.length > 0);
  assert.equal(typeof e.type, 'string');
  assert.ok('param' in e && 'code' in e, 'error has param and code');
  if (param !== undefined) assert.equal(e.param, param);
  return e;
}

module.exports = { servers, post, get, sseEvents, assertError, assert };
