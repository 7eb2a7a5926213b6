"""The Python package (python/selfmod) against the program and the shared models.

Run by tests/test_python.sh (SM_BIN, SM_MODELS, SELFMOD_LIBRARY_PATH set)."""
import json
import os
import subprocess
import sys
import threading

import pytest

import selfmod

MODELS = os.environ.get("SM_MODELS", os.path.join(os.path.dirname(__file__), "../../../shared/models"))
BIN = os.environ.get("SM_BIN", os.path.join(os.path.dirname(__file__), "../../build/llama_selfmod"))
STORIES = os.path.join(MODELS, "stories260K.gguf")
SALTY = os.path.join(MODELS, "llama2xs-salty-280K.gguf")
CHAT = os.path.join(MODELS, "cardputer-chat-3M.gguf")
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def stories():
    with selfmod.Model(STORIES, threads=1) as m:
        yield m


def cli_events(*args, stdin=None):
    """The program's --json-stream events for these flags."""
    out = subprocess.run([BIN, "--json-stream", "--no-memory", "--threads", "1", *args], input=stdin,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def kept_pieces(events):
    """The pieces of the tokens a stream kept: a retraction or backtrack
    resumes at its token_index."""
    kept = []
    for e in events:
        if e["type"] == "token":
            del kept[e["index"]:]
            kept.append(e["piece"])
        elif e["type"] in ("retraction", "backtrack"):
            del kept[e["token_index"]:]
    return kept


def done_of(events):
    return [e for e in events if e["type"] == "done"]


# -- the same generation as the program --------------------------------------

@pytest.mark.parametrize("settings,flags", [
    ({"n_predict": 24, "temperature": 0, "selfmod": False}, ["-n", "24", "-t", "0", "--no-selfmod"]),
    # the default policy, sampled, at a seed
    ({"n_predict": 48, "seed": 7}, ["-n", "48", "--seed", "7"]),
    # the fixed policy retracting, hot, with a built-in operator
    ({"n_predict": 48, "seed": 11, "temperature": 1.4, "aggressive": True, "retract": True,
      "operators": ["probability_threshold:min_probability=0.05"]},
     ["-n", "48", "--seed", "11", "-t", "1.4", "--aggressive", "--retract",
      "--operator", "probability_threshold:min_probability=0.05"]),
    # samplers by llama.cpp's names, stops repeated
    ({"n_predict": 40, "seed": 5, "mirostat": 2, "stop": [".", "!"]},
     ["-n", "40", "--seed", "5", "--mirostat", "2", "--stop", ".", "--stop", "!"]),
])
def test_generation_equals_the_programs(stories, settings, flags):
    r = stories.generate(PROMPT, **settings)
    ev = cli_events("-m", STORIES, "-p", PROMPT, *flags)
    cli_done = done_of(ev)[0]
    assert r.text == cli_done["text"]
    assert r.stop_reason == cli_done["stop_reason"]
    assert r.n_retractions == cli_done["n_retractions"] and r.n_backtracks == cli_done["n_backtracks"]
    # every event but the timings: the same stream
    strip = lambda es: [{k: v for k, v in e.items() if k not in ("timings", "model", "seed", "parameters")}
                        for e in es]
    assert strip(r.events) == strip(ev)
    kept = [e["token"] for e in ev if e["type"] == "token"]
    assert len(r.tokens) == cli_done["n_tokens"] and set(r.tokens) <= set(kept)


def test_model_defaults_and_call_settings(stories):
    with selfmod.Model(STORIES, threads=1, temperature=0, selfmod=False, n_predict=12) as m:
        a = m.generate(PROMPT)
        b = m.generate(PROMPT, n_predict=4)          # the call replaces a default by name
        c = m.generate(PROMPT, selfmod=True, seed=1)  # a switch the defaults turned off, on again
    assert len(a.tokens) == 12 and len(b.tokens) == 4 and a.text.startswith(b.text)
    assert c.events[0]["parameters"]["selfmod"] is True
    assert a.events[0]["parameters"]["selfmod"] is False


def test_stream_yields_as_it_goes_and_stops_when_closed(stories):
    tokens = []
    for e in stories.stream(PROMPT, n_predict=200, seed=3, stop_at_bos=False):
        if e["type"] == "token":
            tokens.append(e["token"])
        if len(tokens) == 5:
            break
    assert len(tokens) == 5
    r = stories.generate(PROMPT, n_predict=6, seed=3)  # the model is free again
    assert len(r.tokens) == 6
    kinds = [e["type"] for e in stories.stream(PROMPT, n_predict=6, seed=3)]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("token") >= 6


# -- operators written in Python ---------------------------------------------

class BanWord(selfmod.Operator):
    """backtracking-llm style: remove the token that completes a word."""

    def __init__(self, word):
        self.word, self.pieces = word, []

    def decide(self, view):
        self.pieces.append(view.piece)
        return 1 if self.word in "".join(self.pieces[-6:]) else 0

    def on_backtrack(self, n):
        del self.pieces[len(self.pieces) - n:]

    def reset(self):
        self.pieces = []


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_python_operator_that_bans_a_word_never_lets_it_through(stories, seed):
    word = " Lily"
    plain = stories.generate(PROMPT, n_predict=80, seed=seed, temperature=0.8)
    ban = BanWord(word)
    r = stories.generate(PROMPT, n_predict=80, seed=seed, temperature=0.8, operators=[ban])
    assert word not in r.text
    if word in plain.text:
        assert r.n_backtracks > 0
    # exact rollback: what it holds is the pieces of the tokens kept
    assert ban.pieces == kept_pieces(r.events)


def test_python_operator_sees_the_c_view(stories):
    seen = []

    class Look:
        def decide(self, view):
            seen.append(view)
            assert view.logits is not None and len(view.logits) == view.n_vocab == 512
            p = max(range(view.n_vocab), key=lambda i: view.logits[i])
            assert p == view.top[0][0] == view.signals["top1_token"]
            return 0
    r = stories.generate(PROMPT, n_predict=8, temperature=0, selfmod=False, operators=[Look()])
    assert [v.token for v in seen] == r.tokens
    assert [v.position for v in seen] == list(range(8))
    assert all(abs(sum(p for _, p, _ in v.top) - 1) < 0.5 and v.top == sorted(v.top, key=lambda t: -t[1])
               for v in seen)


def test_a_python_operator_equals_the_same_c_operator(stories):
    """probability_threshold in Python decides as the built-in does."""
    class Threshold:
        def decide(self, view):
            return 1 if view.prob < 0.1 else 0
    a = stories.generate(PROMPT, n_predict=60, seed=9, temperature=1.2, selfmod=False, operators=[Threshold()])
    b = stories.generate(PROMPT, n_predict=60, seed=9, temperature=1.2, selfmod=False,
                         operators=["probability_threshold:min_probability=0.1"])
    assert a.text == b.text and a.n_backtracks == b.n_backtracks > 0


def test_an_exception_in_an_operator_reaches_the_caller(stories):
    class Broken:
        def decide(self, view):
            raise ValueError("broken operator")
    with pytest.raises(ValueError, match="broken operator"):
        stories.generate(PROMPT, n_predict=8, operators=[Broken()])
    class Bad:
        def decide(self, view):
            return "no"
    with pytest.raises(selfmod.SelfmodError, match="decide returned 'no'"):
        stories.generate(PROMPT, n_predict=8, operators=[Bad()])
    assert len(stories.generate(PROMPT, n_predict=3).tokens) == 3


def test_a_python_stage_forces_and_stops(stories):
    there = stories.tokenize("there", add_special=False)  # SentencePiece: one token, " there"
    assert len(there) == 1

    class Stage(selfmod.Stage):
        def before_sample(self, loop, knobs):
            if loop.n_generated == 0:
                knobs.forced = there[0]

        def after_token(self, loop, view):
            if loop.n_generated >= 5:
                loop.stop("five tokens")
    r = stories.generate(PROMPT, n_predict=40, temperature=0, stages=[Stage()])
    assert r.tokens[0] == there[0] and r.text.startswith(" there")
    assert len(r.tokens) == 5 and r.stop_reason == "stage"
    plain = stories.generate(PROMPT, n_predict=5, temperature=0)
    assert plain.tokens[0] != there[0]


# -- many prompts on one batch ----------------------------------------------

MANY = ["Once upon a time", "The little dog", "Tom and Sue", "The sun was hot", "A big red ball"]


@pytest.mark.parametrize("settings", [
    {"n_predict": 32},                                   # the default policy, retracting loops
    {"n_predict": 32, "seed": 5, "temperature": 0.8},    # sampled: each its own random state
    {"n_predict": 24, "temperature": 0, "operators": ["probability_threshold:min_probability=0.2"]},
])
def test_generate_many_equals_generate_one_by_one(stories, settings):
    # five prompts through three sequences: two take a finished one's place
    many = stories.generate_many(MANY, parallel=3, **settings)
    assert len(many) == len(MANY)
    for prompt, r in zip(MANY, many):
        alone = stories.generate(prompt, **settings)
        assert r.tokens == alone.tokens, prompt
        assert r.text == alone.text
        assert r.n_retractions == alone.n_retractions and r.n_backtracks == alone.n_backtracks


def test_samplers_list_runs_only_those(stories):
    # llama.cpp's sampler list as a Python list: without "temperature" the draw is at T 1,
    # without "penalties" no repeat penalty, whatever the other settings say
    base = {"n_predict": 32, "seed": 5, "selfmod": False, "min_p": 0.0, "top_p": 1.0, "top_k": 0}
    listed = stories.generate(PROMPT, samplers=["top_k", "top_p", "min_p"], temperature=3.0, **base)
    plain = stories.generate(PROMPT, temperature=1.0, repeat_penalty=1.0, **base)
    assert listed.tokens == plain.tokens
    assert listed.tokens != stories.generate(PROMPT, temperature=3.0, repeat_penalty=1.0, **base).tokens
    with pytest.raises(selfmod.SelfmodError, match="'top_k' after 'temperature'"):
        stories.generate(PROMPT, samplers=["temperature", "top_k"], **base)


def test_generate_many_parses_each_runs_flags_apart(stories):
    # every run on a batch parses its flags on its own thread, and getopt's
    # place is the C library's one: unlocked, runs read each other's flags
    # ("give the prompt", "invalid value '-gpu-layers' for --n-predict")
    prompts = [f"Once upon a time {i}" for i in range(240)]
    many = stories.generate_many(prompts, parallel=8, n_predict=2, temperature=0, top_k=7)
    assert [(len(r.tokens), r.stop_reason) for r in many] == [(2, "n_predict")] * len(prompts)
    for i in (0, 97, 239):
        assert many[i].tokens == stories.generate(prompts[i], n_predict=2, temperature=0, top_k=7).tokens


def test_generate_many_runs_on_a_batch_and_checks_its_input(stories):
    assert stories.generate_many([]) == []
    # sessions on a batch cannot observe attention (its contexts use flash attention): said by name
    with pytest.raises(selfmod.SelfmodError, match="on a batch cannot use attention introspection"):
        stories.generate_many(MANY[:2], parallel=2, introspect_layers=[0], introspect_attention=True)
    # lookahead branches share their session's cells in one pool
    look = {"n_predict": 16, "temperature": 0, "lookahead": 2, "lookahead_entropy": 0.5}
    many = stories.generate_many(MANY[:3], parallel=3, **look)
    alone = [stories.generate(p, **look) for p in MANY[:3]]
    assert [r.tokens for r in many] == [r.tokens for r in alone]

    def chosen(r):
        return [(e["token_index"], e["lookahead"]["chosen"]) for e in r.events if e.get("source") == "lookahead"]
    assert [chosen(r) for r in many] == [chosen(r) for r in alone]
    assert sum(len(chosen(r)) for r in many) > 3
    for bad in (0, 257, 2.0, True):
        with pytest.raises(selfmod.SelfmodError, match="parallel"):
            stories.generate_many(MANY, parallel=bad)
    with pytest.raises(selfmod.SelfmodError, match="str"):
        stories.generate_many(["a", 3])
    for name, bad in (("ctx_size", "big"), ("threads", -1), ("lookahead", 2.5)):
        with pytest.raises(selfmod.SelfmodError, match=name):
            stories.generate_many(MANY[:2], **{name: bad})
    with pytest.raises(selfmod.SelfmodError, match="--temperature|temperature"):
        stories.generate_many(MANY, temperature="hot")
    # fusion too: each model's sequences in the batch's context for it
    with selfmod.Model(models=[STORIES, SALTY], threads=1) as m:
        fused = m.generate_many(MANY[:3], parallel=3, n_predict=16, seed=4, fusion_mode="average")
        assert [r.text for r in fused] == [m.generate(p, n_predict=16, seed=4, fusion_mode="average").text
                                           for p in MANY[:3]]


def test_one_decoding_thread_at_a_time(stories):
    """Calls decode on one long-lived thread (a new one per call would build
    an OpenMP team per call), and generate_many retires it while its batch's
    thread decodes: two decoding threads at once make OpenMP's barriers
    sleep, several times slower."""
    seen = []

    class Where(selfmod.Operator):
        def decide(self, view):
            seen.append((threading.current_thread().name, threading.get_ident(),
                         sum(t.name == "selfmod-decoder" for t in threading.enumerate())))
            return 0
    stories.generate(PROMPT, n_predict=3, operators=[Where()])
    stories.generate(PROMPT, n_predict=3, operators=[Where()])
    assert {name for name, _, _ in seen} == {"selfmod-decoder"}
    assert len({ident for _, ident, _ in seen}) == 1
    seen.clear()
    stories.generate_many(MANY[:2], parallel=2, n_predict=3, operators=[Where()])
    assert {name for name, _, _ in seen} == {"selfmod-batch"}
    assert {n for _, _, n in seen} == {0}  # no decoding thread beside the batch's
    assert stories.generate(PROMPT, n_predict=3).tokens


# -- fusion, chat, the tree, metrics ------------------------------------------

def test_fusion_equals_the_programs():
    with selfmod.Model(models=[STORIES, SALTY], threads=1) as m:
        r = m.generate(PROMPT, n_predict=30, seed=4, fusion_mode="average")
    ev = cli_events("--models", f"{STORIES},{SALTY}", "-p", PROMPT, "-n", "30", "--seed", "4",
                    "--fusion-mode", "average")
    assert r.text == done_of(ev)[0]["text"]
    assert m.path == f"{STORIES},{SALTY}"


def test_chat_keeps_history_as_the_programs_chat_does():
    turns = ["Hi there", "What do you like?", "Tell me more"]
    with selfmod.Model(CHAT, threads=1) as m:
        chat = m.chat(n_predict=16, seed=2)
        answers = [chat.send(t).text for t in turns]
        assert len(chat.history) == 6 and chat.history[1]["content"] == answers[0]
        # the program's interactive mode, the same turns on standard input
        ev = cli_events("-m", CHAT, "-n", "16", "--seed", "2", stdin="\n".join(turns) + "\n")
        assert answers == [d["text"] for d in done_of(ev)]
        # the context holds the history: a turn starts where the last ended
        chat.reset()
        first = list(chat.stream(turns[0]))
        second = list(chat.stream(turns[1]))
        assert first[-1]["text"] == answers[0] and second[-1]["text"] == answers[1]
        assert second[0]["n_prompt_tokens"] > first[0]["n_prompt_tokens"] + first[-1]["n_tokens"]
        assert len(chat.history) == 4
        with pytest.raises(selfmod.SelfmodError, match="fixed when the chat starts"):
            chat.send("x", system="other")
        with pytest.raises(selfmod.SelfmodError, match="another context"):
            chat.send("x", ctx_size=128)
        chat.close()
        # a closed chat says so (it passed a NULL runner: "invalid arguments")
        for turn in (lambda: chat.send("x"), lambda: chat.stream("x"), chat.reset):
            with pytest.raises(selfmod.SelfmodError, match="the chat is closed"):
                turn()
        with m.chat(n_predict=4, seed=2) as scoped:
            assert scoped.send(turns[0]).text
        with pytest.raises(selfmod.SelfmodError, match="the chat is closed"):
            scoped.send("x")


def test_chat_template_kwargs_per_turn(tmp_path):
    assert selfmod.flags(chat_template_kwargs={"enable_thinking": False}) == [
        "--chat-template-kwargs", '{"enable_thinking": false}']
    template = tmp_path / "mood.jinja"
    template.write_text('{{ mood | default("") }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}'
                        '<assistant>')
    with selfmod.Model(CHAT, threads=1) as m:
        second_turn = []
        for kwargs in (None, {"mood": "very calm and happy"}):  # the second turn's own
            chat = m.chat(n_predict=2, seed=2, chat_template_file=str(template))
            chat.send("Hi")
            second_turn.append(list(chat.stream("And?", chat_template_kwargs=kwargs))[0]["n_prompt_tokens"])
            chat.close()
        assert second_turn[1] > second_turn[0]
        chat = m.chat(n_predict=2, seed=2, chat_template_file=str(template))
        with pytest.raises(selfmod.SelfmodError, match="JSON object"):
            chat.send("x", chat_template_kwargs=[1])
        chat.close()


def test_tree_expansion_and_metrics(stories):
    t = stories.tree(PROMPT, max_depth=6, cutoff=0.05)
    assert t.suggestions and all(s.text and len(s.tokens) == len(s.probs) for s in t.suggestions)
    assert [s.score for s in t.suggestions] == sorted((s.score for s in t.suggestions), reverse=True)
    assert all(n["parent"] < i for i, n in enumerate(t.nodes))
    m = selfmod.metrics(["the cat sat the cat sat the cat sat", "a dog ran home"], stories)
    assert m["n_outputs"] == 2 and 0 < m["rep_4"] < 1 and m["distinct_1"] < 1
    with pytest.raises(selfmod.SelfmodError, match="cutoff"):
        stories.tree(PROMPT, cutoff=2)


# -- errors --------------------------------------------------------------------

@pytest.mark.parametrize("settings,message", [
    ({"temperature": -1}, "--temperature"),
    ({"top_p": 0}, "--top-p"),
    ({"bogus_setting": 1}, "no --bogus-setting"),
    ({"aggressive": 3}, "is a switch"),
    ({"top_k": True}, "takes a value"),
    ({"operators": ["nope"]}, "unknown operator 'nope'"),
    ({"grammar": "root ::= ("}, "grammar"),
    ({"model": "x.gguf"}, "chooses what loads"),
    ({"preset": "nope"}, "--preset"),
])
def test_bad_settings_raise_with_the_programs_message(stories, settings, message):
    with pytest.raises(selfmod.SelfmodError, match=message.replace("(", r"\(")):
        stories.generate(PROMPT, **settings)


def test_bad_models_raise():
    with pytest.raises(selfmod.SelfmodError, match="cannot open model '/no/such.gguf'"):
        selfmod.Model("/no/such.gguf")
    with pytest.raises(selfmod.SelfmodError, match="--temperature"):
        selfmod.Model(STORIES, temperature=500)
    with pytest.raises(selfmod.SelfmodError, match="give a model path"):
        selfmod.Model()
    with selfmod.Model(models=[STORIES, os.path.join(MODELS, "aidreams260K.gguf")]) as m:
        with pytest.raises(selfmod.SelfmodError, match="vocabular"):
            m.generate(PROMPT)


def test_runs_in_threads_on_separate_models_agree():
    results = {}

    def work(i):
        with selfmod.Model(STORIES, threads=1) as m:
            results[i] = m.generate(PROMPT, n_predict=20, seed=5).text
    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == results[1] and results[0]


def test_closed_model_refuses():
    m = selfmod.Model(STORIES, threads=1)
    m.close()
    with pytest.raises(selfmod.SelfmodError, match="closed"):
        m.generate(PROMPT)


def test_the_readme_example_runs(capsys):
    """The README's backtracking-llm example, as written (the model path made absolute)."""
    readme = open(os.path.join(os.path.dirname(__file__), "../../README.md"), encoding="utf-8").read()
    block = readme.split("<!-- python-example -->\n```python\n", 1)[1].split("```", 1)[0]
    code = block.replace('"../shared/models/', f'"{MODELS}/')
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert out.startswith("Completion: ") and "backtracks)" in out
    completion = namespace["completion"]
    assert len(completion.tokens) == 50 or completion.stop_reason == "bos"  # (unseeded: a story may end)
    # Its operator is the built-in one in Python: on a character-level model
    # ("ll", "ee"), at most 1 repetition backtracks, and both keep the same text.
    Repetition = namespace["Repetition"]
    with selfmod.Model(os.path.join(MODELS, "babyllama-tok105-1M.gguf"), threads=1) as baby:
        for seed in (1, 2):
            a = baby.generate(PROMPT, n_predict=80, seed=seed, operators=[Repetition(max_repetitions=1)])
            b = baby.generate(PROMPT, n_predict=80, seed=seed, operators=["repetition:max_repetitions=1"])
            assert a.n_backtracks == b.n_backtracks > 0 and a.text == b.text
            assert not any(x == y for x, y in zip(a.tokens, a.tokens[1:]))


def test_the_programs_warnings_become_python_warnings(stories):
    with pytest.warns(RuntimeWarning, match="--max-retractions has no effect"):
        r = stories.generate(PROMPT, n_predict=2, selfmod=False, max_retractions=2)
    assert len(r.tokens) == 2 and all(e["type"] != "warning" for e in r.events)
    with pytest.warns(RuntimeWarning, match="--max-retractions has no effect"):
        assert [e["type"] for e in stories.stream(PROMPT, n_predict=1, selfmod=False, max_retractions=2)][0] == "start"


class PieceLog(selfmod.Stage):
    """Keeps the text of every token it accepted; save/restore make it exact."""

    def __init__(self):
        self.pieces = []

    def accept(self, loop, view):
        self.pieces.append(view.piece)

    def save(self):
        return list(self.pieces)

    def restore(self, saved):
        self.pieces = list(saved)


def test_a_python_stage_with_save_and_restore_is_exact_under_rewinds(stories):
    log = PieceLog()
    ban = BanWord(" Lily")
    r = stories.generate(PROMPT, n_predict=80, seed=2, temperature=0.8, operators=[ban], stages=[log],
                         aggressive=True, retract=True)
    assert r.n_backtracks + r.n_retractions > 0
    assert log.pieces == kept_pieces(r.events)


def test_no_repack_is_chosen_when_the_model_loads(stories):
    m = selfmod.Model(STORIES, no_repack=True)
    try:  # f32 weights have no repacked form: the same text
        assert m.generate(PROMPT, n_predict=12).text == stories.generate(PROMPT, n_predict=12).text
        assert m.amx_refused is False  # asked for, not refused
        # the default load says whether this machine's AMX product failed (bench/cpu_probe's answer)
        probe = os.path.join(os.environ.get("SM_BUILD", ""), "cpu_probe")
        if os.path.exists(probe):
            answer = subprocess.run([probe], capture_output=True, text=True, check=True).stdout.strip()
            assert stories.amx_refused == (answer == "extra-buffers off")
    finally:
        m.close()
    with pytest.raises(selfmod.SelfmodError, match="chooses what loads"):
        stories.generate(PROMPT, no_repack=True)


def test_rpc_servers_are_chosen_when_the_model_loads(stories):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(selfmod.SelfmodError, match=f"cannot reach the RPC server 127.0.0.1:{port}"):
        selfmod.Model(STORIES, rpc=f"127.0.0.1:{port}")
    with pytest.raises(selfmod.SelfmodError, match="chooses what loads"):
        stories.generate(PROMPT, rpc=f"127.0.0.1:{port}")
    with pytest.raises(selfmod.SelfmodError, match="--rpc"):
        selfmod.Model(STORIES, rpc="nohost")


def test_text_with_a_nul_is_refused_not_cut(stories):
    with pytest.raises(selfmod.SelfmodError, match="NUL"):
        stories.generate("Once\0upon", n_predict=2)
    chat = stories.chat(n_predict=2)
    with pytest.raises(selfmod.SelfmodError, match="NUL"):
        chat.send("hi\0there")
    chat.close()


def test_ctrl_c_stops_a_generation_and_leaves_pythons_handler(tmp_path):
    """Ctrl-C during generate() raises KeyboardInterrupt at the next token; the
    library never replaces Python's SIGINT handler (also with threads)."""
    script = tmp_path / "interrupt.py"
    script.write_text(f'''
import os, signal, threading, time, selfmod
m = selfmod.Model({STORIES!r}, threads=1)
threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
t0 = time.time()
try:
    m.generate("Once upon a time", n_predict=1000000, ignore_eos=True, context_shift=True, stop_at_bos=False)
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted after", round(time.time() - t0, 1))
print("handler", signal.getsignal(signal.SIGINT) is signal.default_int_handler)
''')
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                         env={**os.environ})
    assert "interrupted after" in out.stdout, out.stdout + out.stderr
    assert float(out.stdout.split("interrupted after")[1].split()[0]) < 5
    assert "handler True" in out.stdout


def test_the_readme_first_example_runs(capsys):
    """The first block of README's "From Python", as written."""
    readme = open(os.path.join(os.path.dirname(__file__), "../../README.md"), encoding="utf-8").read()
    section = readme.split("## From Python", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(block.replace('"../shared/models/', f'"{MODELS}/'), "README.md", "exec"), {})
    assert len(capsys.readouterr().out) > 20


def test_embeddings(stories):
    a, b, c = stories.embed(["Once upon a time", "The dog ran home", "Once upon a time"])
    assert len(a) == 64 and abs(sum(x * x for x in a) - 1) < 1e-4
    assert max(abs(x - y) for x, y in zip(a, c)) < 1e-6 and max(abs(x - y) for x, y in zip(a, b)) > 1e-3
    assert stories.embed([]) == []
    with pytest.raises(selfmod.SelfmodError, match="list of texts"):
        stories.embed("one string")


def test_the_embedding_refuses_to_change_a_chats_system_prompt(stories):
    """Below the Python check, the C embedding itself refuses a turn whose
    --system differs from the chat's (the chat would ignore it)."""
    chat = stories.chat(system="Be kind.", n_predict=2)
    chat.send("Hello")
    events, sink = selfmod._collector()
    with pytest.raises(selfmod.SelfmodError, match="--system is fixed when the chat starts"):
        stories._run(chat._runner, None, "Again", {"system": "Be rude."}, sink)
    assert len(chat.send("Again").tokens) == 2  # the chat goes on
    chat.close()
