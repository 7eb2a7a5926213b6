// --api-key on one server; several models fused on another.
'use strict';

const test = require('node:test');
const OpenAI = require('openai');
const { servers, post, get, sseEvents, assertError, assert } = require('./helpers');

test('--api-key: 401 without the right bearer token, /health stays open', async () => {
  const base = servers.keyed;
  assert.equal((await get(base, '/health')).status, 200);
  assert.equal((await get(base, '/')).status, 200, 'the web page itself needs no key');
  const none = assertError(await post(base, '/v1/completions', { prompt: 'a', max_tokens: 2 }), 401);
  assert.equal(none.code, 'invalid_api_key');
  assertError(await post(base, '/v1/completions', { prompt: 'a' }, { Authorization: 'Bearer wrong' }), 401);
  assertError(await get(base, '/v1/models', { Authorization: 'Basic abc' }), 401);
  assertError(await post(base, '/tokenize', { content: 'a' }), 401);
  const ok = await post(base, '/tokenize', { content: 'a' }, { Authorization: `Bearer ${servers.apiKey}` });
  assert.equal(ok.status, 200);
  const wrongClient = new OpenAI({ baseURL: base + '/v1', apiKey: 'nope', maxRetries: 0 });
  await assert.rejects(wrongClient.models.list(), (e) => e.status === 401);
  const client = new OpenAI({ baseURL: base + '/v1', apiKey: servers.apiKey, maxRetries: 0 });
  // --alias names the model; the file's own name still works.
  assert.deepEqual((await client.models.list()).data.map((m) => m.id), ['tiny-stories']);
  const r = await client.chat.completions.create({ model: 'tiny-stories', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 3 });
  assert.equal(r.usage.completion_tokens, 3);
  assert.equal(r.model, 'tiny-stories');
  const byFile = await client.completions.create({ model: 'stories260K', prompt: 'Hi', max_tokens: 2 });
  assert.equal(byFile.usage.completion_tokens, 2);
});

test('serve --preset original: requests start from the original policy; a request may choose another', async () => {
  const auth = { Authorization: `Bearer ${servers.apiKey}` };
  const body = { prompt: 'Once upon a time', max_tokens: 24, selfmod: {} };
  const orig = await post(servers.keyed, '/v1/completions', body, auth);
  assert.equal(orig.status, 200, orig.text);
  const said = orig.json.selfmod.events.map((e) => e.description || '');
  // the original's absolute thresholds speak; the calibrated policy's relative ones never do
  assert.ok(said.some((d) => /[<>] 0\.(50|85)/.test(d)), JSON.stringify(said));
  assert.ok(!said.some((d) => /sd (below|above)/.test(d)), JSON.stringify(said));
  const cal = await post(servers.keyed, '/v1/completions', { ...body, selfmod: { preset: 'calibrated' } }, auth);
  assert.equal(cal.status, 200, cal.text);
  assert.ok(!cal.json.selfmod.events.some((e) => /[<>] 0\.(50|85)/.test(e.description || '')));
});

test('fusion: /v1/models lists the fused set and each model', async () => {
  const list = await new OpenAI({ baseURL: servers.fused + '/v1', apiKey: 'x', maxRetries: 0 }).models.list();
  assert.deepEqual(list.data.map((m) => m.id), ['stories260K+llama2xs-salty-280K', 'stories260K', 'llama2xs-salty-280K']);
});

test('fusion: per-token agreement and reference disagreements', async () => {
  const body = {
    prompt: 'Once upon a time', max_tokens: 20, temperature: 0, selfmod: { fusion_mode: 'reference' },
  };
  const r = await post(servers.fused, '/v1/completions', body);
  assert.equal(r.status, 200, r.text);
  const sm = r.json.selfmod;
  assert.equal(sm.n_models, 2);
  assert.equal(sm.fusion_mode, 'reference');
  assert.equal(sm.fusion.length, r.json.usage.completion_tokens);
  for (const f of sm.fusion) {
    assert.equal(f.p_chosen.length, 2);
    assert.ok(f.top1_agreement >= 0 && f.top1_agreement <= 1);
  }
  const differs = sm.fusion.map((f, i) => (f.reference_differs ? i : -1)).filter((i) => i >= 0);
  assert.deepEqual(sm.reference_disagreements, differs);
  // In reference mode model 0 decides: greedy fused text = greedy stories260K alone.
  const alone = await post(servers.fused, '/v1/completions', { ...body, model: 'stories260K', selfmod: {} });
  assert.equal(alone.json.choices[0].text, r.json.choices[0].text);
  assert.equal(alone.json.selfmod.n_models, 1);

  const stream = await post(servers.fused, '/v1/completions', { ...body, stream: true, logprobs: 2 });
  const tokens = sseEvents(stream.text).filter((e) => e !== '[DONE]').flatMap((e) => (e.selfmod && e.selfmod.events) || [])
    .filter((e) => e.type === 'token');
  assert.equal(tokens.length, 20);
  for (const t of tokens) {
    assert.equal(t.fusion.p_chosen.length, 2);
    assert.equal(t.fusion.top1_piece.length, 2);
    assert.equal(t.top.length, 2);
  }
});

test('fusion: weights and modes are checked', async () => {
  const bad = await post(servers.fused, '/v1/completions', { prompt: 'a', selfmod: { fusion_mode: 'voting', fusion_weights: [1] } });
  assertError(bad, 400, 'selfmod.fusion_weights');
  assertError(await post(servers.fused, '/v1/completions', { prompt: 'a', selfmod: { fusion_mode: 'loudest' } }), 400, 'selfmod.fusion_mode');
  const ok = await post(servers.fused, '/v1/completions', {
    prompt: 'Once', max_tokens: 6, selfmod: { fusion_mode: 'voting', fusion_weights: [0.7, 0.3] },
  });
  assert.equal(ok.status, 200, ok.text);
  assert.equal(ok.json.selfmod.fusion_mode, 'voting');
  const loom = await post(servers.fused, '/loom/expand', { prefix: 'Once upon a time', max_depth: 4, beam_limit: 4 });
  assert.equal(loom.status, 200, loom.text);
  assert.ok(loom.json.suggestions.length >= 1);
});

test('fusion with alignment batches: concurrent requests share decodes and each equals its run alone', async () => {
  const base = servers.aligned;
  const body = (prompt) => ({ prompt, max_tokens: 24, temperature: 0, selfmod: { fusion_mode: 'average' } });
  const prompts = ['Once upon a time', 'The little dog'];
  const before = (await get(base, '/health')).json;
  const together = await Promise.all(prompts.map((p) => post(base, '/v1/completions', body(p))));
  const after = (await get(base, '/health')).json;
  for (const r of together) {
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.selfmod.n_models, 2);
    assert.equal(r.json.usage.completion_tokens, 24);
  }
  // both slots' tokens went through the batch, some steps in one decode
  const requests = after.batch_requests - before.batch_requests;
  const decodes = after.batch_decodes - before.batch_decodes;
  assert.ok(requests > 0 && decodes < requests, `${requests} requests in ${decodes} decodes`);
  for (let i = 0; i < prompts.length; i++) {
    const alone = await post(base, '/v1/completions', body(prompts[i]));
    assert.equal(alone.status, 200, alone.text);
    assert.equal(together[i].json.choices[0].text, alone.json.choices[0].text, prompts[i]);
  }
});
