"""llama_selfmod from Python: the C library through ctypes (standard library only).

    import selfmod
    m = selfmod.Model("../shared/models/stories260K.gguf")
    r = m.generate("Once upon a time", n_predict=24, temperature=0, selfmod=False)
    print(r.text, r.stop_reason, len(r.events))
    for event in m.stream("Once upon a time", n_predict=64, operators=["ngram_overlap"]):
        if event["type"] == "token":
            print(event["text"], end="", flush=True)

Settings are the command line's long flags with '_' for '-' (temperature=0
is --temperature 0, no_retract=True or retract=False is --no-retract,
operators=[...] repeats --operator). They are parsed and checked by the
program's own code, so every flag works here with the same defaults and
the same messages. Settings given to Model are defaults for every call; a
call's settings replace them by name.

Events are the program's --json-stream lines as dicts: start, token,
modification, retraction, backtrack, done (and warning).
"""
from __future__ import annotations

import ctypes
import json
import math
import queue
import signal
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional, Sequence

from . import _native as _n
from ._native import cli as _cli
from ._native import lib as _lib

__all__ = ["SelfmodError", "Model", "Chat", "Result", "TokenView", "Operator", "Stage", "Loop", "TreeResult",
           "Suggestion", "metrics", "flags"]

__version__ = "0.1.0"


class SelfmodError(Exception):
    """A setting, a file or a generation the library refused; str() is its one-line message."""


# ---------------------------------------------------------------------------
# Settings as flags
# ---------------------------------------------------------------------------

# Flags that may be given several times; a list repeats them.
_REPEATABLE = {"stop", "operator", "control-vector", "safety"}
# Plural names for repeatable flags.
_PLURALS = {"operators": "operator", "stops": "stop", "control_vectors": "control-vector"}
# Chosen when the models load.
_LOAD_ONLY = {"model", "models", "n_gpu_layers", "rpc", "no_repack"}
# Not settings: the prompt is an argument, the output is always the JSON stream.
_NOT_SETTINGS = {"prompt", "help", "version", "quiet"}


def _arity(flag: str) -> int:
    return _cli.smcli_flag_arity(flag.encode())


def _text(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SelfmodError(f"{value!r} is not a finite number")
        return repr(value)
    text = str(value)
    if "\0" in text:
        raise SelfmodError("a setting holds a NUL character")
    return text


def flags(**settings: Any) -> list[str]:
    """The command-line flags for settings (what Model and generate pass on)."""
    out: list[str] = []
    for name, value in settings.items():
        if value is None:
            continue
        if name in _NOT_SETTINGS:
            raise SelfmodError(f"'{name}' is not a setting here"
                               + (": give the prompt as the first argument" if name == "prompt" else ""))
        flag = _PLURALS.get(name, name).replace("_", "-")
        arity = _arity(flag)
        negative = _arity("no-" + flag)
        if isinstance(value, bool):
            if arity == -1 and negative == -1:
                raise SelfmodError(f"unknown setting '{name}' (the program has no --{flag})")
            if value and arity in (0, 2):
                out.append("--" + flag)
            elif not value and negative == 0:
                out.append("--no-" + flag)
            elif arity == 1:
                raise SelfmodError(f"'{name}' takes a value (--{flag} VALUE), not {value}")
            # else: True for a switch that is on by default, False for one that is off
            continue
        if arity == -1:
            raise SelfmodError(f"unknown setting '{name}' (the program has no --{flag})")
        if arity == 0:
            raise SelfmodError(f"'{name}' is a switch: give True or False")
        if isinstance(value, dict):  # a JSON object (chat_template_kwargs)
            values = [_text(json.dumps(value))]
        elif isinstance(value, (list, tuple)):
            values = [_text(v) for v in value] if flag in _REPEATABLE else [",".join(_text(v) for v in value)]
        else:
            values = [_text(value)]
        for v in values:
            out.extend([f"--{flag}={v}"] if arity == 2 else ["--" + flag, v])
    return out


# ---------------------------------------------------------------------------
# Operators and stages written in Python
# ---------------------------------------------------------------------------

@dataclass
class TokenView:
    """What an operator or stage sees of a candidate token (sm_token_view).

    logits is the raw distribution over the whole vocabulary, readable only
    during the call (a ctypes float array of n_vocab entries)."""
    position: int
    token: int
    prob: float
    logit: float
    piece: str
    top: list[tuple[int, float, float]]  # (token, prob, logit), most probable first
    signals: dict[str, float]
    n_vocab: int
    logits: Any = field(repr=False, default=None)

    @staticmethod
    def _from_c(v: "_n.TokenView") -> "TokenView":
        top = [(v.top[i].token, v.top[i].prob, v.top[i].logit) for i in range(v.n_top)]
        sig = v.signals.contents if v.signals else None
        signals = {name: getattr(sig, name) for name, _ in _n.Signals._fields_} if sig else {}
        logits = (ctypes.c_float * v.n_vocab).from_address(ctypes.addressof(v.logits.contents)) \
            if v.logits and v.n_vocab > 0 else None
        piece = (v.piece or b"").decode("utf-8", "replace")
        return TokenView(v.position, v.token, v.prob, v.logit, piece, top, signals, v.n_vocab, logits)


class Operator:
    """A backtracking operator (backtracking-llm's Operator, C's sm_operator).

    decide(view) returns how many tokens to remove: 0 keeps the candidate,
    1 removes it, k also the k-1 kept tokens before it. on_backtrack(n) says
    the last n candidates it was shown are gone: roll your state back
    exactly. reset() starts a new generation. Subclass it, or pass any
    object with decide() (the other two are optional)."""

    name = "python"

    def decide(self, view: TokenView) -> int:
        return 0

    def on_backtrack(self, n_removed: int) -> None:
        pass

    def reset(self) -> None:
        pass


class Loop:
    """What a stage may read and do in the loop it is called from (sm_loop)."""

    def __init__(self, pointer: int):
        self._p = pointer

    @property
    def n_generated(self) -> int:
        return _lib.sm_loop_n_generated(self._p)

    @property
    def text(self) -> str:
        n = ctypes.c_size_t()
        p = _lib.sm_loop_text(self._p, ctypes.byref(n))
        return ctypes.string_at(p, n.value).decode("utf-8", "replace") if p else ""

    def describe(self, why: str) -> None:
        _lib.sm_loop_describe(self._p, why.encode())

    def inject(self, text: str) -> None:
        data = text.encode()
        status = _lib.sm_loop_inject(self._p, data, len(data))
        if status != 0:
            raise SelfmodError(f"inject: {_lib.sm_status_name(status).decode()}")

    def stop(self, why: str) -> None:
        _lib.sm_loop_stop(self._p, why.encode())


class Stage:
    """A stage of the generation loop (C's sm_stage_vtable), every hook optional:

    before_sample(loop, knobs) may set knobs.temperature, knobs.repeat_penalty
    or knobs.forced (a token chosen without sampling) for this token;
    judge(loop, view) -> int removes tokens like an operator; accept(loop, view)
    the candidate is kept; after_token(loop, view) it was reported;
    on_rewind(loop, n, by_me) n tokens it was shown are gone; reset(loop).

    Exact rollback: give save() -> any object and restore(obj), and the loop
    saves the stage at every position and restores it on every rewind, as
    it does a C stage's snapshot; or roll back by hand in on_rewind."""

    name = "python_stage"


class _Native:
    """The C objects behind Python operators and stages for one run; the
    callbacks and vtables live as long as it does."""

    def __init__(self, operators: Sequence[Any], stages: Sequence[Any]):
        self.error: Optional[BaseException] = None
        self._keep: list[Any] = []
        self._snapshots: list[Any] = []  # the Python stages' saved states, by key
        self.operators = [self._operator(op) for op in operators]
        self.stages = [self._stage(st) for st in stages]

    def _guard(self, fn, default):
        def call(*args):
            if self.error is not None:
                return default
            try:
                return fn(*args)
            except BaseException as e:  # noqa: BLE001 - handed back to the caller
                self.error = e
                return default
        return call

    def _operator(self, op: Any) -> int:
        if not callable(getattr(op, "decide", None)):
            raise SelfmodError(f"operator {op!r} has no decide(view) method (or give a built-in by name)")

        def decide(_state, view):
            n = op.decide(TokenView._from_c(view.contents))
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise SelfmodError(f"{type(op).__name__}.decide returned {n!r}: give an int >= 0")
            return n

        def on_backtrack(_state, n):
            if hasattr(op, "on_backtrack"):
                op.on_backtrack(int(n))

        def reset(_state):
            if hasattr(op, "reset"):
                op.reset()

        name = str(getattr(op, "name", type(op).__name__)).encode()
        vt = _n.OperatorVtable(name, _n.DECIDE_FN(self._guard(decide, 0)),
                               _n.BACKTRACK_FN(self._guard(on_backtrack, None)),
                               _n.RESET_FN(self._guard(reset, None)), _n.FREE_FN(0))
        self._keep += [vt, name]
        pointer = _lib.sm_operator_new(ctypes.byref(vt), None)
        if not pointer:
            raise MemoryError("sm_operator_new")
        return pointer

    def _stage(self, st: Any) -> int:
        def hook(name, ftype, adapt):
            """The C hook calling st.name through adapt; NULL when st has none."""
            fn = getattr(st, name, None)
            return ftype(self._guard(adapt(fn), None)) if callable(fn) else ftype(0)

        def view_hook(fn):
            return lambda _s, loop, view: fn(Loop(loop), TokenView._from_c(view.contents))

        def judge(_s, loop, view):
            n = st.judge(Loop(loop), TokenView._from_c(view.contents))
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise SelfmodError(f"{type(st).__name__}.judge returned {n!r}: give an int >= 0")
            return n

        # A snapshot is a key (8 bytes) into the run's saved objects.
        snapshots = self._snapshots
        has_snapshot = callable(getattr(st, "save", None)) and callable(getattr(st, "restore", None))

        def save(_s, snapshot):
            snapshots.append(st.save())
            ctypes.c_int64.from_address(snapshot).value = len(snapshots) - 1

        def restore(_s, snapshot):
            st.restore(snapshots[ctypes.c_int64.from_address(snapshot).value])

        name = str(getattr(st, "name", type(st).__name__)).encode()
        vt = _n.StageVtable(
            name, 8 if has_snapshot else 0,
            _n.STAGE_SAVE_FN(self._guard(save, None)) if has_snapshot else _n.STAGE_SAVE_FN(0),
            _n.STAGE_RESTORE_FN(self._guard(restore, None)) if has_snapshot else _n.STAGE_RESTORE_FN(0),
            hook("reset", _n.STAGE_RESET_FN, lambda f: lambda _s, loop: f(Loop(loop))),
            hook("before_sample", _n.STAGE_BEFORE_FN, lambda f: lambda _s, loop, k: f(Loop(loop), k.contents)),
            _n.STAGE_JUDGE_FN(self._guard(judge, 0)) if callable(getattr(st, "judge", None)) else _n.STAGE_JUDGE_FN(0),
            hook("accept", _n.STAGE_VIEW_FN, view_hook),
            _n.STAGE_CHECK_FN(0),
            hook("after_token", _n.STAGE_VIEW_FN, view_hook),
            hook("on_rewind", _n.STAGE_REWIND_FN, lambda f: lambda _s, loop, n, me: f(Loop(loop), int(n), bool(me))),
            _n.FREE_FN(0))
        self._keep += [vt, name]
        pointer = _lib.sm_stage_new(ctypes.byref(vt), None)
        if not pointer:
            raise MemoryError("sm_stage_new")
        return pointer

    def arrays(self):
        ops = (ctypes.c_void_p * max(1, len(self.operators)))(*self.operators)
        sts = (ctypes.c_void_p * max(1, len(self.stages)))(*self.stages)
        return ops, len(self.operators), sts, len(self.stages)

    def free(self) -> None:
        for p in self.operators:
            _lib.sm_operator_free(p)
        for p in self.stages:
            _lib.sm_stage_free(p)
        self.operators, self.stages = [], []


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------

@dataclass
class Result:
    """One generation: the done event's fields, the kept tokens, every event."""
    text: str
    stop_reason: str
    tokens: list[int]
    events: list[dict]
    seed: Optional[int] = None
    n_retractions: int = 0
    n_backtracks: int = 0
    avg_confidence: float = 0.0
    done: dict = field(default_factory=dict, repr=False)

    @staticmethod
    def from_events(events: list[dict]) -> "Result":
        tokens: list[int] = []
        seed = None
        done: dict = {}
        for e in events:
            kind = e.get("type")
            if kind == "start":
                seed = e.get("seed")
            elif kind == "token" and "token" in e:
                del tokens[e["index"]:]
                tokens.append(e["token"])
            elif kind in ("retraction", "backtrack") and "token_index" in e:
                del tokens[e["token_index"]:]
            elif kind in ("done", "complete"):
                done = e
        beams = [e for e in events if e.get("type") == "beam"]
        if not done and beams:  # --beam-search: the best beam is the answer
            best = beams[0]
            return Result(best.get("text", ""), best.get("end", ""), list(best.get("tokens", [])), events,
                          done=best)
        return Result(done.get("text", ""), done.get("stop_reason", ""), tokens, events, seed,
                      done.get("n_retractions", done.get("retractions", 0)), done.get("n_backtracks", 0),
                      done.get("avg_confidence", 0.0), done)


def _warn(event: dict) -> None:
    warnings.warn(event.get("message", ""), RuntimeWarning, stacklevel=4)


def _collector():
    """A list and a sink that fills it (warnings become Python warnings)."""
    events: list[dict] = []

    def sink(event: dict) -> None:
        if event.get("type") == "warning":
            _warn(event)
        else:
            events.append(event)
    return events, sink


class _Run:
    """One call of smcli_run, its events delivered to `sink` as dicts."""

    def __init__(self, runner: int, settings: list[str], message: Optional[str], operators, stages):
        self.runner = runner
        self.argv, self._buffers = _n.argv(settings)
        self.n = len(settings)
        self.message = message.encode() if message is not None else None
        self.native = _Native(operators, stages)
        self.stopped = False
        self.interrupted = False

    def _interrupt(self, signum, frame) -> None:
        self.interrupted = True

    def run(self, sink) -> int:
        import json

        def on_line(data, length, _ud):
            if self.stopped or self.native.error is not None or self.interrupted:
                return 1
            try:
                event = json.loads(ctypes.string_at(data, length).decode("utf-8", "replace"))
                if sink(event) is False:
                    self.stopped = True
            except BaseException as e:  # noqa: BLE001
                self.native.error = e
            return 1 if self.stopped or self.native.error is not None else 0

        callback = _n.LINE_FN(on_line)
        err = ctypes.create_string_buffer(1024)
        ops, n_ops, sts, n_sts = self.native.arrays()
        # Ctrl-C during the call: Python's handler would raise inside a
        # callback, where ctypes can only print it; a flag stops the
        # generation at the next token instead, and KeyboardInterrupt follows.
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._interrupt)
        try:
            code = _cli.smcli_run(self.runner, self.n, self.argv, self.message, ops, n_ops, sts, n_sts, callback,
                                  None, err, len(err))
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            self.native.free()
        if self.interrupted:
            raise KeyboardInterrupt
        if self.native.error is not None:
            raise self.native.error
        if self.stopped:
            return 0
        if code >= 128:
            raise KeyboardInterrupt(_n.error_text(err))
        if code != 0:
            raise SelfmodError(_n.error_text(err))
        return code


class _Job:
    """One call for the decoding thread: its result or its exception."""

    def __init__(self, work):
        self.work = work
        self.done = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            self.result = self.work()
        except BaseException as e:  # noqa: BLE001 - raised by the caller
            self.error = e
        finally:
            self.done.set()

    def wait(self, stop: Optional[threading.Event] = None) -> Any:
        """Its result; Ctrl-C meanwhile sets stop (a generation ends at its
        next token) and is raised once the call has returned."""
        interrupted = False
        while not self.done.is_set():
            try:
                self.done.wait()
            except KeyboardInterrupt:
                interrupted = True
                if stop is not None:
                    stop.set()
        if interrupted:
            raise KeyboardInterrupt
        if self.error is not None:
            raise self.error
        return self.result


class _DecodingThread:
    """The one thread that runs every call that decodes, one at a time.

    llama.cpp's OpenMP workers belong to the thread that decodes and live as
    long as it. A thread per call would build a new team every call (10-30
    ms measured), and two decoding threads at once (the caller's and
    generate_many's batch) make OpenMP's barriers sleep instead of spin,
    several times slower. So calls run here, and generate_many retires this
    thread (and its team) while its batch decodes; the next call starts it
    again. A call made while another runs (a stream still open, another
    thread's call) gets a thread of its own rather than wait behind it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._jobs: "Optional[queue.Queue]" = None
        self._pending = 0  # calls queued or running here

    def submit(self, work) -> _Job:
        job = _Job(work)
        with self._lock:
            if self._pending > 0:
                threading.Thread(target=job.run, name="selfmod-call", daemon=True).start()
                return job
            if self._thread is None:
                self._jobs = queue.Queue()
                self._thread = threading.Thread(target=self._serve, args=(self._jobs,), name="selfmod-decoder",
                                                daemon=True)
                self._thread.start()
            self._pending += 1
            self._jobs.put(job)
        return job

    def _serve(self, jobs: "queue.Queue") -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            job.run()
            with self._lock:
                self._pending -= 1

    def retire(self) -> None:
        """Ends the thread once its calls are done."""
        with self._lock:
            thread, jobs = self._thread, self._jobs
            self._thread = self._jobs = None
        if thread is not None:
            jobs.put(None)
            thread.join()


_decoder = _DecodingThread()


def _decode_call(work, stop: Optional[threading.Event] = None) -> Any:
    """work() on the decoding thread; its result, or its exception."""
    return _decoder.submit(work).wait(stop)


def _stoppable(keep, stop: threading.Event):
    """A sink that keeps each event and stops the generation once stop is set."""
    def sink(event: dict) -> bool:
        keep(event)
        return not stop.is_set()
    return sink


def _iterate(start_run) -> Iterator[dict]:
    """Runs start_run(sink) on the decoding thread; yields its events as
    they come. Closing the iterator stops the generation."""
    events: "queue.Queue" = queue.Queue(maxsize=64)
    stop = threading.Event()
    DONE = object()
    outcome: list[BaseException] = []

    def sink(event):
        while not stop.is_set():
            try:
                events.put(event, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            start_run(sink)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            outcome.append(e)
        finally:
            while True:
                try:
                    events.put(DONE, timeout=0.1)
                    break
                except queue.Full:
                    if stop.is_set():
                        break

    job = _decoder.submit(work)
    try:
        while True:
            event = events.get()
            if event is DONE:
                break
            if event.get("type") == "warning":
                _warn(event)
                continue
            yield event
    finally:
        stop.set()
        job.done.wait()
    if outcome:
        raise outcome[0]


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------

class Model:
    """One model (path), or several fused (models=[...]); loaded once.

    Settings given here are checked now and are every call's defaults;
    models, n_gpu_layers, rpc ("HOST:PORT,...": ggml RPC servers that
    hold the layers) and no_repack (weights as stored) choose what loads."""

    def __init__(self, path: Optional[str] = None, *, models: Optional[Sequence[str]] = None, verbose: bool = False,
                 **settings: Any):
        if (path is None) == (models is None):
            raise SelfmodError("give a model path, or models=[...] to fuse several")
        load = {"model": path, "models": list(models) if models is not None else None, "verbose": verbose or None,
                "n_gpu_layers": settings.pop("n_gpu_layers", None), "rpc": settings.pop("rpc", None),
                "no_repack": settings.pop("no_repack", None)}
        self.settings = dict(settings)  # every call's defaults
        # checked as a one-shot run's flags would be (some need a prompt)
        checked = {k: v for k, v in self.settings.items() if k not in ("operators", "stages")}
        argv, keep = _n.argv(flags(**load) + flags(**checked) + ["-p", "."])
        err = ctypes.create_string_buffer(1024)
        self._models = _cli.smcli_models_load(len(keep), argv, err, len(err))
        if not self._models:
            raise SelfmodError(_n.error_text(err))
        self._runner = _cli.smcli_runner_new(self._models)
        self._lock = threading.Lock()
        self._trees: dict = {}
        self.path = path if path is not None else ",".join(models or [])

    # -- life -----------------------------------------------------------------
    def close(self) -> None:
        """Frees the models (also when the object is collected)."""
        for tree in getattr(self, "_trees", {}).values():
            _lib.sm_tree_free(tree)
        self._trees = {}
        if getattr(self, "_runner", None):
            _cli.smcli_runner_free(self._runner)
            self._runner = None
        if getattr(self, "_models", None):
            _cli.smcli_models_free(self._models)
            self._models = None

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _check_open(self) -> None:
        if not self._models:
            raise SelfmodError("the model is closed")


    # -- information -------------------------------------------------------
    @property
    def n_models(self) -> int:
        return _cli.smcli_models_count(self._models)

    def _model(self, i: int = 0) -> int:
        self._check_open()
        return _cli.smcli_models_get(self._models, i)

    @property
    def description(self) -> str:
        return _lib.sm_model_description(self._model()).decode()

    @property
    def n_vocab(self) -> int:
        return _lib.sm_model_n_vocab(self._model())

    @property
    def n_ctx_train(self) -> int:
        return _lib.sm_model_n_ctx_train(self._model())

    @property
    def amx_refused(self) -> bool:
        """True when the weights stay as stored (as no_repack) because
        llama.cpp's AMX matrix product crashes on this machine."""
        return bool(_lib.sm_model_amx_refused(self._model()))

    def embed(self, texts: Sequence[str], threads: int = 0) -> list[list[float]]:
        """One L2-normalised embedding per text: the model's pooled output
        (mean pooling for a generative model), as /v1/embeddings."""
        if isinstance(texts, str):
            raise SelfmodError("give a list of texts")
        texts = list(texts)
        if not texts:
            return []
        if any(not isinstance(t, str) or "\0" in t for t in texts):
            raise SelfmodError("each text must be a str without NUL characters")
        d = _lib.sm_model_n_embd(self._model())
        arr, keep = _n.argv(texts)
        out = (ctypes.c_float * (d * len(texts)))()
        err = _n.Error()
        if _decode_call(lambda: _lib.sm_embed(self._model(), arr, len(texts), threads, out, None,
                                                ctypes.byref(err))) != 0:
            raise SelfmodError(err.message.decode("utf-8", "replace"))
        return [list(out[i * d:(i + 1) * d]) for i in range(len(texts))]

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        data = text.encode()
        toks, err = _n.Tokens(), _n.Error()
        if _lib.sm_tokenize(self._model(), data, len(data), add_special, parse_special, ctypes.byref(toks),
                            ctypes.byref(err)) != 0:
            raise SelfmodError(err.message.decode("utf-8", "replace"))
        try:
            return toks.data[:toks.n] if toks.n else []
        finally:
            _lib.sm_tokens_free(ctypes.byref(toks))

    def detokenize(self, tokens: Sequence[int]) -> str:
        arr = (ctypes.c_int32 * max(1, len(tokens)))(*tokens)
        n, err = ctypes.c_size_t(), _n.Error()
        p = _lib.sm_detokenize(self._model(), arr, len(tokens), ctypes.byref(n), ctypes.byref(err))
        if not p:
            raise SelfmodError(err.message.decode("utf-8", "replace"))
        try:
            return ctypes.string_at(p, n.value).decode("utf-8", "replace")
        finally:
            _n.libc.free(p)

    # -- generation --------------------------------------------------------
    def _run(self, runner, prompt: Optional[str], message: Optional[str], call: dict, sink, *layers: dict) -> None:
        """Runs on runner with the settings of every layer (Model's, a
        chat's), the call's last: each replaces the ones before by name."""
        for name in _LOAD_ONLY & call.keys():
            raise SelfmodError(f"'{name}' chooses what loads: give it to Model(...)")
        settings: dict = {}
        for layer in (self.settings, *layers, call):
            settings.update(layer)
        operators = settings.pop("operators", None) or []
        if isinstance(operators, str) or not isinstance(operators, (list, tuple)):
            operators = [operators]
        settings["operators"] = [o for o in operators if isinstance(o, str)] or None
        python_operators = [o for o in operators if not isinstance(o, str)]
        stages = list(settings.pop("stages", None) or [])
        argv = ["--quiet", "--no-memory"] + flags(**settings)
        if prompt is not None:
            if not isinstance(prompt, str):
                raise SelfmodError("the prompt must be a str")
            argv += ["--prompt", _text(prompt)]
        if message is not None and not isinstance(message, str):
            raise SelfmodError("the message must be a str")
        if message is not None and "\0" in message:
            raise SelfmodError("the message holds a NUL character")
        _Run(runner, argv, message, python_operators, stages).run(sink)

    def generate(self, prompt: str, **settings: Any) -> Result:
        """One generation (or --beam-search) from prompt; returns when done.

        operators=[...] takes built-in specs ("ngram_overlap",
        "probability_threshold:min_probability=0.1") and Python operators
        alike; stages=[...] takes Python stages."""
        self._check_open()
        events, keep = _collector()
        stop = threading.Event()

        def work() -> None:
            with self._lock:
                self._run(self._runner, prompt, None, dict(settings), _stoppable(keep, stop))
        _decode_call(work, stop)
        return Result.from_events(events)

    def generate_many(self, prompts: Sequence[str], parallel: int = 4, **settings: Any) -> list[Result]:
        """One generation per prompt, `parallel` of them at a time on
        sequences of one batch: every step decodes all their tokens in one
        llama_decode, and a finished one's sequence goes to the next prompt
        (continuous batching). Each has its own self-modification,
        operators, retractions and random state; each result is what
        generate(prompt, **settings) gives, up to llama.cpp's rounding of
        batched decodes. threads and ctx_size are the batch's (ctx_size
        per sequence); with lookahead=k its cells are one pool where each
        generation's branches share its cells. Results come in the order of
        the prompts; the first failure is raised once the running ones have
        finished."""
        self._check_open()
        prompts = list(prompts)
        if isinstance(parallel, bool) or not isinstance(parallel, int) or not 1 <= parallel <= 256:
            raise SelfmodError(f"parallel must be an int from 1 to 256, not {parallel!r}")
        for p in prompts:
            if not isinstance(p, str):
                raise SelfmodError("every prompt must be a str")
        if not prompts:
            return []
        merged = {**self.settings, **settings}
        n_seq = min(parallel, len(prompts))
        _decoder.retire()  # the batch's thread decodes now: one OpenMP team at a time
        err = ctypes.create_string_buffer(1024)
        # the batch's own settings (the runs check them again as flags)
        sizes = {name: merged.get(name) or 0 for name in ("lookahead", "ctx_size", "threads")}
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
                raise SelfmodError(f"{name} takes a non-negative int, not {value!r}")
        # with lookahead, its branches share the session's cells in one pool
        batch = _cli.smcli_batch_new(self._models, n_seq, sizes["lookahead"], sizes["ctx_size"], sizes["threads"], err,
                                     len(err))
        if not batch:
            raise SelfmodError(_n.error_text(err))
        runners: list[int] = []
        results: list[Optional[Result]] = [None] * len(prompts)
        failures: list[BaseException] = []
        next_prompt = iter(range(len(prompts)))
        taking = threading.Lock()
        stop = threading.Event()  # the caller is leaving (Ctrl-C): every generation stops at its next token

        def work(runner: int) -> None:
            while not failures and not stop.is_set():
                with taking:
                    i = next(next_prompt, None)
                if i is None:
                    return
                events, keep = _collector()
                try:
                    self._run(runner, prompts[i], None, dict(settings), _stoppable(keep, stop))
                except BaseException as e:  # noqa: BLE001 - raised by the caller
                    failures.append(e)
                    return
                results[i] = Result.from_events(events)

        threads: list[threading.Thread] = []
        try:
            for _ in range(n_seq):
                runner = _cli.smcli_runner_new_on(self._models, batch, err, len(err))
                if not runner:
                    raise SelfmodError(_n.error_text(err))
                runners.append(runner)
            threads = [threading.Thread(target=work, args=(r,), name="selfmod-batch", daemon=True) for r in runners]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            stop.set()
            for t in threads:  # the runners and the batch outlive every run on them
                while t.is_alive():
                    try:
                        t.join()
                    except KeyboardInterrupt:
                        pass
            for runner in runners:
                _cli.smcli_runner_free(runner)
            _lib.sm_batch_free(batch)
        if failures:
            raise failures[0]
        return [r for r in results if r is not None]

    def stream(self, prompt: str, **settings: Any) -> Iterator[dict]:
        """The generation's events as they happen (token, modification,
        retraction, backtrack, ..., done). Breaking out stops it."""
        self._check_open()
        settings = dict(settings)

        def start(sink):
            with self._lock:
                self._run(self._runner, prompt, None, settings, sink)
        return _iterate(start)

    def chat(self, system: Optional[str] = None, **settings: Any) -> "Chat":
        """A conversation on its own session: history and KV cache carry
        over from turn to turn. system and the chat template settings
        (chat_template, chat_template_file, jinja, user_label,
        assistant_label) are fixed here."""
        self._check_open()
        return Chat(self, system, settings)

    # -- the LLooM tree ----------------------------------------------------
    def tree(self, prefix: str, *, max_depth: int = 12, beam_limit: int = 25, cutoff: float = 0.2,
             multiplier: float = 1.0, split_limit: int = 3, stop_chars: Optional[str] = ".,",
             score_sum_probs: bool = False, n_ctx: int = 0, threads: int = 0) -> "TreeResult":
        """The LLooM's expansion of prefix: every continuation whose
        probability stays above the cutoff, best first (sm_tree_expand;
        with several models their probabilities are mixed)."""
        self._check_open()
        p = _lib.sm_tree_default_params()
        p.max_depth, p.beam_limit, p.cutoff, p.multiplier = max_depth, beam_limit, cutoff, multiplier
        p.split_limit, p.score_sum_probs = split_limit, score_sum_probs
        stops = (stop_chars or "").encode()
        p.stop_chars = stops
        err = _n.Error()
        if _lib.sm_tree_params_validate(ctypes.byref(p), ctypes.byref(err)) != 0:
            raise SelfmodError(err.message.decode("utf-8", "replace"))
        key = (n_ctx, threads)
        tree = self._trees.get(key)
        if tree is None:
            models = (ctypes.c_void_p * self.n_models)(*[self._model(i) for i in range(self.n_models)])
            tree = _lib.sm_tree_new(models, self.n_models, n_ctx, threads, 255, ctypes.byref(err))
            if not tree:
                raise SelfmodError(err.message.decode("utf-8", "replace"))
            self._trees[key] = tree
        out = _n.TreeResult()
        with self._lock:
            status = _decode_call(lambda: _lib.sm_tree_expand(tree, prefix.encode(), ctypes.byref(p),
                                                                ctypes.byref(out)))
        if status != 0:
            raise SelfmodError(_lib.sm_tree_last_error(tree).decode("utf-8", "replace"))
        try:
            return TreeResult._from_c(out)
        finally:
            _lib.sm_tree_result_free(ctypes.byref(out))


class Chat:
    """A multi-turn chat (see Model.chat)."""

    _FIXED = {"system", "chat_template", "chat_template_file", "jinja", "no_jinja", "user_label", "assistant_label"}

    def __init__(self, model: Model, system: Optional[str], settings: dict):
        self.model = model
        self.settings = dict(settings)
        if system is not None:
            self.settings["system"] = system
        self._runner = _cli.smcli_runner_new(model._models)
        self.history: list[dict] = []

    def _check_open(self) -> None:
        self.model._check_open()
        if not getattr(self, "_runner", None):
            raise SelfmodError("the chat is closed")

    def _settings(self, turn: dict) -> dict:
        self._check_open()
        for name in self._FIXED & turn.keys():
            raise SelfmodError(f"'{name}' is fixed when the chat starts: give it to Model.chat(...)")
        return dict(turn)

    def send(self, message: str, **settings: Any) -> Result:
        """One turn: the answer to message (the settings apply to this turn)."""
        events, keep = _collector()
        turn = self._settings(settings)
        stop = threading.Event()
        _decode_call(lambda: self.model._run(self._runner, None, message, turn, _stoppable(keep, stop),
                                               self.settings), stop)
        result = Result.from_events(events)
        self.history += [{"role": "user", "content": message}, {"role": "assistant", "content": result.text}]
        return result

    def stream(self, message: str, **settings: Any) -> Iterator[dict]:
        """One turn's events as they happen."""
        merged = self._settings(settings)
        text: list[str] = []

        def start(sink):
            def keep(e):
                if e.get("type") == "done":
                    text.append(e.get("text", ""))
                return sink(e)
            self.model._run(self._runner, None, message, merged, keep, self.settings)
            self.history += [{"role": "user", "content": message},
                             {"role": "assistant", "content": text[0] if text else ""}]
        return _iterate(start)

    def reset(self) -> None:
        """Forgets the conversation (the next turn starts a new one)."""
        self._check_open()
        _cli.smcli_chat_reset(self._runner)
        self.history = []

    def close(self) -> None:
        """Frees the chat's runner; a closed chat refuses turns."""
        if getattr(self, "_runner", None):
            _cli.smcli_runner_free(self._runner)
            self._runner = None

    def __enter__(self) -> "Chat":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


@dataclass
class Suggestion:
    text: str
    tokens: list[int]
    probs: list[float]
    score: float
    end: str


@dataclass
class TreeResult:
    suggestions: list[Suggestion]
    nodes: list[dict]
    n_levels: int
    n_decode_calls: int
    elapsed_ms: float

    @staticmethod
    def _from_c(r: "_n.TreeResult") -> "TreeResult":
        def end(e):
            return _lib.sm_tree_end_name(e).decode()
        sugg = [Suggestion(s.text.decode("utf-8", "replace"), s.tokens[:s.n_tokens], s.probs[:s.n_tokens], s.score,
                           end(s.end)) for s in (r.suggestions[i] for i in range(r.n_suggestions))]
        nodes = [{"parent": n.parent, "token": n.token, "piece": (n.piece or b"").decode("utf-8", "replace"),
                  "prob": n.prob, "score": n.score, "depth": n.depth, "end": end(n.end)}
                 for n in (r.nodes[i] for i in range(r.n_nodes))]
        return TreeResult(sugg, nodes, r.n_levels, r.n_decode_calls, r.elapsed_ms)


def metrics(texts: Iterable[str], model: Model) -> dict[str, float]:
    """eval's text metrics over texts, read through model's tokenizer:
    rep_2..rep_4, diversity, seq_rep_4, distinct_1, distinct_2, mean_length."""
    seqs = [model.tokenize(t, add_special=False) for t in texts]
    arrays = [(ctypes.c_int32 * max(1, len(s)))(*s) for s in seqs]
    ptrs = (ctypes.POINTER(ctypes.c_int32) * max(1, len(seqs)))(
        *[ctypes.cast(a, ctypes.POINTER(ctypes.c_int32)) for a in arrays])
    lens = (ctypes.c_int32 * max(1, len(seqs)))(*[len(s) for s in seqs])
    out = _n.TextMetrics()
    if _lib.sm_text_metrics_compute(ptrs, lens, len(seqs), ctypes.byref(out)) != 0:
        raise SelfmodError("the metrics could not be computed")
    return {"n_outputs": out.n_outputs, "n_tokens": out.n_tokens, "rep_2": out.rep[2], "rep_3": out.rep[3],
            "rep_4": out.rep[4], "diversity": out.diversity, "seq_rep_4": out.seq_rep_4,
            "distinct_1": out.distinct[1], "distinct_2": out.distinct[2], "mean_length": out.mean_length}
