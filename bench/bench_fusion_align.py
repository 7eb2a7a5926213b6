#!/usr/bin/env python3
"""Fusion with alignment on the server, batched against --no-batch: two
random 110M-size models of different vocabularies (Llama's SPM and GPT-2's
BPE) served with --fusion-align, 8 slots; 8 concurrent and 1 greedy
/v1/completions of 32 tokens, averaged fusion. Medians of ROUNDS rounds,
each server alone.

    bench/bench_fusion_align.py BUILD MODEL_A MODEL_B [ROUNDS] [THREADS]
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

build, model_a, model_b = sys.argv[1], sys.argv[2], sys.argv[3]
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
threads = sys.argv[5] if len(sys.argv) > 5 else "2"
extra = os.environ.get("SERVER_ARGS", "").split()


def serve(flags):
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([os.path.join(build, "llama_selfmod"), "serve", "--models", f"{model_a},{model_b}",
                             "--fusion-align", "--parallel", "8", "--threads", threads, "--ctx-size", "512",
                             "--port", "0", "--quiet", *flags, *extra], stdout=log, stderr=subprocess.STDOUT)
    for _ in range(600):
        log.seek(0)
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read())
        if found:
            return proc, int(found.group(1))
        time.sleep(0.1)
    proc.terminate()
    sys.exit("bench_fusion_align: the server did not start")


def measure(port, n):
    def ask(i, out):
        body = json.dumps({"prompt": f"Once upon a time {i}", "max_tokens": 32, "temperature": 0,
                           "selfmod": {"retract": 0, "fusion_mode": "average"}}).encode()
        for _ in range(600):  # 503 while the models load
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                             {"Content-Type": "application/json"})
                out.append(json.load(urllib.request.urlopen(req))["usage"]["completion_tokens"])
                return
            except urllib.error.HTTPError as e:
                if e.code != 503:
                    raise
                time.sleep(0.1)
    out: list = []
    t0 = time.perf_counter()
    ts = [threading.Thread(target=ask, args=(i, out)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(out) / (time.perf_counter() - t0)


def main() -> None:
    for name, flags in (("batched", []), ("--no-batch", ["--no-batch"])):
        proc, port = serve(flags)
        try:
            measure(port, 8)  # warm: the slots' sessions
            many = statistics.median(measure(port, 8) for _ in range(rounds))
            one = statistics.median(measure(port, 1) for _ in range(rounds))
            print(f"--fusion-align {name}: 8 streams {many:.1f} tokens/s, 1 stream {one:.1f}")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
