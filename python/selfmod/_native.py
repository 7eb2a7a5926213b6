"""The C libraries through ctypes: libselfmod (the library) and
libselfmod_cli (the program's flags and runs as a library, apps/embed).

Only this module knows C. Structures mirror include/selfmod.h; their sizes
are checked against the C compiler's (smcli_struct_size) when the library
loads, so a header change that this file missed fails at import, not in
memory.
"""
from __future__ import annotations

import ctypes
import os
from ctypes import (CFUNCTYPE, POINTER, Structure, c_bool, c_char, c_char_p, c_double, c_float, c_int,
                    c_int32, c_int64, c_size_t, c_uint32, c_void_p)
from pathlib import Path

SM_ERROR_SIZE = 512


class Error(Structure):
    _fields_ = [("status", c_int), ("message", c_char * SM_ERROR_SIZE)]


class Tokens(Structure):
    _fields_ = [("data", POINTER(c_int32)), ("n", c_int32), ("n_unknown", c_int32),
                ("first_unknown_at", c_size_t), ("first_unknown", c_char * 8)]


class Signals(Structure):
    _fields_ = [("token", c_int32), ("p_chosen", c_float), ("logit", c_float), ("top1_token", c_int32),
                ("p_top1", c_float), ("top2_token", c_int32), ("p_top2", c_float), ("entropy", c_float),
                ("varentropy", c_float), ("p_sampled", c_float)]


class Candidate(Structure):
    _fields_ = [("token", c_int32), ("logit", c_float), ("prob", c_float)]


class TokenView(Structure):
    _fields_ = [("position", c_int32), ("token", c_int32), ("prob", c_float), ("logit", c_float),
                ("logits", POINTER(c_float)), ("n_vocab", c_int32), ("top", POINTER(Candidate)),
                ("n_top", c_int32), ("piece", c_char_p), ("signals", POINTER(Signals))]


DECIDE_FN = CFUNCTYPE(c_int32, c_void_p, POINTER(TokenView))
BACKTRACK_FN = CFUNCTYPE(None, c_void_p, c_int32)
RESET_FN = CFUNCTYPE(None, c_void_p)
FREE_FN = CFUNCTYPE(None, c_void_p)


class OperatorVtable(Structure):
    _fields_ = [("name", c_char_p), ("decide", DECIDE_FN), ("on_backtrack", BACKTRACK_FN), ("reset", RESET_FN),
                ("free_state", FREE_FN)]


class Knobs(Structure):
    _fields_ = [("temperature", c_float), ("repeat_penalty", c_float), ("forced", c_int32)]


STAGE_SAVE_FN = CFUNCTYPE(None, c_void_p, c_void_p)
STAGE_RESTORE_FN = CFUNCTYPE(None, c_void_p, c_void_p)
STAGE_RESET_FN = CFUNCTYPE(None, c_void_p, c_void_p)
STAGE_BEFORE_FN = CFUNCTYPE(None, c_void_p, c_void_p, POINTER(Knobs))
STAGE_JUDGE_FN = CFUNCTYPE(c_int32, c_void_p, c_void_p, POINTER(TokenView))
STAGE_VIEW_FN = CFUNCTYPE(None, c_void_p, c_void_p, POINTER(TokenView))
STAGE_CHECK_FN = CFUNCTYPE(c_bool, c_void_p, c_void_p, POINTER(TokenView))
STAGE_REWIND_FN = CFUNCTYPE(None, c_void_p, c_void_p, c_int32, c_bool)


class StageVtable(Structure):
    _fields_ = [("name", c_char_p), ("snapshot_size", c_size_t), ("save", STAGE_SAVE_FN),
                ("restore", STAGE_RESTORE_FN), ("reset", STAGE_RESET_FN), ("before_sample", STAGE_BEFORE_FN),
                ("judge", STAGE_JUDGE_FN), ("accept", STAGE_VIEW_FN), ("check", STAGE_CHECK_FN),
                ("after_token", STAGE_VIEW_FN), ("on_rewind", STAGE_REWIND_FN), ("free_state", FREE_FN)]


class TreeParams(Structure):
    _fields_ = [("max_depth", c_int32), ("beam_limit", c_int32), ("cutoff", c_float), ("multiplier", c_float),
                ("split_limit", c_int32), ("stop_chars", c_char_p), ("score_sum_probs", c_bool),
                ("batched", c_bool), ("stability_weight", c_float), ("focus_weight", c_float)]


class TreeNode(Structure):
    _fields_ = [("parent", c_int32), ("token", c_int32), ("piece", c_char_p), ("prob", c_float),
                ("score", c_double), ("depth", c_int32), ("end", c_int)]


class Suggestion(Structure):
    _fields_ = [("text", c_char_p), ("tokens", POINTER(c_int32)), ("probs", POINTER(c_float)),
                ("n_tokens", c_int32), ("score", c_double), ("node", c_int32), ("end", c_int)]


class TreeResult(Structure):
    _fields_ = [("suggestions", POINTER(Suggestion)), ("n_suggestions", c_int32), ("nodes", POINTER(TreeNode)),
                ("n_nodes", c_int32), ("n_prefix_tokens", c_int32), ("n_prefix_reused", c_int32),
                ("n_levels", c_int32), ("max_live_beams", c_int32), ("n_decode_calls", c_int32),
                ("n_tokens_decoded", c_int64), ("elapsed_ms", c_double)]


class TextMetrics(Structure):
    _fields_ = [("n_outputs", c_int32), ("n_tokens", c_int64), ("rep", c_double * 5), ("diversity", c_double),
                ("seq_rep_4", c_double), ("distinct", c_double * 3), ("mean_length", c_double)]


LINE_FN = CFUNCTYPE(c_int, c_char_p, c_size_t, c_void_p)

MIRRORED = {"sm_error": Error, "sm_tokens": Tokens, "sm_signals": Signals, "sm_candidate": Candidate,
            "sm_token_view": TokenView, "sm_operator_vtable": OperatorVtable, "sm_stage_vtable": StageVtable,
            "sm_knobs": Knobs, "sm_tree_params": TreeParams, "sm_tree_node": TreeNode,
            "sm_suggestion": Suggestion, "sm_tree_result": TreeResult, "sm_text_metrics": TextMetrics}


def _library_dirs() -> list[Path]:
    """Where libselfmod_cli.so may be: $SELFMOD_LIBRARY_PATH, beside an
    installed package (PREFIX/lib/python3/dist-packages/selfmod -> PREFIX/lib),
    then the checkout's build/."""
    here = Path(__file__).resolve().parent
    dirs = [Path(p) for p in os.environ.get("SELFMOD_LIBRARY_PATH", "").split(os.pathsep) if p]
    dirs.append(here.parents[2])
    dirs.append(here.parents[1] / "build")
    return dirs


def _load() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    for d in _library_dirs():
        cli = d / "libselfmod_cli.so"
        if cli.exists():
            # libselfmod_cli's rpath finds libselfmod.so.0 and llama.cpp's libraries
            front = ctypes.CDLL(str(cli))
            return ctypes.CDLL("libselfmod.so.0"), front
    searched = ", ".join(str(d) for d in _library_dirs())
    raise ImportError(f"selfmod: libselfmod_cli.so not found (looked in {searched}; build with `make build`, "
                      "or set SELFMOD_LIBRARY_PATH to the folder that holds it)")


lib, cli = _load()


def _fn(library: ctypes.CDLL, name: str, restype, *argtypes) -> None:
    f = getattr(library, name)
    f.restype = restype
    f.argtypes = list(argtypes)


# libselfmod
_fn(lib, "sm_set_llama_logging", None, c_bool)
_fn(lib, "sm_model_path", c_char_p, c_void_p)
_fn(lib, "sm_model_description", c_char_p, c_void_p)
_fn(lib, "sm_model_n_vocab", c_int32, c_void_p)
_fn(lib, "sm_model_n_ctx_train", c_int32, c_void_p)
_fn(lib, "sm_model_n_embd", c_int32, c_void_p)
_fn(lib, "sm_model_amx_refused", c_bool, c_void_p)
_fn(lib, "sm_embed", c_int, c_void_p, POINTER(c_char_p), c_int32, c_int32, POINTER(c_float), POINTER(c_int32),
    POINTER(Error))
_fn(lib, "sm_tokenize", c_int, c_void_p, c_char_p, c_size_t, c_bool, c_bool, POINTER(Tokens), POINTER(Error))
_fn(lib, "sm_tokens_free", None, POINTER(Tokens))
_fn(lib, "sm_detokenize", c_void_p, c_void_p, POINTER(c_int32), c_int32, POINTER(c_size_t), POINTER(Error))
_fn(lib, "sm_token_to_piece", c_int32, c_void_p, c_int32, c_char_p, c_int32, c_bool)
_fn(lib, "sm_operator_new", c_void_p, POINTER(OperatorVtable), c_void_p)
_fn(lib, "sm_operator_free", None, c_void_p)
_fn(lib, "sm_stage_new", c_void_p, POINTER(StageVtable), c_void_p)
_fn(lib, "sm_stage_free", None, c_void_p)
_fn(lib, "sm_loop_n_generated", c_int32, c_void_p)
_fn(lib, "sm_loop_text", c_void_p, c_void_p, POINTER(c_size_t))
_fn(lib, "sm_loop_describe", None, c_void_p, c_char_p)
_fn(lib, "sm_loop_inject", c_int, c_void_p, c_char_p, c_size_t)
_fn(lib, "sm_loop_stop", None, c_void_p, c_char_p)
_fn(lib, "sm_tree_default_params", TreeParams)
_fn(lib, "sm_tree_params_validate", c_int, POINTER(TreeParams), POINTER(Error))
_fn(lib, "sm_tree_new", c_void_p, POINTER(c_void_p), c_int32, ctypes.c_uint32, c_int32, c_int32, POINTER(Error))
_fn(lib, "sm_tree_free", None, c_void_p)
_fn(lib, "sm_tree_expand", c_int, c_void_p, c_char_p, POINTER(TreeParams), POINTER(TreeResult))
_fn(lib, "sm_tree_result_free", None, POINTER(TreeResult))
_fn(lib, "sm_tree_last_error", c_char_p, c_void_p)
_fn(lib, "sm_tree_end_name", c_char_p, c_int)
_fn(lib, "sm_text_metrics_compute", c_int, POINTER(POINTER(c_int32)), POINTER(c_int32), c_int32,
    POINTER(TextMetrics))
_fn(lib, "sm_status_name", c_char_p, c_int)

# libselfmod_cli
_fn(cli, "smcli_models_load", c_void_p, c_int, POINTER(c_char_p), c_char_p, c_size_t)
_fn(cli, "smcli_models_free", None, c_void_p)
_fn(cli, "smcli_models_count", c_int32, c_void_p)
_fn(cli, "smcli_models_get", c_void_p, c_void_p, c_int32)
_fn(cli, "smcli_runner_new", c_void_p, c_void_p)
_fn(cli, "smcli_runner_free", None, c_void_p)
_fn(cli, "smcli_batch_new", c_void_p, c_void_p, c_int32, c_int32, c_uint32, c_int32, c_char_p, c_size_t)
_fn(cli, "smcli_runner_new_on", c_void_p, c_void_p, c_void_p, c_char_p, c_size_t)
_fn(lib, "sm_batch_free", None, c_void_p)
_fn(cli, "smcli_run", c_int, c_void_p, c_int, POINTER(c_char_p), c_char_p, POINTER(c_void_p), c_int32,
    POINTER(c_void_p), c_int32, LINE_FN, c_void_p, c_char_p, c_size_t)
_fn(cli, "smcli_chat_reset", None, c_void_p)
_fn(cli, "smcli_chat_active", c_bool, c_void_p)
_fn(cli, "smcli_flag_arity", c_int, c_char_p)
_fn(cli, "smcli_struct_size", c_size_t, c_char_p)

libc = ctypes.CDLL(None)  # free() for what the library allocates with malloc
_fn(libc, "free", None, c_void_p)

for _name, _type in MIRRORED.items():
    _c = cli.smcli_struct_size(_name.encode())
    if _c != ctypes.sizeof(_type):
        raise ImportError(f"selfmod: {_name} is {_c} bytes in the C library but {ctypes.sizeof(_type)} here: "
                          "python/selfmod/_native.py does not match include/selfmod.h")


def argv(items: list[str]):
    """A C argv (char **) of the strings, and the buffers to keep alive."""
    encoded = [s.encode("utf-8") for s in items]
    array = (c_char_p * (len(encoded) + 1))(*encoded, None)
    return array, encoded


def error_text(buf: ctypes.Array) -> str:
    return buf.value.decode("utf-8", "replace")
