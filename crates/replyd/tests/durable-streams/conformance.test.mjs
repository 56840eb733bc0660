// The protocol's conformance suite against DS_URL (a replyd serving
// /v1/stream/), whose long polls wait LONG_POLL_MS. Run by
// crates/replyd/tests/durable_streams.rs: npx vitest run conformance.test.mjs
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

runConformanceTests({
  baseUrl: process.env.DS_URL,
  longPollTimeoutMs: Number(process.env.LONG_POLL_MS || 3000),
})
