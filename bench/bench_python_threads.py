#!/usr/bin/env python3
"""What the Python package's one decoding thread saves: 100 short greedy
`generate` calls (16 tokens) per process, in three processes:
  decoder    every call on the package's long-lived decoding thread (as shipped);
  per-call   every call on a thread of its own (a new OpenMP team each call);
  two-teams  calls on the caller's thread after the decoding thread has
             decoded once (two OpenMP teams alive in one process).

    bench/bench_python_threads.py BUILD MODEL [CALLS]
"""
import os
import subprocess
import sys
import threading
import time


def child(model: str, mode: str, calls: int) -> None:
    import selfmod
    m = selfmod.Model(model, threads=2)
    s = {"n_predict": 16, "temperature": 0}
    if mode == "per-call":
        def per_call(work, stop=None):
            out: list = []
            t = threading.Thread(target=lambda: out.append(work()))
            t.start()
            t.join()
            return out[0]
        selfmod._decode_call = per_call
    if mode == "two-teams":  # the decoding thread decodes once: its team stays
        m.generate("Once upon a time", **s)
        selfmod._decode_call = lambda work, stop=None: work()
    m.generate("Once upon a time", **s)  # warm
    t0 = time.perf_counter()
    for _ in range(calls):
        m.generate("Once upon a time", **s)
    print(f"{mode}: {(time.perf_counter() - t0) * 1000 / calls:.2f} ms per call")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    build, model = sys.argv[1], sys.argv[2]
    calls = sys.argv[3] if len(sys.argv) > 3 else "100"
    env = dict(os.environ, SELFMOD_LIBRARY_PATH=os.environ.get("SELFMOD_LIBRARY_PATH", build),
               PYTHONPATH=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    for mode in ("decoder", "per-call", "two-teams"):
        subprocess.run([sys.executable, __file__, "--child", model, mode, calls], env=env, check=True)


if __name__ == "__main__":
    main()
