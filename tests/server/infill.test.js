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
