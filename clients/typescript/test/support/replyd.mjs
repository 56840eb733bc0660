// Starts a real replyd for a test, the way the black-box tests do:
// `replyd serve --config FILE --listen 127.0.0.1:0 --db DIR/replyd.db`,
// reading the address from its "replyd listening on http://…" log line.
// Every server is stopped when its test ends (t.after), and killed should
// the test process exit first.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import { fileURLToPath } from 'node:url';

/** The binary under test: $REPLYD_BIN, else this workspace's debug build (target/debug/replyd). */
export const REPLYD_BIN = process.env.REPLYD_BIN || fileURLToPath(new URL('../../../../target/debug/replyd', import.meta.url));

const running = new Set();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** Keys for tests of auth: two tenants, each role. */
export const KEYS = {
  client: 'k-acme-client',
  worker: 'k-acme-worker',
  admin: 'k-acme-admin',
  otherClient: 'k-globex-client',
};

export const KEYS_TOML = `
[[api_keys]]
key = "${KEYS.client}"
tenant = "acme"
role = "client"

[[api_keys]]
key = "${KEYS.worker}"
tenant = "acme"
role = "worker"

[[api_keys]]
key = "${KEYS.admin}"
tenant = "acme"
role = "admin"

[[api_keys]]
key = "${KEYS.otherClient}"
tenant = "globex"
role = "client"
`;

/**
 * Starts replyd with `config` (TOML) in a fresh directory; stops it and
 * removes the directory when test context `t` ends.
 * @returns {Promise<Replyd>}
 */
export async function startReplyd(t, config = '') {
  const server = await launch(config);
  t.after(() => server.close());
  return server;
}

/**
 * One replyd for a whole suite (`describe`): started before its first
 * test, stopped after its last. `fixture.server` is it.
 */
export function suiteReplyd(config = '') {
  const fixture = { server: undefined };
  before(async () => {
    fixture.server = await launch(config);
  });
  after(() => fixture.server?.close());
  return fixture;
}

async function launch(config) {
  if (!existsSync(REPLYD_BIN)) {
    throw new Error(`no replyd binary at ${REPLYD_BIN}: build it, or set REPLYD_BIN to one`);
  }
  const dir = await mkdtemp(join(tmpdir(), 'replyd-ts-'));
  await writeFile(join(dir, 'replyd.toml'), config);
  const server = new Replyd(dir);
  try {
    await server.start('127.0.0.1:0');
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
  return server;
}

export class Replyd {
  constructor(dir) {
    this.dir = dir;
    this.db = join(dir, 'replyd.db');
    this.child = undefined;
    this.url = undefined;
    this.port = undefined;
    this.log = '';
  }

  /** Starts the server on `listen` and resolves once it listens. */
  start(listen) {
    const child = spawn(
      REPLYD_BIN,
      ['serve', '--config', join(this.dir, 'replyd.toml'), '--listen', listen, '--db', this.db],
      { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'info' } },
    );
    this.child = child;
    running.add(child);
    child.on('exit', () => running.delete(child));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`replyd did not start within 15 s:\n${this.log}`));
      }, 15000);
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (chunk) => {
        this.log = (this.log + chunk).slice(-20000);
        const m = /replyd listening on (http:\/\/[0-9.]+:(\d+))/.exec(this.log);
        if (m && this.url === undefined) {
          clearTimeout(timer);
          this.url = m[1];
          this.port = Number(m[2]);
          resolve(this);
        }
      });
      child.on('exit', (code, signal) => {
        if (this.url === undefined) {
          clearTimeout(timer);
          reject(new Error(`replyd exited (${code ?? signal}) before listening:\n${this.log}`));
        }
      });
    });
  }

  /** Stops the server (SIGTERM, which drains; SIGKILL after 10 s) and waits for it to exit. */
  async stop() {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10000);
    await exited;
    clearTimeout(timer);
  }

  /** Stops the server and removes its directory. */
  async close() {
    await this.stop();
    await rm(this.dir, { recursive: true, force: true });
  }

  /** Stops the server and starts it again on the same port with the same database. */
  async restart() {
    const { port } = this;
    await this.stop();
    this.url = undefined;
    this.log = '';
    await this.start(`127.0.0.1:${port}`);
  }
}

/** Resolves with the first value `f` answers that is truthy, polling every 50 ms; rejects after `ms`. */
export async function until(what, f, ms = 10000) {
  const end = Date.now() + ms;
  for (;;) {
    const value = await f();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A promise with its resolve function, for handlers that wait for the test. */
export function gate() {
  let open;
  const promise = new Promise((resolve) => (open = resolve));
  return { promise, open };
}
