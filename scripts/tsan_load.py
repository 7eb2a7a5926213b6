#!/usr/bin/env python3
"""Load for the ThreadSanitizer run (scripts/tsan.sh): eight clients at once
on one server, every kind of request, streams cut off mid-way. Every answer
must be 2xx (the requests are all valid); prints 'N failed' and exits 1 when
not."""
import json
import random
import sys
import threading
import urllib.request

PORT = int(sys.argv[1])
failed = []


def call(path, body=None, cut=False):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            r.read(200) if cut else r.read()  # cut: the client leaves mid-stream
    except Exception as e:  # noqa: BLE001 - counted and printed
        failed.append(f"{path}: {e}")


REQUESTS = [
    lambda i: call("/completion", {"prompt": "Once upon a time", "n_predict": 24, "temperature": 1, "seed": i}),
    lambda i: call("/v1/completions", {"prompt": "The dog", "max_tokens": 24, "stream": True, "selfmod": {}}),
    lambda i: call("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 20,
                                            "stream": True}, cut=True),
    lambda i: call("/completion", {"prompt": "Tom", "n_predict": 30, "stream": True}, cut=True),
    lambda i: [call(p) for p in ("/slots", "/metrics", "/health", "/props")],
    lambda i: (call("/tokenize", {"content": "hello world"}), call("/detokenize", {"tokens": [1, 2, 3]})),
    lambda i: call("/completion", {"prompt": "A cat", "n_predict": 20, "n_probs": 3,
                                   "selfmod": {"aggressive": True, "retract": True, "operators": ["ngram_overlap"]}}),
    lambda i: call("/v1/completions", {"prompt": ["a", "b", "c"], "max_tokens": 10}),
    lambda i: call("/loom/expand", {"prefix": "Once upon a time", "max_depth": 3, "beam_limit": 3}),
    lambda i: call("/completion", {"prompt": "Lily", "n_predict": 16, "grammar": "root ::= [a-z ]+"}),
]


def client(k):
    rnd = random.Random(k)
    for i in range(12):
        rnd.choice(REQUESTS)(i)


threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for f in failed:
    print(f)
print(f"{len(failed)} failed")
sys.exit(1 if failed else 0)
