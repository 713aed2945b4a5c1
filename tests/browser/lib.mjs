// What every browser test starts with: Debian's chromium, headless, and a
// context that fails any request leaving this machine (no CDN, no fonts,
// nothing off loopback).
import { chromium } from 'playwright-core';

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--headless=new'],
  });
}

export async function loopbackContext(browser) {
  const context = await browser.newContext();
  context.on('request', r => {
    const host = new URL(r.url()).hostname;
    if (host !== '127.0.0.1' && host !== 'localhost') throw new Error(`request off the machine: ${r.url()}`);
  });
  return context;
}

// Runs a browser test as named steps: `body(context, step)` calls
// step('what happens next') before each and returns what held. Prints
// "ok: <that>" and exits 0, or "FAILED at step ..." and exits 1; the
// browser is closed either way.
export async function runSteps(body) {
  const browser = await launch();
  let current = 'start';
  let code = 0;
  try {
    const context = await loopbackContext(browser);
    console.log(`ok: ${await body(context, name => { current = name; })}`);
  } catch (e) {
    console.log(`FAILED at step "${current}": ${e.message}`);
    code = 1;
  }
  await browser.close();
  process.exit(code);
}
