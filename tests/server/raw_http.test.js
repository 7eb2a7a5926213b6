// Raw HTTP (node's fetch): llama-server's /completion, /tokenize,
// /detokenize, the LLooM's /loom/expand, the web page's files, and every
// kind of bad request.
'use strict';

const test = require('node:test');
const { servers, post, get, sseEvents, assertError, assert } = require('./helpers');

const base = () => servers.plain;

test('GET /health', async () => {
  const r = await get(base(), '/health');
  assert.equal(r.status, 200);
  assert.equal(r.json.status, 'ok');
  assert.equal(r.json.slots_idle + r.json.slots_processing, 2);
});

test('/completion with n_probs gives completion_probabilities', async () => {
  const r = await post(base(), '/completion', { prompt: 'Once upon a time', n_predict: 8, n_probs: 3, seed: 4 });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.stop, true);
  assert.equal(r.json.tokens_predicted, 8);
  assert.equal(r.json.stop_type, 'limit');
  const probs = r.json.completion_probabilities;
  assert.equal(probs.length, 8);
  assert.equal(probs.map((p) => p.token).join(''), r.json.content);
  for (const p of probs) {
    assert.equal(typeof p.id, 'number');
    assert.ok(p.logprob <= 0);
    assert.equal(p.top_logprobs.length, 3);
    assert.ok(p.top_logprobs[0].logprob >= p.top_logprobs[2].logprob);
  }
  assert.ok(r.json.timings.predicted_n === 8);
});

test('/completion streams content chunks and ends with stop: true', async () => {
  const params = { prompt: 'Once upon a time', n_predict: 16, temperature: 0 };
  const whole = await post(base(), '/completion', params);
  const r = await post(base(), '/completion', { ...params, stream: true });
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /text\/event-stream/);
  const events = sseEvents(r.text);
  assert.ok(events.length >= 2);
  assert.ok(!events.includes('[DONE]'), 'llama-server style streams have no [DONE]');
  assert.equal(events.map((e) => e.content).join(''), whole.json.content);
  const last = events[events.length - 1];
  assert.equal(last.stop, true);
  assert.equal(last.tokens_predicted, 16);
});

test('/tokenize and /detokenize round-trip', async () => {
  const text = 'Once upon a time, a cat sat.';
  const t = await post(base(), '/tokenize', { content: text });
  assert.equal(t.status, 200);
  assert.ok(t.json.tokens.length > 3 && t.json.tokens.every(Number.isInteger));
  const withBos = await post(base(), '/tokenize', { content: text, add_special: true });
  assert.equal(withBos.json.tokens.length, t.json.tokens.length + 1);
  assert.equal(withBos.json.tokens[0], 1);
  const pieces = await post(base(), '/tokenize', { content: text, with_pieces: true });
  assert.deepEqual(pieces.json.tokens.map((p) => p.id), t.json.tokens);
  assert.equal(pieces.json.tokens.map((p) => p.piece).join('').trim(), text);
  const d = await post(base(), '/detokenize', { tokens: t.json.tokens });
  assert.equal(d.status, 200);
  assert.equal(d.json.content, text);
});

test('/loom/expand respects its limits and reports the tree', async () => {
  const params = { prefix: 'Once upon a time, there was a', max_depth: 6, beam_limit: 8, cutoff: 0.1, split_limit: 3 };
  const before = (await get(base(), '/health')).json.batch_tree_decodes;
  const r = await post(base(), '/loom/expand', params);
  assert.equal(r.status, 200, r.text);
  // the tree decoded on the slots' batch thread, taking turns with the streams
  assert.ok((await get(base(), '/health')).json.batch_tree_decodes > before);
  const { suggestions, nodes } = r.json;
  assert.ok(suggestions.length >= 2 && suggestions.length <= 8, `${suggestions.length} suggestions`);
  assert.equal(new Set(suggestions.map((s) => s.text)).size, suggestions.length, 'texts are unique');
  for (let i = 0; i < suggestions.length; i++) {
    const s = suggestions[i];
    if (i > 0) assert.ok(suggestions[i - 1].score >= s.score, 'sorted by score');
    assert.ok(s.tokens.length >= 1 && s.tokens.length <= 6);
    assert.equal(s.tokens.map((t) => t.piece).join(''), s.text);
    const logp = s.tokens.reduce((a, t) => a + Math.log(t.prob), 0);
    assert.ok(Math.abs(logp - s.score) < 1e-3, 'score = sum of ln p');
    assert.equal(nodes[s.node].end, s.end);
  }
  nodes.forEach((n, i) => {
    assert.ok(n.parent < i, 'a parent precedes its children');
    const children = nodes.filter((c) => c.parent === i).length;
    assert.ok(children <= 3, 'split limit');
    if (n.parent >= 0) assert.equal(n.depth, nodes[n.parent].depth + 1);
  });
  assert.ok(r.json.elapsed_ms > 0);
  assert.ok(r.json.max_live_beams >= 2);
  // Summing probabilities instead, and no auto-stop: every beam is max_depth long.
  const sum = await post(base(), '/loom/expand', { ...params, score: 'sum_probs', auto_stop: false });
  assert.equal(sum.status, 200);
  for (const s of sum.json.suggestions) {
    assert.equal(s.tokens.length, 6);
    assert.ok(Math.abs(s.tokens.reduce((a, t) => a + t.prob, 0) - s.score) < 1e-3);
  }
});

test('the web page is served with its content types', async () => {
  const index = await get(base(), '/');
  assert.equal(index.status, 200);
  assert.match(index.headers.get('content-type'), /text\/html/);
  assert.match(index.text, /LLooM/);
  const js = await get(base(), '/app.js');
  assert.match(js.headers.get('content-type'), /javascript/);
  const css = await get(base(), '/style.css');
  assert.match(css.headers.get('content-type'), /text\/css/);
  assertError(await get(base(), '/nothing-here.js'), 404);
  assertError(await get(base(), '/..%2fCMakeLists.txt'), 404);
});

test('413 for a body over --max-body', async () => {
  const big = JSON.stringify({ prompt: 'x'.repeat(1100 * 1024) });
  const e = assertError(await post(base(), '/v1/completions', big), 413);
  assert.equal(e.type, 'invalid_request_error');
});

test('400 for malformed JSON', async () => {
  assertError(await post(base(), '/v1/completions', '{"prompt": "a",'), 400);
  assertError(await post(base(), '/v1/chat/completions', 'not json'), 400);
  assertError(await post(base(), '/completion', '[1, 2]'), 400);
  assertError(await post(base(), '/loom/expand', ''), 400);
});

test('400 names the invalid field', async () => {
  const cases = [
    ['/v1/completions', { prompt: 'a', temperature: 'hot' }, 'temperature'],
    ['/v1/completions', { prompt: 'a', max_tokens: -5 }, 'max_tokens'],
    ['/v1/completions', { prompt: 'a', top_p: 0 }, 'top_p'],
    ['/v1/completions', { prompt: 'a', stop: 5 }, 'stop'],
    ['/v1/completions', { prompt: 'a', n: 17 }, 'n'],
    ['/completion', { prompt: 'a', n: 2 }, 'n'],
    ['/completion', { prompt: 'a', id_slot: 2 }, 'id_slot'],
    ['/completion', { prompt: 'a', id_slot: -2 }, 'id_slot'],
    ['/v1/completions', { prompt: 7 }, 'prompt'],
    ['/v1/completions', { max_tokens: 3 }, 'prompt'],
    ['/v1/completions', { prompt: 'a', logprobs: 50 }, 'logprobs'],
    ['/v1/completions', { prompt: 'a', stream: 'yes' }, 'stream'],
    ['/v1/completions', { prompt: 'a', selfmod: { agressive: true } }, 'selfmod.agressive'],
    ['/v1/completions', { prompt: 'a', selfmod: { operators: ['no_such_operator'] } }, 'selfmod.operators[0]'],
    ['/v1/completions', { prompt: 'a', selfmod: { fusion_mode: 'voting' } }, 'selfmod.fusion_mode'],
    ['/v1/completions', { prompt: 'a', selfmod: { preset: 'fast' } }, 'selfmod.preset'],
    ['/v1/completions', { prompt: 'a', selfmod: { preset: 3 } }, 'selfmod.preset'],
    ['/v1/completions', { prompt: 'a', selfmod: { preset: 'calibrated', confidence_threshold: 0.4 } }, 'selfmod.preset'],
    ['/v1/chat/completions', { messages: [] }, 'messages'],
    ['/v1/chat/completions', { messages: [{ role: 'user' }] }, 'messages[0].content'],
    ['/v1/chat/completions', { messages: [{ role: 'wizard', content: 'hi' }] }, 'messages[0].role'],
    ['/v1/chat/completions', { messages: [{ role: 'system', content: 'be brief' }] }, 'messages[0].role'],
    ['/v1/chat/completions', { messages: [{ role: 'user', content: 'hi' }], top_logprobs: 2 }, 'top_logprobs'],
    ['/v1/chat/completions', { messages: [{ role: 'assistant', content: 'x' }] }, 'messages[0].role'],
    ['/v1/chat/completions', { messages: [{ role: 'system', content: 's' }, { role: 'assistant', content: 'x' }] }, 'messages'],
    ['/completion', { prompt: 'a', n_probs: -1 }, 'n_probs'],
    ['/tokenize', { content: 5 }, 'content'],
    ['/detokenize', { tokens: [1, 99999] }, 'tokens[1]'],
    ['/loom/expand', { prefix: 'a', cutoff: 2 }, 'cutoff'],
    ['/loom/expand', { prefix: 'a', beam_limit: 1000 }, 'beam_limit'],
    ['/loom/expand', {}, 'prefix'],
  ];
  for (const [path, body, param] of cases) {
    const e = assertError(await post(base(), path, body), 400, param);
    assert.equal(e.type, 'invalid_request_error', JSON.stringify(body));
  }
  // A prompt longer than the context.
  const long = await post(base(), '/v1/completions', { prompt: 'a b '.repeat(3000), max_tokens: 1 });
  assert.equal(assertError(long, 400).code, 'context_length_exceeded');
});

test('GET /v1/models/{id}, assistant content null, tool calls a template cannot render refused', async () => {
  const list = await get(base(), '/v1/models');
  const id = list.json.data[0].id;
  const one = await get(base(), '/v1/models/' + encodeURIComponent(id));
  assert.equal(one.status, 200, one.text);
  assert.equal(one.json.id, id);
  assert.equal(one.json.object, 'model');
  const none = await get(base(), '/v1/models/no-such-model');
  assert.equal(assertError(none, 404, 'model').code, 'model_not_found');
  const nul = await post(base(), '/v1/chat/completions', { max_tokens: 3, messages: [
    { role: 'user', content: 'a' }, { role: 'assistant', content: null }, { role: 'user', content: 'b' }] });
  assert.equal(nul.status, 200, nul.text);
  // a template that does not render tool calls or their results refuses them (tools.test.js has one that does)
  const call = { id: 'c1', type: 'function', function: { name: 'lookup', arguments: '{}' } };
  const e1 = assertError(await post(base(), '/v1/chat/completions', { messages: [{ role: 'user', content: 'a' },
    { role: 'assistant', content: null, tool_calls: [call] }, { role: 'user', content: 'b' }] }), 400, 'messages');
  assert.match(e1.message, /does not render the tool call 'lookup'/);
  const e2 = assertError(await post(base(), '/v1/chat/completions', { messages: [{ role: 'user', content: 'a' },
    { role: 'assistant', content: null, tool_calls: [call] }, { role: 'tool', tool_call_id: 'c1', content: 'found it' },
    { role: 'user', content: 'b' }] }), 400, 'messages');
  assert.match(e2.message, /does not render/);
});

test('grammars: GBNF on /completion, response_format json_object on chat, refusals', async () => {
  const g = await post(base(), '/completion', { prompt: 'Once', n_predict: 6, grammar: 'root ::= "a"{5,5}' });
  assert.equal(g.status, 200, g.text);
  assert.equal(g.json.content, 'aaaaa');
  const j = await post(base(), '/v1/chat/completions', {
    messages: [{ role: 'user', content: 'hi' }], max_tokens: 60, temperature: 0.5, seed: 3,
    response_format: { type: 'json_object' },
  });
  assert.equal(j.status, 200, j.text);
  const text = j.json.choices[0].message.content;
  assert.ok(text.startsWith('{'), text);
  if (j.json.choices[0].finish_reason === 'stop') JSON.parse(text);
  assertError(await post(base(), '/completion', { prompt: 'x', grammar: 'root ::= (' }), 400, 'grammar');
  // JSON schemas, by llama.cpp's converter: the text follows the schema
  const schema = { type: 'object', properties: { n: { type: 'integer' } }, required: ['n'], additionalProperties: false };
  for (const body of [{ prompt: 'Count:', n_predict: 24, json_schema: schema },
    { prompt: 'Count:', n_predict: 24, response_format: { type: 'json_schema', json_schema: { schema } } },
    { prompt: 'Count:', n_predict: 24, response_format: { type: 'json_object', schema } }]) {
    const r = await post(base(), '/completion', body);
    assert.equal(r.status, 200, r.text);
    assert.match(r.json.content, /^\{\s*"n"\s*:\s*-?\d/, r.json.content);
    if (r.json.stop_type !== 'limit') assert.equal(typeof JSON.parse(r.json.content).n, 'number');
  }
  assertError(await post(base(), '/completion', { prompt: 'x', json_schema: 5 }), 400, 'json_schema');
  assertError(await post(base(), '/completion', { prompt: 'x', json_schema: { type: 'hiccup' } }), 400, 'json_schema');
  assertError(await post(base(), '/completion', { prompt: 'x', grammar: 'root ::= "a"', json_schema: {} }), 400, 'grammar');
  assertError(await post(base(), '/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }],
    response_format: { type: 'json_schema', json_schema: { name: 'no schema' } } }), 400, 'response_format.json_schema.schema');
  assertError(await post(base(), '/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }],
    response_format: { type: 'yaml' } }), 400, 'response_format.type');
});

test('a final assistant message is the start of the answer (a prefill): the reply continues it', async () => {
  const ask = (messages) => post(base(), '/v1/chat/completions', { messages, max_tokens: 10, temperature: 0 });
  const prefill = 'Once upon a time, a dragon';
  const r = await ask([{ role: 'user', content: 'Tell me a story' }, { role: 'assistant', content: prefill }]);
  assert.equal(r.status, 200, r.text);
  const reply = r.json.choices[0].message.content;
  assert.ok(reply.length > 0 && !reply.startsWith(prefill), reply);
  // The same words as a plain completion of the prompt with the prefill in it.
  // (the prompt /apply-template shows, then the prefill as it is: no space is put between)
  const tmpl = await post(base(), '/apply-template', { messages: [{ role: 'user', content: 'Tell me a story' }] });
  assert.equal(tmpl.json.prompt, 'User: Tell me a story\nAssistant:');
  const plain = await post(base(), '/v1/completions', { prompt: tmpl.json.prompt + prefill, max_tokens: 10, temperature: 0 });
  assert.equal(reply, plain.json.choices[0].text);
  // The next turn, sending the whole answer back, reuses the cached conversation.
  const next = await ask([{ role: 'user', content: 'Tell me a story' }, { role: 'assistant', content: prefill + reply },
    { role: 'user', content: 'And then?' }]);
  assert.equal(next.status, 200, next.text);
});

test('selfmod.preset original runs the original policy, and later keys refine it', async () => {
  const res = await post(base(), '/v1/completions', {
    prompt: 'Once upon a time', max_tokens: 8, selfmod: { confidence_threshold: 0.9, preset: 'original', aggressive: true },
  });
  assert.equal(res.status, 200, res.text);
  assert.ok(res.json.choices[0].text.length > 0);
  // the threshold given before the preset still holds: the policy reacts below 0.90
  const events = res.json.selfmod.events || [];
  const adjust = events.filter((e) => /< 0\.90/.test(e.description || ''));
  assert.ok(adjust.length > 0, JSON.stringify(events));
});

test('one model answers any model name (as llama-server); with several, 404 for an unknown one', async () => {
  const models = (await get(base(), '/v1/models')).json.data;
  assert.equal(models.length, 1);
  const any = await post(base(), '/v1/completions', { model: 'gpt-3.5-turbo', prompt: 'a', max_tokens: 2 });
  assert.equal(any.status, 200, any.text);
  assert.equal(any.json.model, models[0].id); /* says which model answered */
  const e = assertError(await post(servers.fused, '/v1/completions', { model: 'gpt-4', prompt: 'a' }), 404, 'model');
  assert.equal(e.code, 'model_not_found');
  assertError(await post(servers.fused, '/v1/chat/completions', { model: 'nope', messages: [{ role: 'user', content: 'a' }] }), 404);
  assertError(await post(servers.fused, '/loom/expand', { model: 'nope', prefix: 'a' }), 404);
});

test('chat_template_kwargs and reasoning_effort reach the template, over serve --chat-template-kwargs', async () => {
  const messages = [{ role: 'user', content: 'Hi' }];
  const templated = process.env.SM_SERVER_TEMPLATED_URL, withDefaults = process.env.SM_SERVER_KWARGS_URL;
  const prompt = async (url, extra) => {
    const r = await post(url, '/apply-template', { messages, ...extra });
    assert.equal(r.status, 200, r.text);
    return r.json.prompt;
  };
  assert.equal(await prompt(templated, {}), '<user>Hi</user><assistant>');
  assert.equal(await prompt(templated, { chat_template_kwargs: { mood: 'glad' } }), '<user>Hi</user><assistant>glad');
  assert.equal(await prompt(templated, { chat_template_kwargs: { enable_thinking: false } }),
    '<user>Hi</user><assistant>/no_think');
  assert.equal(await prompt(templated, { reasoning_effort: 'none' }), '<user>Hi</user><assistant>/no_think');
  assert.equal(await prompt(templated, { reasoning_effort: 'low', chat_template_kwargs: { mood: 'x' } }),
    '<user>Hi</user><assistant>x');
  // serve's defaults, and a request's members over them one by one
  assert.equal(await prompt(withDefaults, {}), '<user>Hi</user><assistant>calm/no_think');
  assert.equal(await prompt(withDefaults, { chat_template_kwargs: { mood: 'glad' } }),
    '<user>Hi</user><assistant>glad/no_think');
  assert.equal(await prompt(withDefaults, { chat_template_kwargs: { enable_thinking: true } }),
    '<user>Hi</user><assistant>calm');
  // the generation decodes that prompt, and counts it
  const c = await post(withDefaults, '/v1/chat/completions', { messages, max_tokens: 2, chat_template_kwargs: { mood: 'glad' } });
  assert.equal(c.status, 200, c.text);
  const tok = await post(withDefaults, '/tokenize', { content: '<user>Hi</user><assistant>glad/no_think', add_special: true });
  assert.equal(c.json.usage.prompt_tokens, tok.json.tokens.length);
  const plainChat = await post(withDefaults, '/v1/chat/completions', { messages, max_tokens: 2 });
  const plainTok = await post(withDefaults, '/tokenize', { content: '<user>Hi</user><assistant>calm/no_think', add_special: true });
  assert.equal(plainChat.json.usage.prompt_tokens, plainTok.json.tokens.length);
  // refused by name: not an object, enable_thinking not a boolean, a completion, no Jinja template
  assertError(await post(templated, '/apply-template', { messages, chat_template_kwargs: [1] }), 400, 'chat_template_kwargs');
  assertError(await post(templated, '/apply-template', { messages, chat_template_kwargs: { enable_thinking: 'no' } }), 400,
    'chat_template_kwargs');
  assertError(await post(templated, '/apply-template', { messages, reasoning_effort: 3 }), 400, 'reasoning_effort');
  assertError(await post(templated, '/v1/completions', { prompt: 'a', chat_template_kwargs: {} }), 400, 'chat_template_kwargs');
  const e = assertError(await post(base(), '/v1/chat/completions', { messages, chat_template_kwargs: { mood: 'x' } }), 400);
  assert.match(e.message, /Jinja/);
});

test('chat templates: /apply-template, a Jinja template file, system messages anywhere, a prefill', async () => {
  const messages = [{ role: 'system', content: 'S' }, { role: 'user', content: 'Hi' },
    { role: 'assistant', content: 'Yo' }, { role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Bye' }];
  const templated = process.env.SM_SERVER_TEMPLATED_URL;
  const t = await post(templated, '/apply-template', { messages });
  assert.equal(t.status, 200, t.text);
  assert.equal(t.json.prompt, '<system>S</system><user>Hi</user><assistant>Yo</assistant><system>Be brief.</system>' +
    '<user>Bye</user><assistant>');
  const pre = await post(templated, '/apply-template', { messages: [...messages, { role: 'assistant', content: 'Well,' }] });
  assert.equal(pre.json.prompt, t.json.prompt + 'Well,');
  const props = await get(templated, '/props');
  assert.equal(props.json.chat_template, require('node:fs').readFileSync(process.env.SM_TEMPLATE_FILE, 'utf8'));
  // the chat answers from exactly that prompt
  const c = await post(templated, '/v1/chat/completions', { messages, max_tokens: 4 });
  assert.equal(c.status, 200, c.text);
  const tok = await post(templated, '/tokenize', { content: t.json.prompt, add_special: true });
  assert.equal(c.json.usage.prompt_tokens, tok.json.tokens.length);
  const counted = await post(templated, '/v1/chat/completions/input_tokens', { messages });
  assert.equal(counted.json.input_tokens, tok.json.tokens.length);
  // a model without a template: the plain form, system messages where they stand
  const p = await post(base(), '/apply-template', { messages });
  assert.equal(p.status, 200, p.text);
  assert.ok(p.json.prompt.startsWith('S\nUser: Hi\nAssistant: Yo'), p.json.prompt);
  assert.ok(p.json.prompt.endsWith('Be brief.\nUser: Bye\nAssistant:'), p.json.prompt);
  assertError(await post(base(), '/apply-template', { messages: [{ role: 'wizard', content: 'x' }] }), 400);
  // text parts are joined by a newline once there is text, as llama-server joins them
  const parts = await post(templated, '/apply-template', { messages: [{ role: 'user',
    content: [{ type: 'text', text: '' }, { type: 'text', text: 'What is' }, { type: 'text', text: 'the best book' }] }] });
  assert.equal(parts.json.prompt, '<user>What is\nthe best book</user><assistant>');
});

test('prompts as token ids, mixed with strings, as prompt objects, and several at once', async () => {
  const text = 'Once upon a time';
  const ids = (await post(base(), '/tokenize', { content: text, add_special: true })).json.tokens;
  const ask = (prompt, more = {}) => post(base(), '/completion', { prompt, n_predict: 6, temperature: 0, ...more });
  const plain = await ask(text);
  assert.equal(plain.status, 200, plain.text);
  for (const prompt of [ids, { prompt_string: text }, [ids[0], ...ids.slice(1)]]) {
    const r = await ask(prompt);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.content, plain.json.content, JSON.stringify(prompt));
  }
  // a mixed prompt: the ids in place, the strings tokenized where they stand (no BOS: a token came first)
  const mixed = await ask([ids[0], ' Once upon', ' a time'], { return_tokens: true });
  assert.equal(mixed.status, 200, mixed.text);
  assert.equal(mixed.json.tokens_evaluated, 1 + (await post(base(), '/tokenize', { content: ' Once upon' })).json.tokens.length +
    (await post(base(), '/tokenize', { content: ' a time' })).json.tokens.length);
  // several prompts: a list from /completion, choices prompt by prompt from /v1/completions
  const list = await ask([ids, text, { prompt_string: text }]);
  assert.equal(list.status, 200, list.text);
  assert.deepEqual(list.json.map((x) => x.content), [0, 1, 2].map(() => plain.json.content));
  assert.deepEqual(list.json.map((x) => x.index), [0, 1, 2]);
  const v1 = await post(base(), '/v1/completions', { prompt: ['Once', 'Lily'], max_tokens: 3, n: 2, temperature: 0 });
  assert.equal(v1.status, 200, v1.text);
  assert.deepEqual(v1.json.choices.map((c) => c.index), [0, 1, 2, 3]);
  const one = await post(base(), '/v1/completions', { prompt: 'Lily', max_tokens: 3, temperature: 0 });
  assert.equal(v1.json.choices[2].text, one.json.choices[0].text);
  assert.equal(v1.json.usage.prompt_tokens, 2 * one.json.usage.prompt_tokens);
  // refusals
  assertError(await ask([1, 2, 99999]), 400, 'prompt');
  assertError(await ask([1, 2.5]), 400, 'prompt');
  assertError(await ask({ prompt_string: 'x', multimodal_data: ['a'] }), 400, 'prompt');
  assertError(await ask([]), 400, 'prompt');
});

test('slot files: save a slot, restore it into another, erase one (--slot-save-path)', async () => {
  const ask = (prompt, id) => post(base(), '/completion', { prompt, id_slot: id, cache_prompt: true, n_predict: 24, temperature: 0 });
  const france = 'What is the capital of France?', germany = 'What is the capital of Germany?';
  const first = await ask(france, 1);
  assert.equal(first.status, 200, first.text);
  const n_all = first.json.tokens_evaluated; // (the slot may have held a prefix of it before)
  const saved = await post(base(), '/slots/1?action=save', { filename: 'slot1.bin' });
  assert.equal(saved.status, 200, saved.text);
  assert.equal(saved.json.id_slot, 1);
  // prompt and answer but its last token, sampled and never decoded (llama-server's count)
  assert.equal(saved.json.n_saved, first.json.tokens_evaluated + first.json.tokens_predicted - 1);
  assert.ok(saved.json.n_written > 0);
  const again = await ask(germany, 1);
  const n_new = again.json.timings.prompt_n;
  assert.ok(n_new < n_all, `only the new part is decoded: ${n_new} of ${n_all}`);
  const restored = await post(base(), '/slots/0?action=restore', { filename: 'slot1.bin' });
  assert.equal(restored.status, 200, restored.text);
  assert.equal(restored.json.n_restored, saved.json.n_saved);
  // slot 0 now holds what slot 1 held: the same new part decoded, the same greedy answer
  const moved = await ask(germany, 0);
  assert.equal(moved.json.timings.prompt_n, n_new);
  assert.equal(moved.json.content, again.json.content);
  const erased = await post(base(), '/slots/1?action=erase', {});
  assert.equal(erased.status, 200, erased.text);
  assert.ok(erased.json.n_erased > 0);
  assert.equal((await ask(france, 1)).json.timings.prompt_n, n_all);
  // refusals
  assertError(await post(base(), '/slots/0?action=restore', { filename: '../x.bin' }), 400, 'filename');
  assertError(await post(base(), '/slots/0?action=save', { filename: '.hidden' }), 400, 'filename');
  assertError(await post(base(), '/slots/0?action=restore', { filename: 'nothere.bin' }), 404, 'filename');
  assertError(await post(base(), '/slots/0?action=restore', { filename: 'garbage.bin' }), 400, 'filename');
  assertError(await post(base(), '/slots/0?action=dance', {}), 400, 'action');
  assertError(await post(base(), '/slots/9?action=erase', {}), 400, 'id_slot');
  assert.equal((await post(servers.templated, '/slots/0?action=save', { filename: 'a.bin' })).status, 501);
  // the slot still works after a refused restore
  assert.equal((await ask(france, 0)).status, 200);
});

test('response_fields: /completion answers with the fields asked for, by path', async () => {
  const r = await post(base(), '/completion', { prompt: 'Once upon', n_predict: 5,
    response_fields: ['content', 'generation_settings/n_predict', 'prompt', 'no/such'] });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(Object.keys(r.json).sort(), ['content', 'generation_settings/n_predict', 'prompt']);
  assert.equal(r.json['generation_settings/n_predict'], 5);
  assert.equal(r.json.prompt, '<s> Once upon'); // the prompt as the model saw it
  const all = await post(base(), '/completion', { prompt: 'Once upon', n_predict: 2, response_fields: [] });
  assert.ok('generation_settings' in all.json);
  assertError(await post(base(), '/completion', { prompt: 'x', response_fields: 'content' }), 400, 'response_fields');
  assertError(await post(base(), '/v1/completions', { prompt: 'x', response_fields: ['content'] }), 400, 'response_fields');
});

test('truncated: an answer that ran into the end of the context says so', async () => {
  const short = await post(base(), '/completion', { prompt: 'Once', n_predict: 4 });
  assert.equal(short.json.truncated, false);
  const full = await post(base(), '/completion', { prompt: 'Once', n_predict: -1, ignore_eos: true });
  assert.equal(full.status, 200, full.text);
  assert.equal(full.json.truncated, true);
  const n_ctx = (await get(base(), '/props')).json.n_ctx;
  assert.equal(full.json.tokens_evaluated + full.json.tokens_predicted, n_ctx);
});

test('streams of several answers: n > 1 and several prompts, each chunk with its index, one id, one usage', async () => {
  const res = await fetch(base() + '/v1/chat/completions', { method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4, n: 2, seed: 3, stream: true,
      stream_options: { include_usage: true } }) });
  const events = sseEvents(await res.text());
  assert.equal(events[events.length - 1], '[DONE]');
  const chunks = events.slice(0, -1);
  assert.equal(new Set(chunks.map((c) => c.id)).size, 1);
  const texts = ['', ''];
  for (const c of chunks) for (const ch of c.choices) texts[ch.index] += ch.delta.content || '';
  const finished = chunks.flatMap((c) => c.choices).filter((ch) => ch.finish_reason);
  assert.deepEqual(finished.map((ch) => ch.index), [0, 1]);
  const usage = chunks.filter((c) => c.usage);
  assert.equal(usage.length, 1);
  // each answer as the same request without stream would give it
  const whole = await post(base(), '/v1/chat/completions', { messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4, n: 2, seed: 3 });
  assert.deepEqual(texts, whole.json.choices.map((c) => c.message.content));
  assert.equal(usage[0].usage.completion_tokens, whole.json.usage.completion_tokens);
  assert.equal(usage[0].usage.prompt_tokens, whole.json.usage.prompt_tokens);
  // several prompts on /completion: each result's chunks carry its index
  const several = await fetch(base() + '/completion', { method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt: ['Once', 'Lily'], n_predict: 3, temperature: 0, stream: true }) });
  const parts = sseEvents(await several.text());
  assert.deepEqual([...new Set(parts.map((p) => p.index))], [0, 1]);
  assert.equal(parts.filter((p) => p.stop).length, 2);
  assertError(await post(base(), '/v1/completions', { prompt: Array(20).fill('a'), n: 4, stream: true }), 400, 'prompt');
});

test('post_sampling_probs: the probabilities the draw used, after truncation and temperature', async () => {
  const body = { prompt: 'Today was the day. Today I would finally become a', n_probs: 10, temperature: 1.0, n_predict: 6,
    seed: 5, top_k: 40, top_p: 0.9, min_p: 0.05 };
  const r = await post(base(), '/completion', { ...body, post_sampling_probs: true });
  assert.equal(r.status, 200, r.text);
  for (const tok of r.json.completion_probabilities) {
    assert.ok(tok.prob > 0 && tok.prob <= 1, JSON.stringify(tok));
    assert.ok(tok.top_probs.length > 0 && tok.top_probs.length <= 10);
    assert.ok(tok.top_probs.every((t) => t.prob > 0 && t.prob <= 1 && Number.isInteger(t.id) && typeof t.token === 'string'));
    for (let k = 1; k < tok.top_probs.length; k++) assert.ok(tok.top_probs[k - 1].prob >= tok.top_probs[k].prob);
    const sum = tok.top_probs.reduce((a, t) => a + t.prob, 0);
    if (tok.top_probs.length < 10) assert.ok(Math.abs(sum - 1) < 1e-4, `fewer than asked, so all of them: ${sum}`);
    const chosen = tok.top_probs.find((t) => t.id === tok.id);
    if (chosen) assert.ok(Math.abs(chosen.prob - tok.prob) < 1e-6);
  }
  // the same seed without the flag: the same tokens, the model's own log-probabilities
  const raw = await post(base(), '/completion', body);
  assert.deepEqual(raw.json.completion_probabilities.map((t) => t.id), r.json.completion_probabilities.map((t) => t.id));
  assert.ok('logprob' in raw.json.completion_probabilities[0] && 'top_logprobs' in raw.json.completion_probabilities[0]);
});

test('id_slot picks the slot (llama-server\'s field)', async () => {
  for (const id of [1, 0, 1]) {
    const r = await post(base(), '/completion', { prompt: 'Once', n_predict: 2, id_slot: id });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.id_slot, id);
  }
});

test('404 for an unknown path, 405 for a wrong method', async () => {
  assertError(await post(base(), '/v2/everything', {}), 404);
  const m = await get(base(), '/v1/completions');
  assertError(m, 405);
  assert.match(m.headers.get('allow'), /POST/);
  assertError(await post(base(), '/health', {}), 405);
  const del = await fetch(base() + '/v1/models', { method: 'DELETE' });
  assert.equal(del.status, 405);
});

test('/tokenize with_pieces: pieces of a split character are byte arrays that rebuild the text', async () => {
  const text = 'Un café, 🎉!';
  const r = await post(base(), '/tokenize', { content: text, with_pieces: true });
  assert.equal(r.status, 200, r.text);
  const bytes = [];
  for (const t of r.json.tokens) {
    if (Array.isArray(t.piece)) bytes.push(...t.piece);
    else bytes.push(...Buffer.from(t.piece, 'utf8'));
  }
  assert.ok(r.json.tokens.some((t) => Array.isArray(t.piece)), 'expected byte tokens for the emoji');
  // SentencePiece writes the leading space of the first word
  assert.equal(Buffer.from(bytes).toString('utf8').replace(/^ /, ''), text);
});
