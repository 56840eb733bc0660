#!/usr/bin/env python3
"""A slow report API, the kind that ends in a 504: POST /reports/<name>
takes --delay seconds (45 by default) to answer 201 with a CSV report.

    python3 slow_report_service.py [--port 9000] [--delay 45]

Standard library only. It knows nothing of replyd: replyd sits in front
of it (see README.md).
"""

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Reports(BaseHTTPRequestHandler):
    delay = 45.0

    def do_POST(self):
        url = urlparse(self.path)
        if not url.path.startswith("/reports/"):
            self.send_error(404, "no such endpoint")
            return
        name = url.path[len("/reports/"):] or "report"
        month = parse_qs(url.query).get("month", ["this month"])[0]
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        options = json.loads(body) if body else {}
        region = options.get("region", "all")
        time.sleep(self.delay)  # the slow part
        csv = f"report,month,region,total\n{name},{month},{region},42\n".encode()
        try:
            self.send_response(201)
            self.send_header("content-type", "text/csv")
            self.send_header("content-disposition", f'attachment; filename="{name}.csv"')
            self.send_header("content-length", str(len(csv)))
            self.end_headers()
            self.wfile.write(csv)
        except (BrokenPipeError, ConnectionResetError):
            print(f"slow-reports: the client gave up before report {name!r} was ready", flush=True)

    def log_message(self, fmt, *args):
        print("slow-reports:", fmt % args, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--delay", type=float, default=45.0)
    args = ap.parse_args()
    Reports.delay = args.delay
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Reports)
    print(f"slow-reports: listening on http://127.0.0.1:{args.port} "
          f"(each report takes {args.delay:g} s)", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
