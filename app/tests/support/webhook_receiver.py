"""An HTTP receiver for ddms' notification channels, written independently of ddms' code.

Usage: python3 webhook_receiver.py LOG_FILE SECRET [PORT]

Listens on 127.0.0.1 (PORT, else a free port), prints "ready PORT", then serves until killed.
A receiver started again on the same PORT and LOG_FILE appends to what the first one recorded. Every
request is appended to LOG_FILE as one JSON line: path, lower-cased headers, the body (parsed
JSON, else text), whether X-Ddms-Signature is the HMAC-SHA256 of the raw body with SECRET
(null without the header), and the errors found by the shape checks below.

What a request gets depends on its path:
  /ok                    204
  /status/CODE?times=N&retry_after=V
                         CODE (with Retry-After: V when given) for the first N requests
                         (default: all) to this exact path and query, then 204
  /slow/SECONDS          waits, then 204
  /redirect              302 to /redirected
  /discord/...           checks Discord's webhook JSON shape: 204, or 400 with the errors
  /discord-429/...       429 with Discord's JSON body {"retry_after": 2.5, "global": false}
  /slack/...             checks Slack's Block Kit shape: 200 "ok", or 400 "invalid_blocks"
"""

import hashlib
import hmac
import json
import sys
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LOG_FILE = sys.argv[1]
SECRET = sys.argv[2].encode()
PORT = int(sys.argv[3]) if len(sys.argv) > 3 else 0
LOCK = threading.Lock()
SEEN = {}


def check_discord(body):
    """Discord's documented limits for execute-webhook with embeds."""
    errors = []
    if not isinstance(body, dict):
        return ["body is not an object"]
    content = body.get("content")
    if content is not None and (not isinstance(content, str) or len(content) > 2000):
        errors.append("content must be null or a string of at most 2000")
    embeds = body.get("embeds")
    if not isinstance(embeds, list) or not 1 <= len(embeds) <= 10:
        return errors + ["embeds must be a list of 1 to 10"]
    mentions = body.get("allowed_mentions")
    if mentions is not None:
        parse = mentions.get("parse") if isinstance(mentions, dict) else None
        if not isinstance(parse, list) or any(p not in ("roles", "users", "everyone") for p in parse):
            errors.append("allowed_mentions.parse must list roles/users/everyone")
    for i, embed in enumerate(embeds):
        where = f"embeds[{i}]"
        total = 0
        for key, limit in (("title", 256), ("description", 4096)):
            value = embed.get(key)
            if value is not None:
                if not isinstance(value, str) or len(value) > limit:
                    errors.append(f"{where}.{key} must be a string of at most {limit}")
                else:
                    total += len(value)
        color = embed.get("color")
        if color is not None and (not isinstance(color, int) or isinstance(color, bool) or not 0 <= color <= 0xFFFFFF):
            errors.append(f"{where}.color must be an integer 0..0xFFFFFF")
        url = embed.get("url")
        if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
            errors.append(f"{where}.url must be an http(s) URL")
        stamp = embed.get("timestamp")
        if stamp is not None:
            try:
                datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            except (AttributeError, ValueError):
                errors.append(f"{where}.timestamp must be ISO 8601")
        footer = embed.get("footer")
        if footer is not None:
            if not isinstance(footer, dict) or not isinstance(footer.get("text"), str) or len(footer["text"]) > 2048:
                errors.append(f"{where}.footer.text must be a string of at most 2048")
            else:
                total += len(footer["text"])
        fields = embed.get("fields", [])
        if not isinstance(fields, list) or len(fields) > 25:
            errors.append(f"{where}.fields must be a list of at most 25")
            fields = []
        for j, field in enumerate(fields):
            name, value = field.get("name"), field.get("value")
            if not isinstance(name, str) or not 1 <= len(name) <= 256:
                errors.append(f"{where}.fields[{j}].name must be 1 to 256 characters")
            if not isinstance(value, str) or not 1 <= len(value) <= 1024:
                errors.append(f"{where}.fields[{j}].value must be 1 to 1024 characters")
            if "inline" in field and not isinstance(field["inline"], bool):
                errors.append(f"{where}.fields[{j}].inline must be a boolean")
            total += len(name or "") + len(value or "")
        if total > 6000:
            errors.append(f"{where} has {total} characters, more than 6000")
    return errors


def check_text_object(obj, where, limit, kinds=("plain_text", "mrkdwn")):
    if not isinstance(obj, dict) or obj.get("type") not in kinds:
        return [f"{where} must be a text object of type {'/'.join(kinds)}"]
    text = obj.get("text")
    if not isinstance(text, str) or not 1 <= len(text) <= limit:
        return [f"{where}.text must be 1 to {limit} characters"]
    if "emoji" in obj and obj["type"] != "plain_text":
        return [f"{where}.emoji is only for plain_text"]
    return []


def check_slack(body):
    """Slack's documented Block Kit limits for the blocks an incoming webhook accepts."""
    errors = []
    if not isinstance(body, dict):
        return ["body is not an object"]
    if not isinstance(body.get("text"), str) or not body["text"]:
        errors.append("text (the notification fallback) must be a non-empty string")
    blocks = body.get("blocks")
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= 50:
        return errors + ["blocks must be a list of 1 to 50"]
    for i, block in enumerate(blocks):
        where = f"blocks[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "header":
            errors += check_text_object(block.get("text"), f"{where}.text", 150, ("plain_text",))
        elif kind == "section":
            if "text" not in block and "fields" not in block:
                errors.append(f"{where} needs text or fields")
            if "text" in block:
                errors += check_text_object(block["text"], f"{where}.text", 3000)
            if "fields" in block:
                fields = block["fields"]
                if not isinstance(fields, list) or not 1 <= len(fields) <= 10:
                    errors.append(f"{where}.fields must be a list of 1 to 10")
                else:
                    for j, f in enumerate(fields):
                        errors += check_text_object(f, f"{where}.fields[{j}]", 2000)
        elif kind == "actions":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 25:
                errors.append(f"{where}.elements must be a list of 1 to 25")
                continue
            for j, e in enumerate(elements):
                if e.get("type") != "button":
                    errors.append(f"{where}.elements[{j}] is not a button")
                    continue
                errors += check_text_object(e.get("text"), f"{where}.elements[{j}].text", 75, ("plain_text",))
                url = e.get("url")
                if url is not None and not (isinstance(url, str) and len(url) <= 3000):
                    errors.append(f"{where}.elements[{j}].url must be at most 3000 characters")
        elif kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
                errors.append(f"{where}.elements must be a list of 1 to 10")
                continue
            for j, e in enumerate(elements):
                errors += check_text_object(e, f"{where}.elements[{j}]", 3000)
        elif kind == "divider":
            pass
        else:
            errors.append(f"{where}.type {kind!r} is not a known block type")
    return errors


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        given = self.headers.get("X-Ddms-Signature")
        signature_valid = None
        if given is not None:
            expected = "sha256=" + hmac.new(SECRET, raw, hashlib.sha256).hexdigest()
            signature_valid = hmac.compare_digest(given, expected)
        path = urlsplit(self.path).path
        errors = []
        if path.startswith("/discord/"):
            errors = check_discord(body)
        elif path.startswith("/slack/"):
            errors = check_slack(body)
        record = {
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
            "signature_valid": signature_valid,
            "errors": errors,
        }
        with LOCK:
            SEEN[self.path] = SEEN.get(self.path, 0) + 1
            count = SEEN[self.path]
            with open(LOG_FILE, "a") as log:
                log.write(json.dumps(record) + "\n")
        self.respond(path, count, errors)

    def respond(self, path, count, errors):
        query = parse_qs(urlsplit(self.path).query)
        parts = path.strip("/").split("/")
        if path == "/ok":
            self.answer(204)
        elif parts[0] == "status" and len(parts) == 2:
            times = int(query.get("times", ["1000000"])[0])
            if count > times:
                self.answer(204)
                return
            headers = [("Retry-After", query["retry_after"][0])] if "retry_after" in query else []
            self.answer(int(parts[1]), b"receiver says no", headers)
        elif parts[0] == "slow":
            time.sleep(float(parts[1]))
            self.answer(204)
        elif path == "/redirect":
            self.answer(302, b"", [("Location", "/redirected")])
        elif parts[0] == "discord":
            if errors:
                self.answer(400, json.dumps({"message": "Invalid Form Body", "errors": errors}).encode())
            else:
                self.answer(204)
        elif parts[0] == "discord-429":
            body = json.dumps({"message": "You are being rate limited.", "retry_after": 2.5, "global": False})
            self.answer(429, body.encode(), [("Content-Type", "application/json")])
        elif parts[0] == "slack":
            if errors:
                self.answer(400, b"invalid_blocks: " + "; ".join(errors).encode())
            else:
                self.answer(200, b"ok")
        else:
            self.answer(404, b"no such path")


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
server.daemon_threads = True
print(f"ready {server.server_address[1]}", flush=True)
server.serve_forever()
