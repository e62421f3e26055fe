#!/usr/bin/env python3
"""The origin for scripts/bench-proxy-edge: a 1.8 KB cacheable page, an
uncacheable page that takes 200 ms, and /count (requests seen, by path)."""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PAGE = ("<!doctype html><title>page</title>" + "x" * 1800).encode()
counts = {}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/count":
            with lock:
                body = json.dumps(counts).encode()
            return self.reply(body, "no-store")
        with lock:
            counts[path] = counts.get(path, 0) + 1
        if path == "/private":
            time.sleep(0.2)
            return self.reply(b"yours", "private")
        return self.reply(PAGE, "max-age=600")

    def reply(self, body, cc):
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cc)
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 1024
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
