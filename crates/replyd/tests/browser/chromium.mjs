// How the browser harnesses launch Chromium: Debian's headless binary
// (through playwright-core, no browser download), loopback only.
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';

// Debian's /usr/bin/chromium is a wrapper script that adds Google API keys and
// extension flags (and with them background lookups of Google hosts): launch the
// binary it wraps when it is there.
export const executablePath =
  process.env.CHROMIUM || (existsSync('/usr/lib/chromium/chromium') ? '/usr/lib/chromium/chromium' : '/usr/bin/chromium');

export function launch() {
  return chromium.launch({
    executablePath,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-dev-shm-usage',
      // Loopback only: no name resolves but 127.0.0.1/localhost, and no
      // background traffic (updates, sign-in, prefetch).
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
      '--disable-component-update',
      '--disable-sync',
      '--disable-domain-reliability',
      '--dns-prefetch-disable',
      '--no-pings',
    ],
    // The harness's own signal handlers close the browser.
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
  });
}
