// POST /infill, llama-server's fill-in-the-middle, on a random-weight model
// whose vocabulary has Qwen2.5-Coder's FIM tokens (make_random_model --fim).
// The prompts and token counts below are llama-server 0.5.0's own answers
// to the same requests on the same model (-c 2048 -b 512, with and without
// --spm-infill), recorded side by side.
'use strict';

const test = require('node:test');
const { servers, post, sseEvents, assertError, assert } = require('./helpers');

const infill = () => process.env.SM_SERVER_INFILL_URL;
const spm = () => process.env.SM_SERVER_INFILL_SPM_URL;

const CODE = {
  input_prefix: 'def add(a, b):\n    ', input_suffix: '\n    return c\n',
  input_extra: [{ filename: 'util.py', text: 'x = 1\n' }], prompt: 'c =', n_predict: 2, temperature: 0,
};
const FILES = '<|repo_name|> myproject\n<|file_sep|> util.py\n x = 1\n<|file_sep|> filename\n';

async function infillOk(url, body) {
  const r = await post(url, '/infill', body);
  assert.equal(r.status, 200, r.text);
  return r.json;
}

test('/infill builds llama-server\'s prompt: the other files, then prefix, suffix, middle', async () => {
  const r = await infillOk(infill(), CODE);
  assert.equal(r.prompt, FILES + '<s><|fim_prefix|> def add(a, b):\n     c =<|fim_suffix|> \n    return c\n<|fim_middle|>');
  assert.equal(r.tokens_evaluated, 38);
  assert.equal(r.tokens_predicted, 2);
  assert.equal(r.stop_type, 'limit'); // answered as /completion answers
  const s = await infillOk(spm(), CODE); // --spm-infill: the suffix first
  assert.equal(s.prompt, FILES + '<s><|fim_suffix|> \n    return c\n<|fim_prefix|> def add(a, b):\n     c =<|fim_middle|>');
  assert.equal(s.tokens_evaluated, 38);
});

test('/infill keeps the prefix\'s end and the suffix\'s start within a batch', async () => {
  const lines = Array.from({ length: 120 }, (_, i) => `v${i} = ${i}\n`).join('');
  const body = { input_prefix: lines, input_suffix: lines, prompt: 'q', n_predict: 2, temperature: 0 };
  const r = await infillOk(infill(), body);
  assert.equal(r.tokens_evaluated, 521); // 384 of the prefix, 125 of the suffix
  assert.ok(r.prompt.includes('v119 = 119\n q<|fim_suffix|>'), r.prompt.slice(-300));
  assert.ok(!r.prompt.includes('v40 = 40\nv41'), 'the prefix\'s start is dropped');
  assert.ok(r.prompt.endsWith('v16 = 16\nv17 = 17\nv<|fim_middle|>'), r.prompt.slice(-100));
  const s = await infillOk(spm(), body);
  assert.equal(s.tokens_evaluated, 521);
  assert.ok(s.prompt.endsWith('v119 = 119\n q<|fim_middle|>'));
  // more files than fit: llama-server's share would pass the context (2052 of 2048 tokens, a 400);
  // here the files give way to the answer's n_predict
  const big = await infillOk(infill(), { ...body, n_predict: 4, input_extra: [{ text: lines }, { filename: 'g.py', text: lines }] });
  assert.equal(big.tokens_evaluated, 2048 - 4);
  assert.equal(big.tokens_predicted, 4);
});

test('/infill: the code stays text, token ids pass, the middle\'s beginning is raw input', async () => {
  // the suffix's "<|fim_middle|>" is text (several tokens); the prompt's "<|fim_suffix|>" is the token
  const r = await infillOk(infill(), {
    input_prefix: ['x', 100, 'y'], input_suffix: [5, '<|fim_middle|>'], prompt: '<|fim_suffix|>z', n_predict: 2,
    temperature: 0,
  });
  assert.equal(r.tokens_evaluated, 25);
  const asText = await post(infill(), '/tokenize', { content: '<|fim_middle|>', parse_special: false });
  assert.ok(asText.json.tokens.length > 1);
  const asToken = await post(infill(), '/tokenize', { content: '<|fim_middle|>' }); // llama-server's default
  assert.deepEqual(asToken.json.tokens, [31997]);
});

test('/infill streams, and self-corrects, as /completion does', async () => {
  const whole = await infillOk(infill(), { ...CODE, n_predict: 6, return_tokens: true });
  const r = await post(infill(), '/infill', { ...CODE, n_predict: 6, stream: true, return_tokens: true });
  assert.equal(r.status, 200);
  const events = sseEvents(r.text);
  assert.equal(events.at(-1).stop, true);
  assert.deepEqual(events.flatMap((e) => e.tokens || []), whole.tokens);
  const sm = await infillOk(infill(), { ...CODE, n_predict: 6, selfmod: { enabled: true } });
  assert.ok(sm.selfmod, 'the selfmod summary');
});

test('/infill refuses what it cannot serve, by name', async () => {
  // a model without FIM tokens: 501, llama-server's words
  const e = assertError(await post(servers.plain, '/infill', { input_prefix: 'a', input_suffix: 'b' }), 501);
  assert.equal(e.type, 'not_supported_error');
  assert.match(e.message, /^Infill is not supported by this model: prefix token is missing\. suffix token is missing\. middle token is missing\./);
  const base = { input_prefix: 'a', input_suffix: 'b' };
  for (const [body, param] of [
    [{ input_suffix: 'b' }, 'input_prefix'], [{ input_prefix: 'a' }, 'input_suffix'],
    [{ ...base, input_prefix: 3 }, 'input_prefix'], [{ ...base, input_prefix: [99999999] }, 'input_prefix'],
    [{ ...base, prompt: [1] }, 'prompt'], [{ ...base, input_extra: {} }, 'input_extra'],
    [{ ...base, input_extra: [{ filename: 'x' }] }, 'input_extra'],
    [{ ...base, input_extra: [{ text: 'x', filename: 3 }] }, 'input_extra'],
    [{ ...base, input_extra: [{ text: 'x', foo: 3 }] }, 'input_extra'],
  ]) assert.equal(assertError(await post(infill(), '/infill', body), 400).param, param, JSON.stringify(body));
  // llama.vim sends each chunk's time back: accepted, the prompt the same
  const timed = await infillOk(infill(), { ...CODE, input_extra: [{ ...CODE.input_extra[0], time: 12.5 }] });
  assert.equal(timed.tokens_evaluated, 38);
  // the FIM fields belong to /infill
  assert.equal(assertError(await post(infill(), '/completion', { prompt: 'a', input_prefix: 'b' }), 400).param, 'input_prefix');
});

// llama.vim's own request (autoload/llama.vim): the sampler list with llama.cpp's infill sampler,
// n_indent, t_max_predict_ms, a chunk's time. The contents are llama-server 0.5.0's on the same
// model (stories260K with FIM tokens 3, 4, 5) and seeds; 40 such requests matched side by side.
const vimRequest = (seed) => ({
  input_prefix: 'Once upon a time, there was a little girl named Lily. ', input_suffix: ' They played all day.\n',
  prompt: 'She', n_predict: 24, top_k: 40, top_p: 0.99, samplers: ['top_k', 'top_p', 'infill'], seed,
  input_extra: [{ filename: 'a.txt', text: 'Tom had a dog.\n', time: 1 }], cache_prompt: true, n_indent: 0,
  t_max_prompt_ms: 500, t_max_predict_ms: 1000, stream: false,
});

test('llama.vim\'s request: samplers with the infill sampler, as llama-server samples them', async () => {
  const stories = process.env.SM_SERVER_INFILL_STORIES_URL;
  const expected = [
    ' are two friends, Max, who was very smarty. Lily',
    ' are many toys, but her mommy said they were going to the par',
    ' are two friends, Max and Lily were very happy. They went to the p',
  ];
  for (const [seed, content] of expected.entries()) {
    const r = await infillOk(stories, vimRequest(seed));
    assert.equal(r.content, content, `seed ${seed}`);
    assert.equal(r.tokens_evaluated, 55);
    assert.equal(r.generation_settings.infill, true); // what ran, reported
    assert.equal(r.generation_settings.top_p, 0.99);
  }
  // without the infill sampler the draw differs: it acts
  const plain = await infillOk(stories, { ...vimRequest(0), samplers: ['top_k', 'top_p'] });
  assert.notEqual(plain.content, expected[0]);
  // letters, llama-server's other form: "kpi" is the same chain
  assert.equal((await infillOk(stories, { ...vimRequest(1), samplers: 'kpi' })).content, expected[1]);
  // the fields llama.vim reads back, by their paths
  const fields = ['content', 'timings/prompt_n', 'timings/predicted_ms', 'truncated', 'tokens_cached'];
  const picked = await infillOk(stories, { ...vimRequest(2), response_fields: fields });
  assert.deepEqual(Object.keys(picked).sort(), [...fields].sort());
  assert.equal(picked.content, expected[2]);
  // llama.vim's background request that fills the cache with the other files: no sampler, nothing
  // generated, and response_fields [""] (a path to nothing, as in llama-server: an empty answer)
  const warm = await post(stories, '/infill', {
    id_slot: 0, input_prefix: '', input_suffix: '', input_extra: vimRequest(0).input_extra, prompt: '',
    n_predict: 0, temperature: 0, samplers: [], stream: false, cache_prompt: true, t_max_prompt_ms: 1,
    t_max_predict_ms: 1, response_fields: [''],
  });
  assert.equal(warm.status, 200, warm.text);
  assert.deepEqual(warm.json, {});
  const paths = await infillOk(stories, { ...vimRequest(0), n_predict: 1,
    response_fields: ['timings//prompt_n', 'content/x', 'timings/prompt_n'] });
  assert.deepEqual(Object.keys(paths), ['timings/prompt_n']);
});

test('samplers refused by name: unknown, twice, out of the chain\'s order, with mirostat', async () => {
  for (const [samplers, extra, words] of [
    [['top_k', 'nope'], {}, /unknown sampler 'nope'/], [['top_k', 'top-k'], {}, /named twice/],
    [['temperature', 'top_k'], {}, /'top_k' after 'temperature'/], ['kz', {}, /byte 1 \(0x7a\)/],
    [[3], {}, /sampler names/], [{}, {}, /array of sampler names or a string/],
    [['top_k'], { mirostat: 2 }, /mirostat replaces the chain/],
  ]) {
    const e = assertError(await post(servers.plain, '/completion', { prompt: 'a', samplers, ...extra }), 400, 'samplers');
    assert.match(e.message, words);
  }
  for (const bad of [{ n_indent: -1 }, { n_indent: 'x' }, { t_max_predict_ms: 1.5 }])
    assertError(await post(servers.plain, '/completion', { prompt: 'a', ...bad }), 400, Object.keys(bad)[0]);
});

test('n_indent ends the text where a line begins less indented, as llama-server cuts it', async () => {
  // llama-server 0.5.0's contents for these seeds (24 such requests matched side by side); it counts
  // one token more (it looks at a line one token late), the text is the same
  const body = (seed) => ({ prompt: 'Once upon a time.\n Tom said:\n  "Hi"\n', n_predict: 80, seed, temperature: 1.5,
    top_k: 0, top_p: 1, min_p: 0, n_indent: 2 });
  for (const [seed, content] of [[4, 'Yay, his mom told her they were going to everyone.\n'],
    [1, 'Vla\u2013 "I have life wear mix things." but the grocerotes stepped and the little mouse started to comb the money with it. They loved the safe it re his friend whole.\n']]) {
    const r = await post(servers.plain, '/completion', body(seed));
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.content, content);
    assert.equal(r.json.stop_type, 'limit');
    assert.equal(r.json.generation_settings.n_indent, 2);
    // a stream sends the same text, never the cut line's beginning
    const s = await post(servers.plain, '/completion', { ...body(seed), stream: true });
    assert.equal(sseEvents(s.text).map((e) => e.content || '').join(''), content);
  }
  // the same request without it goes on past that line
  const free = await post(servers.plain, '/completion', { ...body(4), n_indent: 0 });
  assert.ok(free.json.content.startsWith('Yay, his mom told her they were going to everyone.\n') &&
    free.json.content.length > 52, free.json.content);
});

test('t_max_predict_ms ends the text at a line end once the time has passed', async () => {
  const body = { prompt: 'Once upon a time.\n Tom said:\n  "Hi"\n', n_predict: 80, seed: 4, temperature: 1.5,
    top_k: 0, top_p: 1, min_p: 0 };
  const r = await post(servers.plain, '/completion', { ...body, t_max_predict_ms: 1 });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.stop_type, 'limit');
  assert.equal(r.json.content, 'Yay, his mom told her they were going to everyone.\n'); // its first line end
  const off = await post(servers.plain, '/completion', { ...body, t_max_predict_ms: -1 }); // <= 0: off
  assert.ok(off.json.content.length > r.json.content.length);
});

test('t_max_prompt_ms: a prompt that takes longer answers nothing, and the next request goes on from it', async () => {
  // the random 110M model decodes a 512-token chunk in about a second on two cores
  const slow = process.env.SM_SERVER_SLOW_URL;
  const prompt = Array.from({ length: 300 }, (_, i) => `word${i}`).join(' ');
  const cut = await post(slow, '/completion', { prompt, n_predict: 2, t_max_prompt_ms: 1 });
  assert.equal(cut.status, 200, cut.text);
  assert.equal(cut.json.content, '');
  assert.equal(cut.json.stop_type, 'limit');
  assert.equal(cut.json.tokens_predicted, 0);
  assert.equal(cut.json.tokens_evaluated, 512); // the one chunk decoded
  const next = await post(slow, '/completion', { prompt, n_predict: 2 });
  assert.equal(next.status, 200, next.text);
  assert.equal(next.json.tokens_cached, 512); // the first chunk, decoded before the limit
  assert.equal(next.json.tokens_predicted, 2);
  assertError(await post(servers.plain, '/v1/chat/completions', {
    messages: [{ role: 'user', content: 'a' }], t_max_prompt_ms: 5,
  }), 400, 't_max_prompt_ms');
});
