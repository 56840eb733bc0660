#!/usr/bin/env python3
"""A stand-in for an OpenAI-compatible model server, for the llm-gateway
example and its test: POST .../chat/completions answers with a fixed
reply, one token at a time (`stream: true`: Server-Sent Events, `data:`
chunks, `--delay` seconds apart, then `data: [DONE]`) or all at once.
Chunks are the same for the same request, so that two calls can be
compared byte for byte. GET /stats tells how many completions were
asked for and how many clients went away mid-stream.

    python3 fake_llm.py --port 9100 --tokens 40 --delay 0.05
"""

import argparse
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATS = {"calls": 0, "disconnects": 0, "finished": 0}
LOCK = threading.Lock()


def count(key):
    with LOCK:
        STATS[key] += 1


def tokens(prompt, n):
    words = ["The", " answer", " to", " '", prompt[:20], "'", " is"]
    out = []
    for i in range(n):
        out.append(words[i] if i < len(words) else f" word{i}")
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path != "/stats":
            self.send_error(404)
            return
        with LOCK:
            body = json.dumps(STATS).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        if not self.path.endswith("/chat/completions"):
            self.send_error(404)
            return
        raw = self.rfile.read(int(self.headers.get("content-length", "0")))
        req = json.loads(raw)
        count("calls")
        prompt = req["messages"][-1]["content"]
        ident = "chatcmpl-" + hashlib.sha256(prompt.encode()).hexdigest()[:12]
        n = int(req.get("max_tokens") or ARGS.tokens)
        words = tokens(prompt, n)
        base = {"id": ident, "created": 1700000000, "model": req.get("model", "fake")}
        if not req.get("stream"):
            body = json.dumps({
                **base, "object": "chat.completion",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "".join(words)}}],
            }).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

        def send(data):
            chunk = f"data: {data}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()

        import time
        try:
            for i, w in enumerate(words):
                delta = {"content": w} if i else {"role": "assistant", "content": w}
                send(json.dumps({**base, "object": "chat.completion.chunk",
                                 "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}))
                time.sleep(ARGS.delay)
            send(json.dumps({**base, "object": "chat.completion.chunk",
                             "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
            send("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            count("finished")
        except (BrokenPipeError, ConnectionResetError):
            count("disconnects")
            self.close_connection = True


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--tokens", type=int, default=40)
    p.add_argument("--delay", type=float, default=0.05)
    ARGS = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    print(f"fake LLM listening on 127.0.0.1:{ARGS.port}", flush=True)
    server.serve_forever()
