"""A deterministic, offline stand-in for the two OpenAI endpoints mem0 calls.

mem0's server builds its Memory with the "openai" LLM and embedder; both
honour OPENAI_BASE_URL, so pointing that at this process keeps mem0's own
provider code in the loop and needs no patch to mem0 at all.

  POST /v1/embeddings        a bag-of-words hash vector per input (unit length),
                             as floats or base64 float32, `dimensions` honoured
  POST /v1/chat/completions  one JSON answer, chosen from the prompt's shape:
    - mem0 2.x "additive extraction" (a "## New Messages" section):
        {"memory": [{"id": "0", "text": <each user line>}, ...]}
    - mem0 1.x memory update (a ``` block holding a JSON list of new facts):
        {"memory": [{"id": "<n>", "text": <fact>, "event": "ADD"}, ...]}
    - mem0 1.x fact extraction (anything else):
        {"facts": [<each "user:" line of the last user message>]}

Every user line becomes exactly one memory, so a test knows how many memories
a request creates. Standard library only.

Usage: python fake_openai.py PORT
"""

import ast
import base64
import hashlib
import json
import math
import re
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_DIMS = 1536
WORD = re.compile(r"[0-9a-z]+")


def embed(text, dims):
    """Signed feature hashing of the words of `text`, normalised to length 1."""
    vec = [0.0] * dims
    for word in WORD.findall(str(text).lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        slot = int.from_bytes(digest[:4], "little") % dims
        vec[slot] += -1.0 if digest[4] & 1 else 1.0
    norm = math.sqrt(sum(x * x for x in vec))
    if norm == 0.0:
        vec[0], norm = 1.0, 1.0
    return [x / norm for x in vec]


def user_lines(text):
    """The content of every `user: ...` line of `text` (mem0's parse_messages)."""
    found = []
    for line in str(text).splitlines():
        line = line.strip()
        if line.lower().startswith("user:"):
            content = line[5:].strip()
            if content:
                found.append(content)
    return found


def section(text, title):
    """The body of a markdown `## title` section, up to the next heading."""
    start = text.find("## " + title)
    if start < 0:
        return None
    body = text[start + len(title) + 3:]
    end = re.search(r"^#{1,2} ", body, re.M)
    return body[: end.start()] if end else body


def new_messages(body):
    """mem0 2.x renders new messages as `user: ...` lines or as a JSON list."""
    lines = user_lines(body)
    if lines:
        return lines
    try:
        items = json.loads(body.strip())
    except ValueError:
        return []
    return [str(m.get("content")) for m in items
            if isinstance(m, dict) and m.get("role") == "user" and m.get("content")]


def fenced_fact_list(text):
    """The last ``` block holding a JSON list of strings (mem0 1.x update prompt)."""
    for block in reversed(re.findall(r"```(?:json)?\s*(.*?)```", text, re.S)):
        value = None
        for parse in (json.loads, ast.literal_eval):  # 1.x prints the list with repr()
            try:
                value = parse(block.strip())
                break
            except (ValueError, SyntaxError):
                continue
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return None


def answer(messages):
    contents = [str(m.get("content") or "") for m in messages if isinstance(m, dict)]
    everything = "\n".join(contents)
    users = [str(m.get("content") or "") for m in messages
             if isinstance(m, dict) and m.get("role") == "user"]
    last_user = users[-1] if users else everything
    # Only the user turn: the system prompt also talks about "## New Messages".
    fresh = section(last_user, "New Messages")
    if fresh is not None:
        return {"memory": [{"id": str(i), "text": t} for i, t in enumerate(new_messages(fresh))]}
    facts = fenced_fact_list(everything)
    if facts is not None and "memory" in everything.lower():
        return {"memory": [{"id": str(900 + i), "text": f, "event": "ADD"}
                           for i, f in enumerate(facts)]}
    return {"facts": user_lines(last_user)}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet; mem0's own log says enough
        pass

    def send_json(self, status, value):
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            self.send_json(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
        else:
            self.send_json(404, {"error": {"message": "not here"}})

    def do_POST(self):
        size = int(self.headers.get("Content-Length") or 0)
        try:
            req = json.loads(self.rfile.read(size) or b"{}")
        except ValueError:
            return self.send_json(400, {"error": {"message": "bad json"}})
        path = self.path.split("?", 1)[0].rstrip("/")
        if path.endswith("/embeddings"):
            inputs = req.get("input")
            if not isinstance(inputs, list):
                inputs = [inputs]
            dims = int(req.get("dimensions") or DEFAULT_DIMS)
            data = []
            for i, text in enumerate(inputs):
                vec = embed(text, dims)
                if req.get("encoding_format") == "base64":
                    vec = base64.b64encode(struct.pack("<%df" % dims, *vec)).decode()
                data.append({"object": "embedding", "index": i, "embedding": vec})
            return self.send_json(200, {"object": "list", "data": data, "model": req.get("model", "fake"),
                                        "usage": {"prompt_tokens": 1, "total_tokens": 1}})
        if path.endswith("/chat/completions"):
            content = json.dumps(answer(req.get("messages") or []))
            return self.send_json(200, {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": req.get("model", "fake"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            })
        return self.send_json(404, {"error": {"message": "not here"}})


def main():
    port = int(sys.argv[1])
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
