// Drift guards against clients/openapi.json (kept equal to the server's
// spec by a Rust test): the generated types are current, and every route
// the SDK calls is in the spec.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { ROUTES } from '../dist/index.js';
import { SCHEMA_PATH, SPEC_PATH, generate } from '../scripts/gen-types.mjs';

const spec = JSON.parse(readFileSync(SPEC_PATH, 'utf8'));

test('src/schema.ts is what scripts/gen-types.mjs makes of clients/openapi.json', () => {
  const fresh = generate(spec);
  const committed = readFileSync(SCHEMA_PATH, 'utf8');
  assert.ok(
    fresh === committed,
    'src/schema.ts is out of date with clients/openapi.json: run `npm run gen-types` and take the changes in',
  );
});

test('every (method, path) the SDK calls is in clients/openapi.json', () => {
  const routes = Object.entries(ROUTES);
  assert.ok(routes.length >= 10);
  for (const [name, route] of routes) {
    const item = spec.paths[route.path];
    assert.ok(item, `${name}: ${route.path} is not a path of the spec`);
    assert.ok(item[route.method.toLowerCase()], `${name}: ${route.method} ${route.path} is not in the spec`);
  }
});

test('the generator fails loudly on what it cannot translate', () => {
  assert.throws(() => generate({ components: {} }), /no components.schemas/);
  const missing = structuredClone(spec);
  delete missing.components.schemas.Job;
  assert.throws(() => generate(missing), /schema Job is not in the spec/);
});
