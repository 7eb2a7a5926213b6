// The official `openai` npm package as the client: completions and chat,
// streaming and not, with log-probabilities, stop strings and self-correction.
'use strict';

const test = require('node:test');
const OpenAI = require('openai');
const { servers, post, assert } = require('./helpers');

const client = () => new OpenAI({ baseURL: servers.plain + '/v1', apiKey: 'unused', maxRetries: 0, timeout: 60000 });
const PROMPT = 'Once upon a time';

async function collect(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return chunks;
}

test('models.list names the served model', async () => {
  const list = await client().models.list();
  const ids = list.data.map((m) => m.id);
  assert.deepEqual(ids, ['stories260K']);
  assert.equal(list.data[0].object, 'model');
});

test('completion with logprobs: tokens spell the text, top alternatives sorted', async () => {
  const r = await client().completions.create({
    model: 'stories260K', prompt: PROMPT, max_tokens: 12, temperature: 0.8, seed: 11, logprobs: 3,
  });
  const choice = r.choices[0];
  assert.equal(r.object, 'text_completion');
  assert.equal(choice.finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 12);
  assert.equal(r.usage.prompt_tokens, 5); // BOS + 4 tokens
  const lp = choice.logprobs;
  assert.equal(lp.tokens.length, 12);
  assert.equal(lp.tokens.join(''), choice.text);
  assert.equal(lp.token_logprobs.length, 12);
  for (let i = 0; i < 12; i++) {
    assert.ok(lp.token_logprobs[i] <= 0, 'a log-probability is <= 0');
    const top = Object.values(lp.top_logprobs[i]);
    assert.ok(top.length >= 1 && top.length <= 3);
    for (let k = 1; k < top.length; k++) assert.ok(top[k - 1] >= top[k], 'alternatives are sorted');
    assert.ok(lp.token_logprobs[i] <= top[0] + 1e-5, 'the chosen token is not above the best one');
    if (i > 0) assert.equal(lp.text_offset[i], lp.text_offset[i - 1] + lp.tokens[i - 1].length);
  }
});

test('greedy completion: the stream spells exactly the non-streamed text', async () => {
  const params = { model: 'stories260K', prompt: PROMPT, max_tokens: 30, temperature: 0 };
  const whole = await client().completions.create(params);
  const chunks = await collect(await client().completions.create({ ...params, stream: true, stream_options: { include_usage: true } }));
  const text = chunks.filter((c) => c.choices.length).map((c) => c.choices[0].text).join('');
  assert.equal(text, whole.choices[0].text);
  assert.ok(whole.choices[0].text.startsWith(', there was a little girl named Lily'), whole.choices[0].text);
  const last = chunks.filter((c) => c.choices.length).pop();
  assert.equal(last.choices[0].finish_reason, 'length');
  const usage = chunks.find((c) => c.usage);
  assert.equal(usage.usage.completion_tokens, 30);
});

test('stop strings end the text before them, streamed or not', async () => {
  const params = { model: 'stories260K', prompt: PROMPT, max_tokens: 40, temperature: 0, stop: ['little', 'zebra'] };
  const whole = await client().completions.create(params);
  assert.equal(whole.choices[0].text, ', there was a ');
  assert.equal(whole.choices[0].finish_reason, 'stop');
  const chunks = await collect(await client().completions.create({ ...params, stream: true }));
  const text = chunks.map((c) => c.choices[0].text).join('');
  assert.equal(text, ', there was a ');
  assert.equal(chunks[chunks.length - 1].choices[0].finish_reason, 'stop');
});

test('chat completion with logprobs and top_logprobs', async () => {
  const r = await client().chat.completions.create({
    model: 'stories260K',
    messages: [{ role: 'system', content: 'Tell stories.' }, { role: 'user', content: 'Tell me about a cat.' }],
    max_tokens: 10, seed: 5, logprobs: true, top_logprobs: 2,
  });
  const choice = r.choices[0];
  assert.equal(r.object, 'chat.completion');
  assert.equal(choice.message.role, 'assistant');
  assert.equal(typeof choice.message.content, 'string');
  assert.equal(r.usage.completion_tokens, 10);
  const content = choice.logprobs.content;
  assert.equal(content.length, 10);
  assert.equal(content.map((t) => t.token).join(''), choice.message.content);
  for (const t of content) {
    assert.equal(t.top_logprobs.length, 2);
    assert.ok(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob);
    assert.deepEqual(t.bytes, [...Buffer.from(t.token)]);
  }
});

test('chat stream: a role chunk, then content that equals the non-streamed answer', async () => {
  const params = {
    model: 'stories260K', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 24, temperature: 0,
  };
  const whole = await client().chat.completions.create(params);
  const chunks = await collect(await client().chat.completions.create({ ...params, stream: true }));
  assert.equal(chunks[0].object, 'chat.completion.chunk');
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  const text = chunks.map((c) => c.choices[0].delta.content || '').join('');
  assert.equal(text, whole.choices[0].message.content);
  assert.equal(chunks[chunks.length - 1].choices[0].finish_reason, 'length');
});

test('a multi-turn chat reuses the cached conversation', async () => {
  const messages = [{ role: 'user', content: 'Tell me about a dog.' }];
  const first = await client().chat.completions.create({ model: 'stories260K', messages, max_tokens: 8, temperature: 0 });
  messages.push({ role: 'assistant', content: first.choices[0].message.content });
  messages.push({ role: 'user', content: 'And then?' });
  const second = await client().chat.completions.create({ model: 'stories260K', messages, max_tokens: 8, temperature: 0 });
  assert.ok(second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens);
  // The slot that held the first turn takes the second: the first turn's
  // prompt and answer are not decoded again.
  assert.ok(second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens,
    `${second.usage.prompt_tokens_details.cached_tokens} cached of ${first.usage.prompt_tokens}`);
});

test('self-correction: retractions are reported, and the stream never sends retracted text', async () => {
  const params = {
    model: 'stories260K', prompt: PROMPT, max_tokens: 40, temperature: 0.9, seed: 4,
    selfmod: { aggressive: true, retract: true, critical_threshold: 0.55, max_retractions: 5 },
  };
  const whole = await client().completions.create(params);
  const sm = whole.selfmod;
  assert.ok(sm.retractions > 0, `expected retractions, got ${JSON.stringify(sm)}`);
  const retracted = sm.events.filter((e) => e.type === 'retraction');
  assert.equal(retracted.length, sm.retractions);
  assert.ok(retracted.some((e) => e.n_removed > 1), 'some retraction took back tokens already generated');
  assert.equal(whole.usage.completion_tokens, 40);

  const chunks = await collect(await client().completions.create({ ...params, stream: true }));
  const text = chunks.map((c) => c.choices[0].text).join('');
  assert.equal(text, whole.choices[0].text);
  const events = chunks.flatMap((c) => (c.selfmod && c.selfmod.events) || []);
  const retractions = events.filter((e) => e.type === 'retraction');
  assert.equal(retractions.length, sm.retractions);
  // Each retraction removes the candidate and n_removed - 1 tokens that were shown.
  const shown = 40 + retractions.reduce((a, e) => a + e.n_removed - 1, 0);
  assert.equal(events.filter((e) => e.type === 'token').length, shown, 'retracted tokens were shown as events');
  assert.equal(chunks[chunks.length - 1].selfmod.retractions, sm.retractions);
});

test('operators backtrack and report it', async () => {
  const params = {
    model: 'stories260K', prompt: PROMPT, max_tokens: 30, temperature: 1.2, seed: 3,
    selfmod: { enabled: false, operators: ['probability_threshold:min_probability=0.2'] },
  };
  const r = await client().completions.create(params);
  assert.ok(r.selfmod.backtracks > 0, JSON.stringify(r.selfmod));
  const backtracks = r.selfmod.events.filter((e) => e.type === 'backtrack');
  assert.equal(backtracks.length, r.selfmod.backtracks);
  assert.ok(backtracks.every((e) => e.source === 'probability_threshold'));
  assert.deepEqual(r.selfmod.operators, ['probability_threshold']);
  // Streamed: the text waits until no backtrack can take it back, the events do not.
  const chunks = await collect(await client().completions.create({ ...params, stream: true }));
  assert.equal(chunks.map((c) => c.choices[0].text).join(''), r.choices[0].text);
  const events = chunks.flatMap((c) => (c.selfmod && c.selfmod.events) || []);
  assert.equal(events.filter((e) => e.type === 'backtrack').length, r.selfmod.backtracks);
});

test('response_format json_schema: the answer is JSON that matches the schema', async () => {
  const schema = { type: 'object', properties: { name: { type: 'string', maxLength: 12 }, age: { type: 'integer' } },
    required: ['name', 'age'], additionalProperties: false };
  const r = await client().chat.completions.create({
    model: 'stories260K', messages: [{ role: 'user', content: 'Describe a hero.' }], max_tokens: 80, seed: 4,
    response_format: { type: 'json_schema', json_schema: { name: 'hero', schema, strict: true } },
  });
  const choice = r.choices[0];
  assert.equal(choice.finish_reason, 'stop', choice.message.content);
  const hero = JSON.parse(choice.message.content);
  assert.deepEqual(Object.keys(hero).sort(), ['age', 'name']);
  assert.equal(typeof hero.name, 'string');
  assert.ok(Number.isInteger(hero.age));
});

test('an assistant prefill: the reply continues the given words', async () => {
  const r = await client().chat.completions.create({
    model: 'stories260K', max_tokens: 8, temperature: 0,
    messages: [{ role: 'user', content: 'Tell me a story' }, { role: 'assistant', content: 'Once upon a time' }],
  });
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.ok(r.choices[0].message.content.length > 0);
  assert.ok(!r.choices[0].message.content.startsWith('Once upon a time'));
});

test('tools: the tool call comes back as tool_calls, and its result goes back in', async () => {
  const tools = new OpenAI({ baseURL: servers.tools + '/v1', apiKey: 'unused', maxRetries: 0, timeout: 60000 });
  const defs = [{ type: 'function', function: { name: 'get_weather', description: 'The weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];
  const messages = [{ role: 'user', content: 'What is the weather in Paris?' }];
  // (a tiny story model calls no tool by itself: a grammar, a llama-server field, writes the call)
  const r = await tools.chat.completions.create({
    model: 'stories260K', messages, tools: defs, max_tokens: 100, seed: 1,
    grammar: 'root ::= "<tool_call>\\n{\\"name\\": \\"get_weather\\", \\"arguments\\": {\\"city\\": \\"Paris\\"}}\\n</tool_call>"',
  });
  const msg = r.choices[0].message;
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
  assert.equal(msg.tool_calls[0].function.name, 'get_weather');
  assert.deepEqual(JSON.parse(msg.tool_calls[0].function.arguments), { city: 'Paris' });
  const next = await tools.chat.completions.create({
    model: 'stories260K', tools: defs, max_tokens: 6, seed: 1,
    messages: [...messages, msg, { role: 'tool', tool_call_id: msg.tool_calls[0].id, content: 'Sunny' }],
  });
  assert.equal(typeof next.choices[0].message.content, 'string');
  assert.ok(next.usage.prompt_tokens > r.usage.prompt_tokens);
});

test('tools, streamed: the client stream helper puts the call together from the deltas', async () => {
  const tools = new OpenAI({ baseURL: servers.tools + '/v1', apiKey: 'unused', maxRetries: 0, timeout: 60000 });
  const defs = [{ type: 'function', function: { name: 'get_weather', description: 'The weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];
  const stream = tools.chat.completions.stream({
    model: 'stories260K', messages: [{ role: 'user', content: 'What is the weather in Paris?' }], tools: defs,
    max_tokens: 100, seed: 1,
    grammar: 'root ::= "<tool_call>\\n{\\"name\\": \\"get_weather\\", \\"arguments\\": {\\"city\\": \\"Paris\\"}}\\n</tool_call>"',
  });
  const pieces = [];
  stream.on('tool_calls.function.arguments.delta', (e) => pieces.push(e.arguments_delta));
  const done = await stream.finalChatCompletion();
  const msg = done.choices[0].message;
  assert.equal(done.choices[0].finish_reason, 'tool_calls');
  assert.equal(msg.tool_calls[0].function.name, 'get_weather');
  assert.deepEqual(JSON.parse(msg.tool_calls[0].function.arguments), { city: 'Paris' });
  assert.ok(pieces.length > 1, `the arguments came in ${pieces.length} piece(s)`);
});

test('embeddings: the openai client gets one normalised vector per input (it asks for base64)', async () => {
  const r = await client().embeddings.create({ model: 'stories260K', input: ['hello world', 'goodbye world'] });
  assert.equal(r.object, 'list');
  assert.equal(r.data.length, 2);
  assert.deepEqual(r.data.map((d) => d.index), [0, 1]);
  const v = r.data[0].embedding;
  assert.equal(v.length, 64);
  assert.ok(Math.abs(Math.hypot(...v) - 1) < 1e-4);
  assert.ok(r.usage.prompt_tokens > 2 && r.usage.total_tokens === r.usage.prompt_tokens);
  // the same vector as floats, asked for one input alone
  const f = await post(servers.plain, '/v1/embeddings', { input: 'hello world', encoding_format: 'float' });
  assert.equal(f.status, 200, f.text);
  f.json.data[0].embedding.forEach((x, i) => assert.ok(Math.abs(x - v[i]) < 1e-6));
  // token ids that are not int32s (once undefined behaviour, found by the fuzzer) or not this model's: 400
  for (const ids of [[66666666666666666666661, 2], [1.5], [-1], [1e300], [99999]]) {
    const bad = await post(servers.plain, '/v1/embeddings', { input: ['hello', ids] });
    assert.equal(bad.status, 400, JSON.stringify(ids) + ': ' + bad.text);
    assert.equal(bad.json.error.param, 'input');
  }
});

test('n > 1: several answers, each reproducible with its own seed (seed + index)', async () => {
  const params = { model: 'stories260K', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 8, seed: 21 };
  const r = await client().chat.completions.create({ ...params, n: 3 });
  assert.equal(r.choices.length, 3);
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2]);
  const texts = r.choices.map((c) => c.message.content);
  assert.ok(new Set(texts).size > 1, 'the answers differ: ' + JSON.stringify(texts));
  for (let i = 0; i < 3; i++) {
    const one = await client().chat.completions.create({ ...params, seed: 21 + i });
    assert.equal(one.choices[0].message.content, texts[i]);
  }
  if (r.choices.every((ch) => ch.finish_reason === 'length')) assert.equal(r.usage.completion_tokens, 3 * 8);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  const c = await client().completions.create({ model: 'stories260K', prompt: PROMPT, max_tokens: 4, n: 2, seed: 3 });
  assert.equal(c.choices.length, 2);
  assert.equal(c.choices[1].index, 1);
});

test('logprobs name the end-of-text token among the alternatives, and list only the returned tokens', async () => {
  const chat = new OpenAI({ baseURL: servers.templated + '/v1', apiKey: 'unused', maxRetries: 0, timeout: 60000 });
  const r = await chat.completions.create({ // the model's own chat form, as a raw prompt
    model: 'cardputer-chat-3M', prompt: 'User: Hello! How are you?\nBot:', max_tokens: 80, temperature: 0, logprobs: 5,
  });
  const choice = r.choices[0];
  assert.equal(choice.finish_reason, 'stop');
  assert.equal(choice.logprobs.tokens.join(''), choice.text); // the returned tokens, nothing more
  const names = choice.logprobs.top_logprobs.flatMap((top) => Object.keys(top));
  assert.ok(!names.includes(''), 'every alternative has a name');
  assert.ok(names.includes('<|endoftext|>'), JSON.stringify(names));
});
