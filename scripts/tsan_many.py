#!/usr/bin/env python3
"""Python's generate_many and a chat turn for the ThreadSanitizer run (scripts/tsan.sh):
every run on a batch parses its flags and generates on its own thread."""
import os
import sys

import selfmod

with selfmod.Model(os.path.join(os.environ["SM_MODELS"], "stories260K.gguf"), threads=1) as m:
    for _ in range(3):
        prompts = [f"Once upon a time {i}" for i in range(120)]
        many = m.generate_many(prompts, parallel=8, n_predict=2, temperature=0, top_k=7, seed=3)
        assert [len(r.tokens) for r in many] == [2] * len(prompts)
    with m.chat() as chat:
        chat.send("hello", n_predict=4)
print("generate_many: ok")
