// The kiosk and tablet pages in headless Chromium (Debian's), as people use
// them: post on the kiosk (with a pickup window), see the offer on the
// tablet with what a driver needs to know, accept it, see "claimed" and the
// handover code on the kiosk; the language switch works.
//
//   node agent_ui.mjs KIOSK_URL TABLET_URL SCREENSHOT_DIR
// Exits 0 when every step held, 1 with the failing step otherwise.
import { runSteps } from './lib.mjs';

const [kioskUrl, tabletUrl, shots] = process.argv.slice(2);
if (!kioskUrl || !tabletUrl || !shots) {
  console.error('usage: node agent_ui.mjs KIOSK_URL TABLET_URL SCREENSHOT_DIR');
  process.exit(2);
}

// Unique, so that the script can run against a city that already has posts.
const what = `Nasi goreng, 20 boxes #${Date.now() % 100000}`;
// Nothing may leave the machine: runSteps' context fails any such request.
await runSteps(async (context, step) => {
  const kiosk = await context.newPage();
  const tablet = await context.newPage();
  await kiosk.goto(kioskUrl);
  await tablet.goto(tabletUrl);

  step('kiosk page shows the post form and an online banner');
  await kiosk.locator('#kiosk').waitFor({ state: 'visible' });
  await kiosk.locator('#banner.online').waitFor();

  step('post on the kiosk');
  await kiosk.fill('#description', what);
  await kiosk.fill('#quantity_kg', '6');
  await kiosk.selectOption('#storage', 'hot');
  await kiosk.check('input[value="eggs"]');
  await kiosk.selectOption('#pickup_window', '0-120');
  await kiosk.selectOption('#prepared_min_ago', '60');
  await kiosk.fill('#instructions', 'Ring at the back door');
  await kiosk.click('#post-button');
  const card = kiosk.locator('#my-posts li', { hasText: what });
  await card.waitFor();

  step('the kiosk shows its post with the pickup window');
  await card.getByText(/pick up .+–.+/).waitFor();

  step('the offer appears on the tablet, with a countdown, storage, when cooked, pickup window, allergens and instructions');
  const offer = tablet.locator('#offers li', { hasText: what });
  await offer.waitFor({ timeout: 20000 });
  await offer.locator('.countdown').waitFor();
  const meta = await offer.locator('.meta').allTextContents();
  for (const want of [/Hot/, /cooked \S+/, /pick up .+–.+/, /contains eggs/, /Ring at the back door/])
    if (!meta.some(m => want.test(m))) throw new Error(`the offer does not show ${want}: ${JSON.stringify(meta)}`);

  step('accept on the tablet');
  await offer.locator('button.accept').click();
  await tablet.locator('#pickups li', { hasText: what }).waitFor({ timeout: 20000 });

  step('the kiosk shows claimed, by whom, and the handover code');
  await card.locator('.status.claimed').waitFor({ timeout: 20000 });
  await card.getByText('City Harvest').waitFor();
  const code = (await card.locator('.code').textContent()).trim();
  if (!/^[0-9]{6}$/.test(code)) throw new Error(`handover code looks wrong: "${code}"`);
  await kiosk.screenshot({ path: `${shots}/kiosk-claimed.png`, fullPage: true });

  step('a wrong code on the tablet is refused in plain words');
  const pickup = tablet.locator('#pickups li', { hasText: what });
  await pickup.locator('input.handover').fill(code === '000000' ? '111111' : '000000');
  await pickup.locator('button.pickup').click();
  await tablet.locator('#notices .notice', { hasText: 'Wrong handover code' }).waitFor({ timeout: 20000 });

  step('the right code collects it');
  await pickup.locator('input.handover').fill(code);
  await pickup.locator('button.pickup').click();
  await card.locator('.status.picked_up').waitFor({ timeout: 20000 });
  await tablet.screenshot({ path: `${shots}/tablet-picked-up.png`, fullPage: true });

  step("a driver who cannot come releases a claim: the kiosk sees it open again");
  const other = `${what} (second)`;
  await kiosk.fill('#description', other);
  await kiosk.click('#post-button');
  const otherCard = kiosk.locator('#my-posts li', { hasText: other });
  await otherCard.waitFor();
  const otherOffer = tablet.locator('#offers li', { hasText: other });
  await otherOffer.locator('button.accept').click({ timeout: 20000 });
  const otherPickup = tablet.locator('#pickups li', { hasText: other });
  await otherPickup.locator('button.release').click({ timeout: 20000 });
  await otherPickup.waitFor({ state: 'detached', timeout: 20000 });
  await otherCard.locator('.status.claimed').waitFor({ state: 'detached', timeout: 20000 });
  if (await otherCard.locator('.code').count()) throw new Error('a released post still shows a handover code');

  step('Bahasa Indonesia');
  await kiosk.click('button[data-lang="id"]');
  await kiosk.getByText('Laporkan makanan berlebih').waitFor();
  await kiosk.getByText('Sudah diambil').first().waitFor();
  await kiosk.locator('#pickup_window option', { hasText: 'sekarang' }).first().waitFor({ state: 'attached' });
  return 'post with a pickup window -> offer with storage, window, allergens, instructions -> accept -> ' +
         'claimed with code -> wrong code refused -> picked up; a claim released; EN/ID';
});
