// The web page in headless Chromium (Debian's), driven by playwright-core:
// load it, expand the LLooM's tree, accept a suggestion, run the Inspector.
// Screenshots go to $SM_SCREENSHOT_DIR (the build folder under ctest).
'use strict';

const test = require('node:test');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');
const { servers, assert } = require('./helpers');

const CHROMIUM = process.env.SM_CHROMIUM || '/usr/bin/chromium';
const SHOTS = process.env.SM_SCREENSHOT_DIR || process.cwd();

async function launch() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'sm-chromium-'));
  // A fresh profile; playwright passes it to Chromium as --user-data-dir.
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  return { browser, profile };
}

test('the LLooM and the Inspector work in a browser', { timeout: 120000 }, async () => {
  const { browser, profile } = await launch();
  const errors = [];
  try {
    const page = await browser.newPage();
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    await page.goto(servers.fused + '/');
    await page.waitForFunction(() => document.querySelectorAll('#model option').length === 3);

    // LLooM: expand, then accept the best suggestion.
    await page.fill('#story', 'Once upon a time, there was a little girl named Lily.');
    await page.click('#expand');
    await page.waitForSelector('#suggestions .suggestion');
    const n = await page.locator('#suggestions .suggestion').count();
    assert.ok(n >= 2, `${n} suggestions`);
    assert.ok(await page.locator('#tree svg .node').count() >= n, 'the tree is drawn');
    assert.match(await page.textContent('#loom-status'), /suggestions in [\d.]+ ms/);
    const first = (await page.textContent('#suggestions .suggestion .sugg-text'));
    const before = await page.inputValue('#story');
    await page.click('#suggestions .suggestion .accept');
    await page.waitForFunction((b) => document.querySelector('#story').value !== b, before);
    assert.equal(await page.inputValue('#story'), before + ' ' + first); // "prefix space"
    await page.waitForSelector('#expand:not([disabled])');
    await page.waitForSelector('#suggestions .suggestion');
    await page.screenshot({ path: path.join(SHOTS, 'server-screenshot-loom.png'), fullPage: true });
    // Undo brings the story back.
    await page.click('#undo');
    await page.waitForFunction((b) => document.querySelector('#story').value === b, before);

    // Inspector: the fused models in reference mode, with self-correction.
    await page.click('#tab-inspector');
    await page.fill('#prompt', 'Once upon a time');
    await page.fill('#max_tokens', '60');
    await page.check('#sm_aggressive');
    await page.selectOption('#sm_retract', 'true');
    await page.fill('#sm_critical', '0.6');
    await page.selectOption('#fusion_mode', 'reference');
    await page.click('#generate');
    await page.waitForFunction(() => /^done/.test(document.querySelector('#insp-status').textContent), null, { timeout: 60000 });
    const kept = await page.locator('#output .tok:not(.removed)').count();
    assert.equal(kept, 60);
    assert.ok(await page.locator('#chart svg path').count() >= 1, 'the chart is drawn');
    assert.match(await page.textContent('#summary'), /retractions/);
    await page.click('#output .tok >> nth=3');
    assert.match(await page.textContent('#token-details'), /agreement/);
    await page.screenshot({ path: path.join(SHOTS, 'server-screenshot.png'), fullPage: true });
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
});
