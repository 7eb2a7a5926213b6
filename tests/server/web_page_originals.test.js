// The page's LLooM and VisuaLL features, as the originals had them (issue
// 13), in headless Chromium: ranking, prefix space, auto-accept, stop
// trimming, DOT and PNG export, tokens/s, presets, inputs capped by /props,
// per-model lines and switches, a chosen reference, text coloured by model,
// a system prompt, counters that say what they count; and every view at a
// phone's width. Screenshots of each view at both sizes go to
// $SM_SCREENSHOT_DIR as page-<view>-<size>.png.
'use strict';

const test = require('node:test');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');
const { servers, assert } = require('./helpers');

const CHROMIUM = process.env.SM_CHROMIUM || '/usr/bin/chromium';
const SHOTS = process.env.SM_SCREENSHOT_DIR || process.cwd();
const MODEL_COLOURS = ['#3a6ff7', '#e07b00'];

async function withPage(viewport, body) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'sm-chromium-'));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport,
    acceptDownloads: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const errors = [];
  try {
    const page = await browser.newPage();
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    await body(page);
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

async function expandAndRead(page) {
  const response = page.waitForResponse((r) => r.url().endsWith('/loom/expand'));
  await page.click('#expand');
  const tree = await (await response).json();
  await page.waitForSelector('#expand:not([disabled])');
  return tree;
}

async function saved(download) {
  const file = await download.path();
  return fs.readFileSync(file);
}

test('the LLooM as the original: ranking, prefix space, auto-accept, export, presets, caps', { timeout: 120000 }, async () => {
  await withPage({ width: 1280, height: 900 }, async (page) => {
    await page.goto(servers.plain + '/');
    await page.waitForFunction(() => document.querySelectorAll('#model option').length >= 1);
    const props = await (await fetch(servers.plain + '/props')).json();

    // The original's ranking is the default; inputs are capped by the server.
    assert.equal(await page.inputValue('#score'), 'sum_probs');
    assert.equal(await page.getAttribute('#beam_limit', 'max'), String(props.loom_max_beams));
    await page.fill('#beam_limit', '1000');
    await page.dispatchEvent('#beam_limit', 'change');
    assert.equal(await page.inputValue('#beam_limit'), String(props.loom_max_beams));

    // A start-prompt preset fills the story.
    await page.selectOption('#story_preset', { index: 2 });
    assert.equal(await page.inputValue('#story'), 'Tom and his dog went to the park. They saw');

    // Auto-stop off, cutoff 0, no split limit: the best 5 beams, each to max depth.
    await page.uncheck('#auto_stop');
    await page.fill('#max_depth', '6');
    await page.fill('#beam_limit', '5');
    await page.fill('#cutoff', '0');
    await page.fill('#split_limit', '0');
    let tree = await expandAndRead(page);
    assert.equal(tree.params.score, 'sum_probs');
    assert.equal(tree.suggestions.length, 5);
    for (const s of tree.suggestions) if (s.end !== 'eog') assert.equal(s.tokens.length, 6);
    assert.equal(tree.levels, 5);
    assert.match(await page.textContent('#loom-status'), /5 suggestions in [\d.]+ ms, \d+ tokens\/s/);
    // Ranked by the sum of probabilities, best first.
    for (let i = 1; i < tree.suggestions.length; i++) assert.ok(tree.suggestions[i - 1].score >= tree.suggestions[i].score);
    // Shown without the leading space; accepting puts one back ("prefix space").
    const shown = await page.textContent('#suggestions .suggestion .sugg-text');
    assert.equal(shown, tree.suggestions[0].text.replace(/^ /, ''));
    const before = await page.inputValue('#story');
    const next = page.waitForResponse((r) => r.url().endsWith('/loom/expand'));
    await page.click('#suggestions .suggestion .accept');
    await next;
    assert.equal(await page.inputValue('#story'), before + ' ' + shown);
    await page.waitForSelector('#expand:not([disabled])');

    // DOT and PNG of the tree.
    let download = page.waitForEvent('download');
    await page.click('#export_dot');
    const dot = (await saved(await download)).toString();
    assert.match(dot, /^digraph lloom \{/);
    assert.equal((dot.match(/ -> n\d+/g) || []).length, (await page.locator('#tree svg .node').count()));
    download = page.waitForEvent('download');
    await page.click('#export_png');
    const png = await saved(await download);
    assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    assert.ok(png.length > 1000, `a PNG of ${png.length} bytes`);

    // Auto-stop on: a stop character ends a suggestion and its text is cut
    // after it.
    await page.check('#auto_stop');
    await page.fill('#max_depth', '12');
    await page.fill('#beam_limit', '12');
    await page.fill('#cutoff', '0.05');
    await page.fill('#split_limit', '3');
    await page.fill('#story', 'Once upon a time');
    tree = await expandAndRead(page);
    const stopped = tree.suggestions.filter((s) => s.end === 'stop_char');
    assert.ok(stopped.length > 0, 'some suggestion ends at a stop character');
    for (const s of stopped) assert.match(s.text, /[.,]$/);
    await page.screenshot({ path: path.join(SHOTS, 'page-loom-desktop.png'), fullPage: true });

    // Only one suggestion: it is accepted and expanded again, up to 20 times.
    await page.fill('#beam_limit', '1');
    await page.fill('#story', 'Once upon a time');
    const grown = page.waitForFunction(() => document.querySelector('#story').value.length > 'Once upon a time'.length + 20);
    await page.click('#expand');
    await grown;
    await page.waitForSelector('#expand:not([disabled])');
    assert.ok((await page.locator('#undo:not([disabled])').count()) === 1, 'auto-accepted suggestions can be undone');
  });
});

test('VisuaLL in the Inspector: model lines, switches, reference, colours, counters', { timeout: 120000 }, async () => {
  await withPage({ width: 1280, height: 900 }, async (page) => {
    await page.goto(servers.fused + '/');
    await page.waitForFunction(() => document.querySelectorAll('#model option').length === 3);
    await page.click('#tab-inspector');
    assert.equal(await page.locator('#fusion_reference option').count(), 2);
    assert.equal(await page.locator('.model-on').count(), 2);

    // Model 1 off and model 1 as the reference: the request says so.
    await page.fill('#prompt', 'Once upon a time');
    await page.fill('#max_tokens', '40');
    await page.selectOption('#fusion_mode', 'average');
    await page.uncheck('#model_on_1');
    await page.selectOption('#fusion_reference', '1');
    const request = page.waitForRequest((r) => r.url().endsWith('/v1/completions'));
    await page.click('#generate');
    const sent = JSON.parse((await request).postData());
    assert.deepEqual(sent.selfmod.fusion_weights, [1, 0]);
    assert.equal(sent.selfmod.fusion_reference, 1);
    await page.waitForFunction(() => /^done/.test(document.querySelector('#insp-status').textContent), null, { timeout: 60000 });

    // Each model's top-1 line, the cumulative line, the fused top-1 line.
    assert.equal(await page.locator('#chart svg path.model-line').count(), 2);
    assert.equal(await page.locator('#chart svg path.cumulative').count(), 1);
    assert.equal(await page.locator('#chart svg path.top1').count(), 1);
    // Determinism and creativity per model.
    const summary = await page.textContent('#summary');
    for (const name of ['stories260K', 'llama2xs-salty-280K']) assert.match(summary, new RegExp(name + ': determinism [\\d.]+, creativity [\\d.]+'));
    // Counters say what they count: the struck-through count is what is struck through.
    const struck = await page.locator('#output .tok.removed').count();
    assert.match(summary, new RegExp('struck through: ' + struck + '(?!\\d)'));
    assert.match(summary, /removed in all \(shown or not\): \d+/);

    // Text coloured by the model that led each token.
    await page.selectOption('#color_by', 'model');
    assert.ok(await page.isVisible('#legend-models'));
    assert.ok(!(await page.isVisible('#legend-confidence')));
    const colours = await page.$$eval('#output .tok:not(.removed)', (spans) => spans.map((s) => s.style.background));
    const rgb = (hex) => `rgba(${parseInt(hex.slice(1, 3), 16)}, ${parseInt(hex.slice(3, 5), 16)}, ${parseInt(hex.slice(5, 7), 16)}`;
    assert.ok(colours.some((c) => c.startsWith(rgb(MODEL_COLOURS[0]))), `model colours: ${colours.slice(0, 4)}`);
    // Each model's own top 3 at a chosen token, the chosen token marked.
    await page.click('#output .tok >> nth=2');
    assert.equal(await page.locator('#token-details table.model-top tr').count(), 3);
    assert.ok(await page.locator('#token-details table.model-top b.chosen-alt').count() >= 1);
    await page.screenshot({ path: path.join(SHOTS, 'page-inspector-desktop.png'), fullPage: true });
  });
});

test('a system prompt goes through the chat template', { timeout: 120000 }, async () => {
  await withPage({ width: 1280, height: 900 }, async (page) => {
    await page.goto(servers.plain + '/');
    await page.waitForFunction(() => document.querySelectorAll('#model option').length >= 1);
    await page.click('#tab-inspector');
    await page.click('#system-box summary');
    await page.fill('#system', 'You tell short stories.');
    await page.fill('#prompt', 'Tell me about a cat.');
    await page.fill('#max_tokens', '20');
    const request = page.waitForRequest((r) => r.url().endsWith('/v1/chat/completions'));
    await page.click('#generate');
    const sent = JSON.parse((await request).postData());
    assert.deepEqual(sent.messages.map((m) => m.role), ['system', 'user']);
    await page.waitForFunction(() => /^done/.test(document.querySelector('#insp-status').textContent), null, { timeout: 60000 });
    assert.ok(await page.locator('#output .tok').count() >= 1);
  });
});

test('every view works at a phone\'s width', { timeout: 120000 }, async () => {
  await withPage({ width: 400, height: 860 }, async (page) => {
    const wide = () => page.evaluate(() => document.documentElement.scrollWidth);
    await page.goto(servers.fused + '/');
    await page.waitForFunction(() => document.querySelectorAll('#model option').length === 3);
    await page.fill('#story', 'Once upon a time, there was a little girl named Lily.');
    await expandAndRead(page);
    assert.ok(await page.locator('#suggestions .suggestion').count() >= 2);
    assert.ok(await wide() <= 400, `the LLooM is ${await wide()} px wide`);
    const tree = await page.locator('#tree').boundingBox();
    assert.ok(tree.width > 200 && tree.width <= 400, `the tree panel is ${tree.width} px wide`);
    await page.screenshot({ path: path.join(SHOTS, 'page-loom-phone.png'), fullPage: true });

    await page.click('#tab-inspector');
    await page.fill('#max_tokens', '30');
    await page.click('#generate');
    await page.waitForFunction(() => /^done/.test(document.querySelector('#insp-status').textContent), null, { timeout: 60000 });
    assert.ok(await wide() <= 400, `the Inspector is ${await wide()} px wide`);
    await page.click('#output .tok >> nth=1');
    await page.screenshot({ path: path.join(SHOTS, 'page-inspector-phone.png'), fullPage: true });
  });
});
