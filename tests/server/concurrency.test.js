// Eight streaming clients at once on a server with two slots, while a ninth
// disconnects midway: every stream completes correctly, the abandoned
// generation is cancelled, and the server stays healthy.
'use strict';

const test = require('node:test');
const OpenAI = require('openai');
const { servers, get, assert } = require('./helpers');

const client = () => new OpenAI({ baseURL: servers.plain + '/v1', apiKey: 'unused', maxRetries: 0, timeout: 120000 });

async function streamOne(i) {
  const max = 60 + 10 * i;
  const stream = await client().completions.create({
    model: 'stories260K', prompt: `Story ${i}: once upon a time`, max_tokens: max, temperature: 0.8, seed: 100 + i,
    logprobs: 1, stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  const tokens = [];
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    if (!chunk.choices.length) continue;
    const c = chunk.choices[0];
    text += c.text;
    if (c.logprobs) tokens.push(...c.logprobs.tokens);
    if (c.finish_reason) finish = c.finish_reason;
  }
  return { i, max, text, tokens, finish, usage };
}

/* Reads a few chunks of a long generation, then hangs up. */
async function disconnectMidway() {
  const controller = new AbortController();
  const res = await fetch(servers.plain + '/v1/completions', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt: 'A very long story', max_tokens: 1800, stream: true, seed: 1 }),
    signal: controller.signal,
  });
  const reader = res.body.getReader();
  let chunks = 0;
  while (chunks < 3) {
    const { done } = await reader.read();
    if (done) throw new Error('the long stream ended before the client left');
    chunks++;
  }
  controller.abort();
  return chunks;
}

test('8 concurrent streams complete while a 9th client disconnects', async () => {
  const before = (await get(servers.plain, '/health')).json;
  const results = await Promise.all([disconnectMidway(), ...Array.from({ length: 8 }, (_, i) => streamOne(i))]);
  const streams = results.slice(1);
  for (const r of streams) {
    assert.equal(r.finish, 'length', `stream ${r.i}`);
    assert.equal(r.usage.completion_tokens, r.max, `stream ${r.i} got all its tokens`);
    assert.equal(r.tokens.length, r.max, `stream ${r.i}: one logprob entry per token`);
    assert.equal(r.tokens.join(''), r.text, `stream ${r.i}: tokens spell the text`);
  }
  // The abandoned generation stops early: its slot frees and it is counted.
  let health;
  for (let tries = 0; tries < 100; tries++) {
    health = (await get(servers.plain, '/health')).json;
    if (health.generations_cancelled > before.generations_cancelled && health.slots_processing === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(health.status, 'ok');
  assert.equal(health.generations_cancelled, before.generations_cancelled + 1, 'the disconnect cancelled its generation');
  assert.equal(health.slots_processing, 0);
  // ...and the server still answers.
  const again = await client().completions.create({ prompt: 'After the storm', max_tokens: 5 });
  assert.equal(again.usage.completion_tokens, 5);
});
