#!/usr/bin/env python3
"""Model.generate_many(prompts, parallel=8) against generate() one prompt at
a time: the same greedy generations, same model, same process, alternating
rounds, medians compared (bench/run.sh runs it; python/selfmod over the build).

    bench/bench_python_many.py BUILD MODEL [N_PROMPTS] [N_PREDICT] [ROUNDS]
"""
import os
import sys
import time

os.environ.setdefault("SELFMOD_LIBRARY_PATH", sys.argv[1])
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
import selfmod  # noqa: E402

PROMPTS = ["Once upon a time", "The little dog", "One day, Lily went to the park", "Tom and Sue",
           "The sun was hot", "A big red ball", "Mom said", "Once there was a cat"]


def main() -> None:
    path = sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    n_predict = int(sys.argv[4]) if len(sys.argv) > 4 else 32
    rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    prompts = [PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS)) for i in range(n)]
    settings = {"n_predict": n_predict, "temperature": 0, "ctx_size": 256, "ignore_eos": True}
    with selfmod.Model(path, threads=2) as m:
        m.generate(prompts[0], n_predict=4)  # warm
        one, many = [], []
        for _ in range(rounds):  # alternating, the medians compared
            t0 = time.perf_counter()
            alone = [m.generate(p, **settings) for p in prompts]
            one.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            together = m.generate_many(prompts, parallel=8, **settings)
            many.append(time.perf_counter() - t0)
            same = sum(a.tokens == b.tokens for a, b in zip(alone, together))
        one.sort()
        many.sort()
        a, b = one[len(one) // 2], many[len(many) // 2]
        print(f"python generate x{n} ({n_predict} tokens): {a:.2f} s; generate_many parallel=8: {b:.2f} s "
              f"({a / b:.2f}x); {same} of {n} outputs token for token the same")


if __name__ == "__main__":
    main()
