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
