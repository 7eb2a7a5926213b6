// Tool calls (OpenAI's tools / tool_calls, llama-server's formats): the
// conversation goes to the model's Jinja template with its tools, the
// answer is parsed back into tool_calls, streamed too. A tiny story model
// never decides to call a tool by itself, so the tests that need a call
// give a grammar that writes one (tool_choice "auto" applies no grammar of
// its own); what they check is the rendering, the parsing and the shapes.
'use strict';

const test = require('node:test');
const { servers, post, sseEvents, assertError, assert } = require('./helpers');

const TOOLS = [{
  type: 'function',
  function: {
    name: 'get_weather', description: 'The weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
}];
// Qwen2.5's tool-call form, with a city the model picks.
const CALL_GRAMMAR = 'root ::= "<tool_call>\\n{\\"name\\": \\"get_weather\\", \\"arguments\\": {\\"city\\": \\"" ' +
  '[A-Z] [a-z]{2,8} "\\"}}\\n</tool_call>"';
const ask = { messages: [{ role: 'user', content: 'What is the weather in Paris?' }], tools: TOOLS, max_tokens: 100, seed: 1 };

test('a tool call comes back as tool_calls, with finish_reason tool_calls', async () => {
  const r = await post(servers.tools, '/v1/chat/completions', { ...ask, grammar: CALL_GRAMMAR });
  assert.equal(r.status, 200, r.text);
  const choice = r.json.choices[0];
  assert.equal(choice.finish_reason, 'tool_calls');
  assert.equal(choice.message.content, null);
  assert.equal(choice.message.tool_calls.length, 1);
  const call = choice.message.tool_calls[0];
  assert.equal(call.type, 'function');
  assert.equal(call.function.name, 'get_weather');
  assert.match(JSON.parse(call.function.arguments).city, /^[A-Z][a-z]{2,8}$/);
  assert.ok(call.id.length > 0);
});

test('a tool call cut short by max_tokens ends in "length", not "tool_calls"', async () => {
  const r = await post(servers.tools, '/v1/chat/completions', { ...ask, max_tokens: 55, grammar: CALL_GRAMMAR });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.choices[0].finish_reason, 'length');
  assert.equal(r.json.usage.completion_tokens, 55);
  // the partial call is there (the check would prove nothing without it)
  assert.equal(r.json.choices[0].message.tool_calls[0].function.name, 'get_weather');
});

test('streamed, a tool call arrives as OpenAI deltas: its name, then its arguments in pieces', async () => {
  const res = await fetch(servers.tools + '/v1/chat/completions', {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ ...ask, grammar: CALL_GRAMMAR, stream: true }),
  });
  const events = sseEvents(await res.text());
  const deltas = events.filter((e) => e !== '[DONE]' && e.choices.length).map((e) => e.choices[0]);
  assert.equal(deltas[0].delta.role, 'assistant');
  const last = deltas[deltas.length - 1];
  assert.equal(last.finish_reason, 'tool_calls');
  // put together as the openai client does: by index, the name once, the arguments appended
  const calls = [];
  let pieces = 0;
  for (const d of deltas) {
    for (const c of d.delta.tool_calls || []) {
      calls[c.index] = calls[c.index] || { id: '', name: '', arguments: '' };
      if (c.id) calls[c.index].id = c.id;
      if (c.function && c.function.name) calls[c.index].name += c.function.name;
      if (c.function && c.function.arguments) { calls[c.index].arguments += c.function.arguments; pieces++; }
    }
  }
  assert.equal(calls.length, 1);
  assert.equal(calls[0].name, 'get_weather');
  assert.ok(calls[0].id.length > 0);
  assert.match(JSON.parse(calls[0].arguments).city, /^[A-Z][a-z]{2,8}$/);
  assert.ok(pieces > 1, `the arguments came in ${pieces} piece(s)`);
  // the same call as the answer not streamed
  const whole = await post(servers.tools, '/v1/chat/completions', { ...ask, grammar: CALL_GRAMMAR });
  const call = whole.json.choices[0].message.tool_calls[0];
  assert.deepEqual(JSON.parse(calls[0].arguments), JSON.parse(call.function.arguments));
  // no raw tool-call markup was streamed as content
  assert.ok(!deltas.some((d) => (d.delta.content || '').includes('<tool_call>')));
});

test('streamed with tools but no call, the content arrives as it is written', async () => {
  const res = await fetch(servers.tools + '/v1/chat/completions', {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ ...ask, max_tokens: 24, stream: true }),
  });
  const deltas = sseEvents(await res.text()).filter((e) => e !== '[DONE]' && e.choices.length).map((e) => e.choices[0]);
  const content = deltas.filter((d) => d.delta.content).map((d) => d.delta.content);
  assert.ok(content.length > 1, `the content came in ${content.length} piece(s)`);
  const whole = await post(servers.tools, '/v1/chat/completions', { ...ask, max_tokens: 24 });
  assert.equal(content.join(''), whole.json.choices[0].message.content);
  assert.equal(deltas[deltas.length - 1].finish_reason, 'length');
});

test('a plain answer with tools on stays content', async () => {
  const r = await post(servers.tools, '/v1/chat/completions', { ...ask, max_tokens: 8 });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.choices[0].finish_reason, 'length');
  assert.equal(typeof r.json.choices[0].message.content, 'string');
  assert.equal(r.json.choices[0].message.tool_calls, undefined);
});

test('the tools, the call and its result are rendered by the template', async () => {
  const messages = [
    { role: 'user', content: 'What is the weather in Paris?' },
    { role: 'assistant', content: null, tool_calls: [{ id: 'call_0', type: 'function',
      function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }] },
    { role: 'tool', tool_call_id: 'call_0', content: 'Sunny, 21 C' },
  ];
  const t = await post(servers.tools, '/apply-template', { messages, tools: TOOLS });
  assert.equal(t.status, 200, t.text);
  assert.ok(t.json.prompt.includes('"name": "get_weather"'), t.json.prompt); // the tool's definition
  assert.ok(t.json.prompt.includes('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'), t.json.prompt);
  assert.ok(t.json.prompt.includes('<tool_response>\nSunny, 21 C\n</tool_response>'), t.json.prompt);
  assert.ok(t.json.prompt.endsWith('<|im_start|>assistant\n'), t.json.prompt);
  const r = await post(servers.tools, '/v1/chat/completions', { messages, tools: TOOLS, max_tokens: 4 });
  assert.equal(r.status, 200, r.text);
  const tok = await post(servers.tools, '/tokenize', { content: t.json.prompt, add_special: true });
  assert.equal(r.json.usage.prompt_tokens, tok.json.tokens.length);
  // and input_tokens counts what the generation decoded (it once refused tool conversations)
  const counted = await post(servers.tools, '/chat/completions/input_tokens', { messages, tools: TOOLS });
  assert.equal(counted.status, 200, counted.text);
  assert.equal(counted.json.input_tokens, r.json.usage.prompt_tokens);
});

test('tool_choice naming a function: the template and the required call see that one alone', async () => {
  // llama.cpp's formats know auto/required/none: a named function is required
  // with the others left out (the story model rambles before any call, so
  // what is checked is the prompt the model saw)
  const TIME = { type: 'function', function: { name: 'get_time', description: 'The time in a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } };
  for (const [name, other] of [['get_weather', 'get_time'], ['get_time', 'get_weather']]) {
    const r = await post(servers.tools, '/v1/chat/completions', { ...ask, tools: [...TOOLS, TIME], max_tokens: 4,
      verbose: true, tool_choice: { type: 'function', function: { name } } });
    assert.equal(r.status, 200, r.text);
    const prompt = r.json.__verbose.prompt;
    assert.ok(prompt.includes(`"name": "${name}"`), prompt);
    assert.ok(!prompt.includes(other), prompt);
  }
  const both = await post(servers.tools, '/v1/chat/completions', { ...ask, tools: [...TOOLS, TIME], max_tokens: 4,
    verbose: true, tool_choice: 'required' });
  assert.ok(both.json.__verbose.prompt.includes('get_time') && both.json.__verbose.prompt.includes('get_weather'));
});

test('tool requests that cannot be served are refused with what was wrong', async () => {
  assertError(await post(servers.plain, '/v1/chat/completions', ask), 400, 'messages'); // its template takes no tools
  assertError(await post(servers.tools, '/v1/chat/completions', { ...ask, tools: undefined, tool_choice: 'required' }),
    400, 'tool_choice');
  assertError(await post(servers.tools, '/v1/chat/completions',
    { ...ask, tool_choice: { type: 'function', function: { name: 'get_time' } } }), 400, 'tool_choice');
  assertError(await post(servers.tools, '/v1/chat/completions', { ...ask, tool_choice: { type: 'function' } }),
    400, 'tool_choice');
  assertError(await post(servers.tools, '/v1/chat/completions', { ...ask, tools: { nope: 1 } }), 400, 'tools');
  assertError(await post(servers.tools, '/v1/completions', { prompt: 'x', tools: TOOLS }), 400, 'tools');
  // user text never becomes a special token: refused where the rendered prompt would parse it
  const sneaky = { messages: [{ role: 'user', content: 'hi <|endoftext|> there' }], tools: TOOLS };
  const e = assertError(await post(servers.templated, '/v1/chat/completions', sneaky), 400, 'messages');
  assert.match(e.message, /special token/);
});
