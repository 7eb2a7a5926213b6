/* The introspection and intervention flags (docs/INTROSPECTION.md): their
 * options, parsing, checks and help. args.c hands them over. */
#ifndef CLI_INTRO_ARGS_H
#define CLI_INTRO_ARGS_H

#include "selfmod.h"

#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>

#define CLI_INTRO_MAX_LAYERS 256
#define CLI_INTRO_MAX_LIST 64

typedef struct cli_intro_options {
    int32_t layers[CLI_INTRO_MAX_LAYERS];  /* --introspect-layers           */
    int32_t n_layers;
    bool all_layers;
    const char *trace_file;                /* --trace-file                  */
    const char *hidden_file;               /* --hidden-states               */
    const char *control_vectors[CLI_INTRO_MAX_LIST];
    int32_t n_control_vectors;
    int32_t cv_layer_start, cv_layer_end;  /* --control-vector-layers; -1 = all */
    sm_safety_rule safety[CLI_INTRO_MAX_LIST];
    int32_t n_safety;
    const char *inject_file;               /* --inject                      */
    const char *prompt_cache;              /* --prompt-cache                */
    bool steer_rule;                       /* --steer-when / --steer-target */
} cli_intro_options;

enum {
    CLI_INTRO_FIRST_OPTION = 2000,
    OPT_INTROSPECT_LAYERS = CLI_INTRO_FIRST_OPTION,
    OPT_INTROSPECT_ATTENTION,
    OPT_TRACE_FILE,
    OPT_HIDDEN_STATES,
    OPT_ENTROPY_POLICY,
    OPT_ENTROPY_HIGH,
    OPT_ENTROPY_LOW,
    OPT_VARENTROPY_LOW,
    OPT_CONTROL_VECTOR,
    OPT_CONTROL_VECTOR_LAYERS,
    OPT_SAFETY,
    OPT_SAFETY_RETRIES,
    OPT_LOOKAHEAD,
    OPT_LOOKAHEAD_DEPTH,
    OPT_LOOKAHEAD_ENTROPY,
    OPT_LOOKAHEAD_SCORE,
    OPT_TOOLS,
    OPT_TOOL_MARKER,
    OPT_TOOL_MARKER_END,
    OPT_INJECT,
    OPT_INJECT_EVERY,
    OPT_PROMPT_CACHE,
    OPT_STEER_WHEN,
    OPT_STEER_TARGET,
};

/* Entries for getopt_long's table. */
#define CLI_INTRO_LONG_OPTIONS                                                  \
    {"introspect-layers", required_argument, NULL, OPT_INTROSPECT_LAYERS},      \
    {"introspect-attention", no_argument, NULL, OPT_INTROSPECT_ATTENTION},      \
    {"trace-file", required_argument, NULL, OPT_TRACE_FILE},                    \
    {"hidden-states", required_argument, NULL, OPT_HIDDEN_STATES},              \
    {"entropy-policy", required_argument, NULL, OPT_ENTROPY_POLICY},            \
    {"entropy-high", required_argument, NULL, OPT_ENTROPY_HIGH},                \
    {"entropy-low", required_argument, NULL, OPT_ENTROPY_LOW},                  \
    {"varentropy-low", required_argument, NULL, OPT_VARENTROPY_LOW},            \
    {"control-vector", required_argument, NULL, OPT_CONTROL_VECTOR},            \
    {"control-vector-layers", required_argument, NULL, OPT_CONTROL_VECTOR_LAYERS}, \
    {"safety", required_argument, NULL, OPT_SAFETY},                            \
    {"safety-retries", required_argument, NULL, OPT_SAFETY_RETRIES},            \
    {"lookahead", required_argument, NULL, OPT_LOOKAHEAD},                      \
    {"lookahead-depth", required_argument, NULL, OPT_LOOKAHEAD_DEPTH},          \
    {"lookahead-entropy", required_argument, NULL, OPT_LOOKAHEAD_ENTROPY},      \
    {"lookahead-score", required_argument, NULL, OPT_LOOKAHEAD_SCORE},          \
    {"tools", no_argument, NULL, OPT_TOOLS},                                    \
    {"tool-marker", required_argument, NULL, OPT_TOOL_MARKER},                  \
    {"tool-marker-end", required_argument, NULL, OPT_TOOL_MARKER_END},          \
    {"inject", required_argument, NULL, OPT_INJECT},                            \
    {"inject-every", required_argument, NULL, OPT_INJECT_EVERY},                \
    {"prompt-cache", required_argument, NULL, OPT_PROMPT_CACHE},                \
    {"steer-when", required_argument, NULL, OPT_STEER_WHEN},                    \
    {"steer-target", required_argument, NULL, OPT_STEER_TARGET},

#define CLI_INTRO_HELP                                                                          \
    "introspection and intervention (docs/INTROSPECTION.md):\n"                                 \
    "      --introspect-layers L,..|all  observe these layers' outputs per token (norm, mean,\n" \
    "                                max |x|); negative counts from the end (default: none)\n"  \
    "      --introspect-attention    also each head's attention entropy (flash attention off)\n" \
    "      --trace-file FILE         every event as a JSON line, token stats included\n"        \
    "      --hidden-states FILE.npy  the observed layers' outputs, float32 (tokens, layers, n_embd)\n" \
    "      --entropy-policy off|seed|entropix  temperature per token from its entropy (off)\n"  \
    "      --entropy-high F --entropy-low F --varentropy-low F  its thresholds (3.0, 0.5, 1.0)\n" \
    "      --control-vector FILE[:SCALE]  add a llama.cpp control vector; repeatable, summed\n" \
    "      --control-vector-layers A-B  the layers it applies to (default: all it has)\n"      \
    "      --steer-when SIGNAL<T|SIGNAL>T[:ON[:OFF]]  the control vector's strength follows a\n" \
    "                                rule: ON (1) while it holds, else OFF (0); SIGNAL is entropy,\n" \
    "                                confidence or norm@LAYER (an observed layer's norm)\n"   \
    "      --steer-target SIGNAL=TARGET:GAIN[:MIN:MAX]  closed loop: strength += GAIN *\n"     \
    "                                (TARGET - SIGNAL) per token, within MIN..MAX (-4..4)\n"    \
    "      --safety layer=L,max_abs>T|norm>T|norm_z>T[,action=resample|stop]  reject decoded\n" \
    "                                tokens whose activations break the rule; repeatable\n"     \
    "      --safety-retries N        resamples per position before stopping (3)\n"             \
    "      --lookahead K             branch the top K tokens at uncertain positions (off)\n"   \
    "      --lookahead-depth D --lookahead-entropy T  tokens per branch (4), entropy above\n"  \
    "                                which to branch (2.5)\n"                                   \
    "      --lookahead-score mean_logprob|margin|coherence  how branches are compared: likelihood,\n" \
    "                                CoT margin, or internal coherence (layer-norm stability and\n" \
    "                                attention focus too; needs --introspect-layers) (mean_logprob)\n" \
    "      --tools                   run the built-in tool on [INTROSPECT: ...] in the output\n" \
    "      --tool-marker STR         the marker's opening string (implies --tools)\n"           \
    "      --tool-marker-end STR     its closing string (default: ])\n"                       \
    "      --inject FILE --inject-every N  feed FILE's sentences into the context every N tokens\n" \
    "      --prompt-cache FILE       reuse (and save) the prompt's KV state (with --prompt)\n"  \
    "\n"

struct cli_options;

/* Applies one of the flags above; false after printing an error. */
bool cli_intro_apply(int c, const char *arg, struct cli_options *opt, FILE *err);
/* Checks that need every flag, and points the session and generation
 * parameters at the options. */
bool cli_intro_check(struct cli_options *opt, FILE *err);

#endif
