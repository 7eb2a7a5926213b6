#!/usr/bin/env python3
"""llama-server's command line, run as `llama_selfmod serve`.

llama.cpp's server test suite (tools/server/tests, run by tests/test_peer.sh)
starts the program named by LLAMA_SERVER_BIN_PATH with llama-server's flags.
This maps them onto llama_selfmod serve: models the suite would download
become the shared models (its default test model is the same stories260K
file), --ctx-size is llama-server's total over all slots, and flags that
only tune llama.cpp's own server (batching, flash attention, UI) are
dropped. Anything else is passed through, so a flag the server lacks fails
the test that needs it, visibly.
"""
import os
import subprocess
import sys

SM_BIN = os.environ["SM_BIN"]
MODELS = os.environ["SM_MODELS"]
STORIES = os.path.join(MODELS, "stories260K.gguf")



def stories_infill():
    """The suite's stories260K-infill: stories260K with fill-in-the-middle
    tokens named (three byte tokens no story uses), made once per run."""
    folder = os.environ.get("LLAMA_CACHE", "/tmp")
    path = os.path.join(folder, "stories260K-infill.gguf")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        tool, tmp = os.path.join(os.path.dirname(SM_BIN), "add_fim_tokens"), f"{path}.{os.getpid()}"
        subprocess.run([tool, STORIES, tmp, "3", "4", "5"], check=True, stdout=subprocess.DEVNULL)
        os.replace(tmp, path)
    return path


# flag -> takes a value. Dropped: llama.cpp's own tuning and download
# switches, and what only the presets of out-of-scope tests ask for
# (embeddings, reranking, LoRA, speculation, vision, routers, tools), which
# the suite starts once at session start to fetch their models.
DROPPED = {
    "--offline": False, "--cont-batching": False, "--swa-full": False,
    "--ubatch-size": True, "-fa": True, "--no-slots": False,
    "--no-models-autoload": False, "--no-mmproj": False,
    "--embedding": False, "--reranking": False, "--pooling": True, "--lora": True, "--model-draft": True,
    "--spec-type": True, "--spec-draft-n-max": True, "--spec-draft-n-min": True, "--spec-synth-len": True,
    "--spec-synth-rates": True, "--mmproj-url": True, "--media-path": True, "--models-dir": True,
    "--models-max": True, "--models-preset": True, "--cache-ram": True,
    "--sleep-idle-seconds": True, "--no-cache-idle-slots": False, "--ui-mcp-proxy": False, "--tools": True,
    "--tools-runtime": True, "--mcp-servers-config": True, "--mcp-servers-json": True, "--backend_sampling": False,
    "--reasoning-format": True, "--reasoning": True, "-ctk": True, "-ctv": True, "--grp-attn-n": True,
    "--grp-attn-w": True, "--model-url": True,
}
# llama-server name -> ours (same value)
RENAMED = {"-np": "--parallel", "-m": "--model", "-c": "--ctx-size", "-n": "--n-predict"}


def main(argv):
    out, model, hf_repo, hf_file, ctx, parallel = [], None, None, None, None, 1
    i = 0
    while i < len(argv):
        a = argv[i]
        a = RENAMED.get(a, a)
        value = argv[i + 1] if i + 1 < len(argv) else None
        if a in DROPPED:
            i += 2 if DROPPED[a] else 1
            continue
        if a == "--model":
            model, i = value, i + 2
        elif a == "--hf-repo":
            hf_repo, i = value, i + 2
        elif a == "--hf-file":
            hf_file, i = value, i + 2
        elif a == "--ctx-size":
            ctx, i = int(value), i + 2
        elif a == "--metrics":
            out.append(a)
            i += 1
        elif a == "--parallel":
            parallel, i = int(value), i + 2
            out += ["--parallel", value]
        else:
            out.append(a)
            i += 1
    if model is None and (hf_repo or "").endswith("stories260K-infill"):
        model = stories_infill()
    if model is None:  # every other preset the suite downloads (or a model-less router) becomes stories260K
        model = STORIES
    if model is not None:
        out = ["--model", model] + out
    # llama-server gives a model without a chat template chatml; ours gets
    # the plain "User: ... Assistant:" form unless asked (stories260K has none).
    if model == STORIES and "--chat-template" not in out and "--chat-template-file" not in out:
        out += ["--chat-template", "chatml"]
    if "--cors-origins" not in out:  # llama-server answers every origin unless told otherwise; we do not
        out += ["--cors-origins", "*"]
    if ctx is not None and "--kv-unified" in out:  # one pool: each slot may use all of it
        out += ["--ctx-size", str(ctx)]
    elif ctx is not None:  # llama-server's --ctx-size is shared by its slots
        out += ["--ctx-size", str(max(ctx // parallel, 64))]
    os.execv(SM_BIN, [SM_BIN, "serve", "--quiet"] + out)


if __name__ == "__main__":
    main(sys.argv[1:])
