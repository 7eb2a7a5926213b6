// Load generator for bench/bench_server.sh: N concurrent streaming
// /v1/completions requests against a running `llama_selfmod serve`.
// usage: node bench/server_load.js URL STREAMS TOKENS SEED
// Prints one JSON line: wall time, tokens, the client-side rate (HTTP and
// SSE included) and the server's own generation rate per stream.
'use strict';

const [url, streams, tokens, seed] = process.argv.slice(2);
if (!url || !streams || !tokens) {
  console.error('usage: node bench/server_load.js URL STREAMS TOKENS [SEED]');
  process.exit(2);
}

async function oneStream(i) {
  const t0 = performance.now();
  const res = await fetch(url + '/v1/completions', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({
      prompt: 'Once upon a time', max_tokens: Number(tokens), seed: Number(seed || 1) + i, stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (!res.ok) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '', first = null, usage = null, timings = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let at;
    while ((at = buf.indexOf('\n\n')) >= 0) {
      const line = buf.slice(0, at);
      buf = buf.slice(at + 2);
      if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
      const chunk = JSON.parse(line.slice(6));
      if (first === null && chunk.choices && chunk.choices.length && chunk.choices[0].text) first = performance.now() - t0;
      if (chunk.usage) usage = chunk.usage;
      if (chunk.timings) timings = chunk.timings;
    }
  }
  return { ms: performance.now() - t0, first_token_ms: first, tokens: usage.completion_tokens, timings };
}

(async () => {
  // node's first fetch loads and sets up its HTTP client: not the server's time.
  await (await fetch(url + '/health')).text();
  const t0 = performance.now();
  const results = await Promise.all(Array.from({ length: Number(streams) }, (_, i) => oneStream(i)));
  const wall = performance.now() - t0;
  const total = results.reduce((a, r) => a + r.tokens, 0);
  const engine = results.map((r) => r.timings.predicted_per_second);
  console.log(JSON.stringify({
    streams: Number(streams),
    tokens: total,
    wall_ms: wall,
    client_tokens_per_s: (total * 1000) / wall,
    engine_tokens_per_s_per_stream: engine.reduce((a, b) => a + b, 0) / engine.length,
    first_token_ms: results.reduce((a, r) => a + r.first_token_ms, 0) / results.length,
  }));
})().catch((e) => {
  console.error('server_load:', e.message);
  process.exit(1);
});
