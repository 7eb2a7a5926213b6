// Load generator for bench/bench_loom_beside.sh: N concurrent greedy
// /v1/completions of T tokens and, while they run, LLooM expansions one
// after another (/loom/expand, the page's defaults). Prints one JSON line:
// the completions' aggregate tokens/s and the expansions' median time.
// usage: node bench/loom_beside.js URL REQUESTS TOKENS (REQUESTS 0: expansions alone)
// BESIDE=embeddings: /v1/embeddings of 8 sentences instead of expansions.
'use strict';

const [url, requests, tokens] = process.argv.slice(2).map((v, i) => (i ? Number(v) : v));
const post = async (path, body) => {
  const res = await fetch(url + path, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
  const json = await res.json();
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}: ${JSON.stringify(json)}`);
  return json;
};
const complete = async (i) =>
  (await post('/v1/completions', { prompt: `Story ${i}: once upon a time`, max_tokens: tokens, temperature: 0 })).usage
    .completion_tokens;
const SENTENCES = Array.from({ length: 8 }, (_, i) => `Sentence ${i}: the little dog ran to the park and played with a red ball.`);
const expand = async () => {
  const t0 = performance.now();
  if (process.env.BESIDE === 'embeddings') await post('/v1/embeddings', { input: SENTENCES });
  else await post('/loom/expand', { prefix: 'Once upon a time, there was a little girl who', max_depth: 8, beam_limit: 16 });
  return performance.now() - t0;
};
const median = (v) => v.slice().sort((a, b) => a - b)[Math.floor(v.length / 2)];

(async () => {
  await complete(0); // warm-up
  await expand();
  const expansions = [];
  let running = true;
  const t0 = performance.now();
  const streams = Promise.all(Array.from({ length: requests }, (_, i) => complete(i + 1))).finally(() => { running = false; });
  const loom = (async () => { do expansions.push(await expand()); while (running || expansions.length < 3); })();
  const counts = await streams;
  const wall = performance.now() - t0;
  await loom;
  const total = counts.reduce((a, b) => a + b, 0);
  console.log(JSON.stringify({ tokens_per_s: requests ? (total * 1000) / wall : 0, expand_ms: median(expansions), expansions: expansions.length }));
})().catch((e) => {
  console.error('loom_beside:', e.message);
  process.exit(1);
});
