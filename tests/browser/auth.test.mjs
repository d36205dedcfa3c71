// With a JWT secret: the page asks for a token once, keeps it in sessionStorage for the tab,
// sends it as a header (REST) and in the first frame (WebSocket), and asks again when refused.

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { env, launch, openPage, waitForBadge } from './lib/harness.mjs';

let browser, base, token;

before(async () => {
  base = env('SY_AUTH_URL');
  token = env('SY_AUTH_TOKEN');
  browser = await launch();
});

afterEach(async () => {
  for (const p of browser.context.pages()) await p.close();
});

after(async () => {
  await browser?.close();
});

test('with auth on, the page asks for a token once and keeps it for the tab', async () => {
  const { page, console } = await openPage(browser, `${base}/operations`);
  const dialog = page.getByRole('dialog', { name: 'Access token' });
  await dialog.waitFor();
  assert.equal(await page.getAttribute('#conn', 'data-state'), 'connecting');
  await dialog.getByLabel('Token').fill(token);
  await dialog.getByRole('button', { name: 'Continue' }).click();
  await waitForBadge(page, 'connected');
  assert.equal(await dialog.isVisible(), false);
  assert.equal(await page.evaluate(() => sessionStorage.getItem('switchyard.token')), token);

  // REST (with the header) and the socket (with the auth frame) both work.
  await page.getByLabel('Target').fill('secured-box');
  await page.getByLabel('Pace').selectOption('30');
  await page.getByRole('button', { name: 'Start demo' }).click();
  await page.locator('.toast[data-tone="success"]', { hasText: 'secured-box' }).waitFor();

  // Other pages of the same tab do not ask again.
  for (const path of ['/', '/rooms', '/activity']) {
    await page.goto(`${base}${path}`);
    await waitForBadge(page, 'connected');
    assert.equal(await dialog.isVisible(), false, `${path} asked again`);
  }
  await page.goto(`${base}/rooms`);
  await page.locator('#rooms-body tr[data-room="operations"]').waitFor();
  console.assertClean();
  await page.close();
});

test('a refused token is dropped and the page asks again, saying why', async () => {
  const { page, console } = await openPage(browser, `${base}/`);
  // A fresh tab has its own sessionStorage: it asks.
  const dialog = page.getByRole('dialog', { name: 'Access token' });
  await dialog.waitFor();
  await page.evaluate(() => sessionStorage.setItem('switchyard.token', 'not-a-valid-token'));
  await page.reload();
  await dialog.waitFor();
  await page.locator('#token-error').waitFor();
  assert.notEqual((await page.textContent('#token-error')).trim(), '');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('switchyard.token')), null);
  await dialog.getByLabel('Token').fill(token);
  await dialog.getByRole('button', { name: 'Continue' }).click();
  await waitForBadge(page, 'connected');
  await page.locator('#health [data-component="database"] .pill[data-state="ok"]').waitFor();
  // The refused attempts are the only errors: HTTP 401s the browser logs.
  console.allow(/status of 401/);
  console.assertClean();
  await page.close();
});
