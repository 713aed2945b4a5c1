// The hub's dashboard in headless Chromium (Debian's): sign in with a token,
// see the counters and the map, assign a dead-lettered post to an NGO from
// the DLQ panel, see it leave the queue.
//
//   node dashboard.mjs HUB_URL TOKEN NGO_ID SCREENSHOT_DIR
import { runSteps } from './lib.mjs';

const [hub, token, ngo, shots] = process.argv.slice(2);
if (!hub || !token || !ngo || !shots) {
  console.log('usage: node dashboard.mjs HUB_URL TOKEN NGO_ID SCREENSHOT_DIR');
  process.exit(2);
}
// Nothing may leave the machine: runSteps' context fails any such request.
await runSteps(async (context, step) => {
  const page = await context.newPage();
  await page.goto(`${hub}/dashboard/`);

  step('a wrong token is refused');
  await page.fill('#token', 'not-a-token');
  await page.click('#token-form button');
  await page.locator('#login-error', { hasText: 'token' }).waitFor();

  step('sign in');
  await page.fill('#token', token);
  await page.click('#token-form button');
  await page.locator('#board').waitFor({ state: 'visible' });

  step('counters and the map show the dead-lettered post');
  await page.locator('.counter[data-name="dead lettered"] b', { hasText: '1' }).waitFor();
  await page.locator('#map circle.post.dead_lettered').waitFor();
  await page.locator('#map rect.vehicle').first().waitFor();
  await page.locator('.counter[data-name="routing breaker"] b', { hasText: 'closed' }).waitFor();
  await page.locator('.counter[data-name="vehicles online"] b', { hasText: '1' }).waitFor();
  await page.locator('.counter[data-name="tablets silent"] b', { hasText: '0' }).waitFor();
  await page.locator('.counter[data-name="pickups overdue"] b', { hasText: '0' }).waitFor();
  await page.screenshot({ path: `${shots}/dashboard.png`, fullPage: true });

  step('assign it from the DLQ');
  const item = page.locator('#dlq li[data-id]').first();
  await item.locator('input.ngo').fill(ngo);
  await item.locator('button.assign').click();
  await page.locator('#dlq .empty').waitFor();
  await page.locator('.counter[data-name="claimed"] b', { hasText: '1' }).waitFor();
  step('its pickup window closed an hour ago: the claim shows as overdue');
  await page.locator('.counter[data-name="pickups overdue"] b', { hasText: '1' }).waitFor();
  await page.locator('#impact-total', { hasText: 'kg rescued' }).waitFor();
  return 'sign-in, counters, map, DLQ assign, overdue pickup, impact';
});
