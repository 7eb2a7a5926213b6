// What a hostile web page or client can do to a local server, and the
// request fields that must act: same-origin by default, Host checked on
// loopback, JSON only, the API key before the body, no smuggling, slow
// clients cut off, penalties and logit_bias applied, explicit sampling
// values held, unknown fields refused.
'use strict';

const test = require('node:test');
const net = require('node:net');
const { servers, post, get, sseEvents, assertError, assert } = require('./helpers');

const guarded = () => process.env.SM_SERVER_GUARDED_URL;

/* Sends raw bytes and collects what comes back until the server closes or
 * `ms` pass. Returns { text, closedAfterMs }. */
function raw(base, bytes, ms = 3000) {
  const url = new URL(base);
  return new Promise((resolve) => {
    const t0 = Date.now();
    let text = '';
    const sock = net.connect(Number(url.port), url.hostname, () => sock.write(bytes));
    const done = () => { clearTimeout(timer); sock.destroy(); resolve({ text, closedAfterMs: Date.now() - t0 }); };
    const timer = setTimeout(done, ms);
    sock.on('data', (d) => { text += d.toString(); });
    sock.on('end', done);
    sock.on('error', done);
    sock.on('close', done);
  });
}

const statusOf = (text) => Number((text.match(/^HTTP\/1\.[01] (\d{3})/) || [])[1]);

function request(base, { method = 'POST', path = '/v1/completions', headers = {}, body = '' }) {
  const url = new URL(base);
  const h = { Host: `${url.hostname}:${url.port}`, 'Content-Type': 'application/json', ...headers };
  if (body && !('Content-Length' in h) && !('Transfer-Encoding' in h)) h['Content-Length'] = Buffer.byteLength(body);
  let head = `${method} ${path} HTTP/1.1\r\n`;
  for (const [k, v] of Object.entries(h)) if (v !== null) for (const one of [].concat(v)) head += `${k}: ${one}\r\n`;
  return head + 'Connection: close\r\n\r\n' + body;
}

const BODY = JSON.stringify({ prompt: 'Once', max_tokens: 2 });

test('no Access-Control-Allow-Origin: * anywhere; a foreign Origin is refused', async () => {
  const plain = await get(servers.plain, '/v1/models');
  assert.equal(plain.headers.get('access-control-allow-origin'), null);
  const evil = await raw(servers.plain, request(servers.plain, { headers: { Origin: 'http://evil.example' }, body: BODY }));
  assert.equal(statusOf(evil.text), 403, evil.text);
  assert.match(evil.text, /evil\.example/);
  // a page of this server (same origin) is served, and told so
  const url = new URL(servers.plain);
  const own = await raw(servers.plain, request(servers.plain, { headers: { Origin: `http://${url.host}` }, body: BODY }));
  assert.equal(statusOf(own.text), 200, own.text);
  assert.match(own.text, new RegExp(`Access-Control-Allow-Origin: http://${url.host}`, 'i'));
});

test('--cors-origins lets a listed origin in, preflight included', async () => {
  const ok = await raw(guarded(), request(guarded(), { headers: { Origin: 'http://allowed.example' }, body: BODY }));
  assert.equal(statusOf(ok.text), 200, ok.text);
  assert.match(ok.text, /Access-Control-Allow-Origin: http:\/\/allowed\.example/i);
  const pre = await raw(guarded(), request(guarded(), {
    method: 'OPTIONS', headers: { Origin: 'http://allowed.example', 'Access-Control-Request-Method': 'POST' },
  }));
  assert.equal(statusOf(pre.text), 200, pre.text);
  assert.match(pre.text, /Access-Control-Allow-Origin: http:\/\/allowed\.example/i);
  // Another origin's preflight is answered, but allows nothing: the browser keeps its page out...
  const other = await raw(guarded(), request(guarded(), {
    method: 'OPTIONS', headers: { Origin: 'http://other.example', 'Access-Control-Request-Method': 'POST' },
  }));
  assert.equal(statusOf(other.text), 200, other.text);
  assert.doesNotMatch(other.text, /Access-Control-Allow/i);
  // ... and its requests are refused outright.
  const post = await raw(guarded(), request(guarded(), { headers: { Origin: 'http://other.example' }, body: BODY }));
  assert.equal(statusOf(post.text), 403, post.text);
});

test('a Host that is not loopback is refused (DNS rebinding)', async () => {
  const r = await raw(servers.plain, request(servers.plain, { headers: { Host: 'attacker.example:8080' }, body: BODY }));
  assert.equal(statusOf(r.text), 403, r.text);
  const local = await raw(servers.plain, request(servers.plain, { headers: { Host: 'localhost:1234' }, body: BODY }));
  assert.equal(statusOf(local.text), 200, local.text);
});

test('POST bodies must be JSON: text/plain is refused with 415', async () => {
  const r = await post(servers.plain, '/v1/completions', BODY, { 'Content-Type': 'text/plain' });
  assertError(r, 415);
  // curl -d's form type from a client that is no browser still works
  const curl = await raw(servers.plain, request(servers.plain, {
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, body: BODY,
  }));
  assert.equal(statusOf(curl.text), 200, curl.text);
  const form = await raw(servers.plain, request(servers.plain, {
    headers: { 'Content-Type': 'application/x-www-form-urlencoded', Origin: `http://${new URL(servers.plain).host}` },
    body: BODY,
  }));
  assert.equal(statusOf(form.text), 415, form.text);
});

test('the API key is checked on the headers: 401 before a large body is sent', async () => {
  const big = 900 * 1024;
  const r = await raw(servers.keyed, request(servers.keyed, { headers: { 'Content-Length': String(big) } }), 2000);
  assert.equal(statusOf(r.text), 401, r.text);
  assert.ok(r.closedAfterMs < 1500, `answered after ${r.closedAfterMs} ms: it waited for the body`);
  assert.match(r.text, /invalid_api_key/);
});

test('two different Content-Length headers: 400; an unknown Transfer-Encoding: 501 at once', async () => {
  const two = await raw(servers.plain, request(servers.plain, { headers: { 'Content-Length': ['5', '7'] }, body: 'hello' }));
  assert.equal(statusOf(two.text), 400, two.text);
  const te = await raw(servers.plain, request(servers.plain, { headers: { 'Transfer-Encoding': 'gzip' }, body: 'x' }), 5000);
  assert.equal(statusOf(te.text), 501, te.text);
  assert.ok(te.closedAfterMs < 2000, `501 after ${te.closedAfterMs} ms`);
});

test('a client that sends its headers too slowly is cut off', async () => {
  const url = new URL(guarded());
  const t0 = Date.now();
  const closed = await new Promise((resolve) => {
    const sock = net.connect(Number(url.port), url.hostname);
    let n = 0;
    const drip = setInterval(() => { sock.write(n++ === 0 ? 'GET /health HTTP/1.1\r\n' : 'X-Slow: 1\r\n'); }, 300);
    const stop = (why) => { clearInterval(drip); sock.destroy(); resolve(why); };
    sock.on('close', () => stop('closed'));
    sock.on('error', () => stop('closed'));
    setTimeout(() => stop('still open'), 6000);
  });
  assert.equal(closed, 'closed');
  assert.ok(Date.now() - t0 < 5000, 'closed only after the test gave up');
});

test('unknown request fields are refused, naming the field', async () => {
  assertError(await post(servers.plain, '/v1/completions', { prompt: 'a', tempreature: 0.5 }), 400, 'tempreature');
  assertError(await post(servers.plain, '/v1/chat/completions', { messages: [{ role: 'user', content: 'hi' }], best_of: 2 }), 400, 'best_of');
});

test('logit_bias bans a token, frequency and presence penalties change greedy text', async () => {
  const base = { prompt: 'Once upon a time', max_tokens: 40, temperature: 0 };
  const plain = await post(servers.plain, '/v1/completions', { ...base, logprobs: 1 });
  assert.equal(plain.status, 200, plain.text);
  const toks = await post(servers.plain, '/tokenize', { content: plain.json.choices[0].text });
  const banned = toks.json.tokens[1];
  const biased = await post(servers.plain, '/v1/completions', { ...base, logit_bias: { [banned]: -100 } });
  assert.equal(biased.status, 200, biased.text);
  const again = await post(servers.plain, '/tokenize', { content: biased.json.choices[0].text });
  assert.ok(!again.json.tokens.includes(banned), `token ${banned} was banned but appeared`);
  const pen = await post(servers.plain, '/v1/completions', { ...base, frequency_penalty: 1.5 });
  assert.notEqual(pen.json.choices[0].text, plain.json.choices[0].text, 'frequency_penalty did nothing');
  const pres = await post(servers.plain, '/v1/completions', { ...base, presence_penalty: 1.5 });
  assert.notEqual(pres.json.choices[0].text, plain.json.choices[0].text, 'presence_penalty did nothing');
  assertError(await post(servers.plain, '/v1/completions', { ...base, logit_bias: { 99999: 1 } }), 400, 'logit_bias.99999');
  assertError(await post(servers.plain, '/v1/completions', { ...base, logit_bias: { 5: 'x' } }), 400, 'logit_bias.5');
});

test('logit_bias by text (llama-server\'s form) bans each of its tokens; generation_settings lists the biases', async () => {
  const base = { prompt: 'Once upon a time', n_predict: 40, temperature: 0 };
  const plain = await post(servers.plain, '/completion', base);
  const words = plain.json.content.trim().split(/\s+/).slice(0, 3).map((w) => ' ' + w);
  const ids = [];
  for (const w of words) ids.push(...(await post(servers.plain, '/tokenize', { content: w })).json.tokens);
  for (const logit_bias of [words.map((w) => [w, -100]), Object.fromEntries(words.map((w) => [w, false]))]) {
    const r = await post(servers.plain, '/completion', { ...base, logit_bias, return_tokens: true });
    assert.equal(r.status, 200, r.text);
    assert.ok(!r.json.tokens.some((t) => ids.includes(t)), `a banned token appeared: ${r.json.content}`);
    const listed = r.json.generation_settings.logit_bias;
    assert.deepEqual([...new Set(listed.map((e) => e.token))].sort(), [...new Set(ids)].sort());
    assert.ok(listed.every((e) => e.bias === null));
  }
  // ignore_eos: every end-of-generation token listed at -inf (null), as llama-server lists it
  const eos = await post(servers.plain, '/completion', { ...base, n_predict: 4, ignore_eos: true });
  assert.ok(eos.json.generation_settings.logit_bias.length > 0);
  assert.ok(eos.json.generation_settings.logit_bias.every((e) => e.bias === null));
  assert.deepEqual(plain.json.generation_settings.logit_bias, []);
  assertError(await post(servers.plain, '/completion', { ...base, logit_bias: [['', -1]] }), 400, 'logit_bias[0]');
});

test('explicit sampling values are held; without a selfmod object nothing adapts', async () => {
  const r = await post(servers.plain, '/v1/completions', {
    prompt: 'Once upon a time', max_tokens: 30, temperature: 0.2, seed: 3, selfmod: { confidence_threshold: 0.99, sharpen_threshold: 0.995 },
  });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.selfmod.final_temperature, 0.2);
  const mods = r.json.selfmod.events.filter((e) => e.type === 'modification');
  assert.ok(mods.every((m) => m.temperature_before === m.temperature_after), JSON.stringify(mods));
  assert.ok(mods.length > 0, 'the policy never adapted the repeat penalty the client left to it');
  // no selfmod object: plain sampling, as OpenAI and llama-server do it
  const plain = await post(servers.plain, '/v1/completions', { prompt: 'Once upon a time', max_tokens: 30, temperature: 0.2, seed: 3 });
  assert.equal(plain.status, 200);
  assert.ok(!plain.json.selfmod || !plain.json.selfmod.events || plain.json.selfmod.events.length === 0);
});

test('a streamed chat whose message cannot fit is a 400, not a 200 stream with an error', async () => {
  const long = 'Once upon a time there was a dog. '.repeat(400);
  const r = await post(servers.plain, '/v1/chat/completions', { messages: [{ role: 'user', content: long }], stream: true });
  const e = assertError(r, 400, 'messages');
  assert.equal(e.code, 'context_length_exceeded');
});

test('operator bans that rule out every token end the answer normally (no 5xx)', async () => {
  const r = await post(servers.plain, '/v1/completions', {
    prompt: 'Once upon a time', max_tokens: 30, temperature: 1, seed: 1,
    selfmod: { operators: ['probability_threshold:min_probability=0.9'], max_backtracks: 1000, max_backtracks_per_position: 1000 },
  });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.selfmod.stop_reason, 'no_candidates', JSON.stringify(r.json.selfmod.stop_reason));
});

test('a client that leaves a non-streamed request cancels its generation', async () => {
  const slow = process.env.SM_SERVER_SLOW_URL;
  const before = (await get(slow, '/health')).json;
  const controller = new AbortController();
  const pending = fetch(slow + '/v1/completions', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, signal: controller.signal,
    body: JSON.stringify({ prompt: 'Once upon a time', max_tokens: 1500, temperature: 0 }),
  }).catch(() => null);
  let started = false;
  for (let i = 0; i < 250 && !started; i++) {
    started = (await get(slow, '/health')).json.slots_processing === 1;
    if (!started) await new Promise((r) => setTimeout(r, 20));
  }
  assert.ok(started, 'the generation never started');
  await new Promise((r) => setTimeout(r, 300)); /* well into it */
  controller.abort();
  await pending;
  let health;
  for (let i = 0; i < 50; i++) { // the whole generation would take a minute
    health = (await get(slow, '/health')).json;
    if (health.slots_processing === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(health.slots_processing, 0, 'the slot is still generating for a client that left');
  assert.equal(health.generations_cancelled, before.generations_cancelled + 1);
});

test('--max-connections: a connection over the limit waits unserved until others close', async () => {
  const url = new URL(guarded());
  const held = [];
  for (let i = 0; i < 8; i++) {
    held.push(await new Promise((resolve) => {
      const s = net.connect(Number(url.port), url.hostname, () => resolve(s));
      s.on('error', () => {});
    }));
  }
  /* (well inside the guarded server's 1 s header timeout, which would free the 8) */
  const refused = await raw(guarded(), request(guarded(), { method: 'GET', path: '/health' }), 500);
  assert.ok(!statusOf(refused.text), `a 9th connection was served: ${refused.text.slice(0, 80)}`);
  held.forEach((s) => s.destroy());
  await new Promise((r) => setTimeout(r, 200));
  const served = await raw(guarded(), request(guarded(), { method: 'GET', path: '/health' }));
  assert.equal(statusOf(served.text), 200, served.text);
});

test('/tokenize, /detokenize and /loom/expand refuse unknown fields too', async () => {
  assertError(await post(servers.plain, '/tokenize', { content: 'a', with_piece: true }), 400, 'with_piece');
  assertError(await post(servers.plain, '/detokenize', { tokens: [1], skip_special: true }), 400, 'skip_special');
  assertError(await post(servers.plain, '/loom/expand', { prefix: 'Once', beam_limt: 3 }), 400, 'beam_limt');
});
