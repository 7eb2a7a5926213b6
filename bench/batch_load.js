// Load generator for bench/bench_batching.sh: N concurrent, non-streamed,
// greedy /v1/completions requests (distinct prompts) against a running
// server (ours or llama-server). Prints one JSON line: the tokens all
// requests generated, the wall time, and the aggregate tokens/s.
// usage: node bench/batch_load.js URL REQUESTS TOKENS
'use strict';

const [url, requests, tokens] = process.argv.slice(2);

async function one(i) {
  const res = await fetch(url + '/v1/completions', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    // selfmod on (llama-server ignores the field): the policy watches every token;
// BENCH_SELFMOD: the selfmod object (default {}: the default policy)
    body: JSON.stringify({ prompt: `Story ${i}: once upon a time`, max_tokens: Number(tokens), temperature: 0,
                           selfmod: JSON.parse(process.env.BENCH_SELFMOD || '{}') }),
  });
  const body = await res.json();
  if (!res.ok) throw new Error(`HTTP ${res.status}: ${JSON.stringify(body)}`);
  return body.usage.completion_tokens;
}

(async () => {
  await (await fetch(url + '/health')).text(); // node's HTTP client set-up is not the server's time
  await one(0); // warm-up
  const t0 = performance.now();
  const counts = await Promise.all(Array.from({ length: Number(requests) }, (_, i) => one(i + 1)));
  const wall = performance.now() - t0;
  const total = counts.reduce((a, b) => a + b, 0);
  console.log(JSON.stringify({ requests: Number(requests), tokens: total, wall_ms: wall, tokens_per_s: (total * 1000) / wall }));
})().catch((e) => {
  console.error('batch_load:', e.message);
  process.exit(1);
});
