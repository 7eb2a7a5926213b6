#!/usr/bin/env python3
"""What a backtracking operator written in Python costs per token, against
the same decision in C (bench/run.sh runs it; python/selfmod over the build).

    bench/bench_python.py BUILD MODEL [N_TOKENS] [REPS] [THREADS]

Four runs of the same greedy generation, alternating, median of REPS each:
no operator; the built-in `never` (a C operator that never fires); a Python
operator that never fires; and one that reads each view's top-10 and signals.
"""
import os
import statistics
import sys
import time

build, model = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 512
reps = int(sys.argv[4]) if len(sys.argv) > 4 else 5
threads = int(sys.argv[5]) if len(sys.argv) > 5 else 1
os.environ.setdefault("SELFMOD_LIBRARY_PATH", build)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import selfmod  # noqa: E402


class Never(selfmod.Operator):
    def decide(self, view):
        return 0


class Reads(selfmod.Operator):
    """Looks at what backtracking-llm's operators look at."""

    def decide(self, view):
        return 1 if view.prob < 1e-9 and view.top[0][1] > 0.99 and view.signals["entropy"] > 100 else 0


m = selfmod.Model(model, threads=threads, temperature=0, selfmod=False, n_predict=n, stop_at_bos=False,
                  ignore_eos=True)
cases = {"no operator": [], "C operator (never)": ["never"], "Python operator (returns 0)": [Never()],
         "Python operator (reads top-10, signals)": [Reads()]}
times = {k: [] for k in cases}
tokens = {}
for _ in range(reps):
    for name, ops in cases.items():
        t = time.perf_counter()
        r = m.generate("Once upon a time", operators=list(ops))
        times[name].append(time.perf_counter() - t)
        tokens[name] = len(r.tokens)
base = statistics.median(times["no operator"])
c_cost = statistics.median(times["C operator (never)"])
print(f"{os.path.basename(model)}, {n} greedy tokens, {threads} thread(s), median of {reps}:")
print("| operator | ms per generation | per token over no operator |")
print("|---|---|---|")
for name in cases:
    med = statistics.median(times[name])
    per = (med - base) / max(1, tokens[name]) * 1e6
    print(f"| {name} | {med * 1e3:.1f} | {per:+.1f} µs |")
