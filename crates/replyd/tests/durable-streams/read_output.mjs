#!/usr/bin/env node
// Follows a job's output with the Durable Streams client in Node
// (@durable-streams/client), live, from an offset, until the output
// closes (the job ended); prints what it read as JSON:
//   {"text": "...", "offset": "<the offset after it>", "batches": N}
//
//   node read_output.mjs <output URL> [offset, default -1]
import { stream } from '@durable-streams/client';

const [url, offset = '-1'] = process.argv.slice(2);
if (!url) {
  process.stderr.write('usage: node read_output.mjs <output URL> [offset]\n');
  process.exit(64);
}
const deadline = setTimeout(() => {
  process.stderr.write('read_output.mjs: the output did not close within 60 s\n');
  process.exit(2);
}, 60000);
const res = await stream({ url, offset, live: 'sse' });
let text = '';
let last = offset;
let batches = 0;
await new Promise((resolve) => {
  res.subscribeText((chunk) => {
    text += chunk.text;
    last = chunk.offset;
    batches += 1;
    if (chunk.streamClosed) resolve();
  });
});
clearTimeout(deadline);
process.stdout.write(JSON.stringify({ text, offset: last, batches }) + '\n');
process.exit(0);
