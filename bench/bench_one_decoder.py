#!/usr/bin/env python3
"""One decoding thread per server: 8 concurrent greedy /v1/completions on
model A of a `serve --models A,B` server, before and after one request to
B (B's batch decodes on A's thread), and with a kept-open connection that
asked for embeddings (they decode on a thread that ends with the request).
Each phase's tokens/s is the median of ROUNDS rounds; the phases should
agree (two OpenMP teams in one process once made the later ones 30% slower).

    bench/bench_one_decoder.py BUILD MODEL [ROUNDS] [THREADS]
"""
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

build, model = sys.argv[1], sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
threads = sys.argv[4] if len(sys.argv) > 4 else "2"
extra = os.environ.get("SERVER_ARGS", "").split()


def main() -> None:
    work = tempfile.mkdtemp()
    twin = os.path.join(work, "twin.gguf")  # the same weights under another name: a second model set
    shutil.copyfile(model, twin)
    log = open(os.path.join(work, "log"), "w+")
    server = subprocess.Popen([os.path.join(build, "llama_selfmod"), "serve", "--models", f"{model},{twin}",
                               "--parallel", "8", "--threads", threads, "--ctx-size", "512", "--port", "0",
                               "--quiet", *extra], stdout=log, stderr=subprocess.STDOUT)
    try:
        port = None
        for _ in range(600):
            log.seek(0)
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read())
            if found:
                port = int(found.group(1))
                break
            time.sleep(0.1)
        if port is None:
            sys.exit("bench_one_decoder: the server did not start")
        a = os.path.splitext(os.path.basename(model))[0]

        def ask(body, conn=None):
            data = json.dumps(body).encode()
            for _ in range(600):  # 503 while the models load
                try:
                    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data,
                                                 {"Content-Type": "application/json"})
                    return json.load(urllib.request.urlopen(req))
                except urllib.error.HTTPError as e:
                    if e.code != 503:
                        raise
                    time.sleep(0.1)

        def streams() -> float:
            out = []

            def one(i):
                out.append(ask({"model": a, "prompt": f"Once upon a time {i}", "max_tokens": 48, "temperature": 0,
                                "selfmod": {"retract": 0}})["usage"]["completion_tokens"])
            t0 = time.perf_counter()
            ts = [threading.Thread(target=one, args=(i,)) for i in range(8)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            return sum(out) / (time.perf_counter() - t0)

        def phase(name):
            streams()  # warm
            rates = [streams() for _ in range(rounds)]
            print(f"{name}: {statistics.median(rates):.1f} tokens/s (8 streams on A)")
        phase("A alone")
        ask({"model": "twin", "prompt": "Once", "max_tokens": 4})
        phase("after a request to B")
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("POST", "/v1/embeddings", json.dumps({"model": a, "input": "hello there"}),
                     {"Content-Type": "application/json"})
        conn.getresponse().read()
        phase("an embeddings connection open")
        conn.close()
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
