/**
 * A Server-Sent Events parser (the WHATWG HTML "event stream
 * interpretation"), fed from a `fetch` body, for platforms without
 * `EventSource` (Node 20) and for requests that need headers
 * (`Authorization`, `Last-Event-ID`).
 *
 * @internal
 * @module
 */

/** One dispatched event. */
export interface SseFrame {
  /** The `event:` field, `message` when there was none. */
  readonly event: string;
  /** The `data:` lines, joined with `\n`. */
  readonly data: string;
  /** The last event id as of this event (`id:` fields persist until changed). */
  readonly id: string;
  /** Whether this event itself carried an `id:` field. */
  readonly hasId: boolean;
}

/** An incremental parser: feed it text, take the events it completes. */
export class SseParser {
  /** The reconnection time the stream asked for (`retry:`), in milliseconds. */
  retry: number | undefined;
  private buffer = '';
  private pendingCR = false;
  private started = false;
  private eventType = '';
  private data = '';
  private hasData = false;
  private lastEventId = '';
  private sawId = false;

  /** Parses `chunk` (text), answering the events it completes, in order. */
  push(chunk: string): SseFrame[] {
    if (!this.started && chunk.length > 0) {
      this.started = true;
      if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1);
    }
    const frames: SseFrame[] = [];
    let text = this.buffer + chunk;
    this.buffer = '';
    // A CR that ended the previous chunk already ended its line: a LF
    // right after it belongs to it.
    if (this.pendingCR && text.startsWith('\n')) text = text.slice(1);
    this.pendingCR = false;
    let start = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== 0x0a && c !== 0x0d) continue;
      this.line(text.slice(start, i), frames);
      if (c === 0x0d) {
        if (i + 1 < text.length) {
          if (text.charCodeAt(i + 1) === 0x0a) i++;
        } else {
          this.pendingCR = true;
        }
      }
      start = i + 1;
    }
    this.buffer = text.slice(start);
    return frames;
  }

  private line(line: string, frames: SseFrame[]): void {
    if (line === '') {
      if (this.hasData) {
        frames.push({
          event: this.eventType || 'message',
          data: this.data.endsWith('\n') ? this.data.slice(0, -1) : this.data,
          id: this.lastEventId,
          hasId: this.sawId,
        });
      }
      this.eventType = '';
      this.data = '';
      this.hasData = false;
      this.sawId = false;
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'event':
        this.eventType = value;
        break;
      case 'data':
        this.data += value + '\n';
        this.hasData = true;
        break;
      case 'id':
        if (!value.includes('\u0000')) {
          this.lastEventId = value;
          this.sawId = true;
        }
        break;
      case 'retry':
        if (/^\d+$/.test(value)) this.retry = Number(value);
        break;
      default:
        break;
    }
  }
}

/** The stream sent nothing, not even a keep-alive comment, for too long. */
export class IdleStreamError extends Error {
  constructor(seconds: number) {
    super(`nothing received on the event stream for ${seconds} s`);
    this.name = 'IdleStreamError';
  }
}

/**
 * The events of an event-stream body, as they arrive. Throws
 * {@link IdleStreamError} when no bytes come for `idleSeconds`, and what
 * reading the body throws (a broken connection, the caller's abort).
 * `parser` keeps the `retry:` the stream asked for.
 */
export async function* readEvents(
  body: ReadableStream<Uint8Array>,
  parser: SseParser,
  idleSeconds: number,
): AsyncGenerator<SseFrame, void, undefined> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  try {
    for (;;) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const idle = new Promise<'idle'>((resolve) => {
        timer = setTimeout(() => resolve('idle'), idleSeconds * 1000);
      });
      const next = await Promise.race([reader.read(), idle]).finally(() => clearTimeout(timer));
      if (next === 'idle') throw new IdleStreamError(idleSeconds);
      if (next.done) {
        yield* parser.push(decoder.decode());
        return;
      }
      yield* parser.push(decoder.decode(next.value, { stream: true }));
    }
  } finally {
    reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}
