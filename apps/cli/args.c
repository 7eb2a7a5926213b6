/* Command-line flags of llama_selfmod: the original's flags with their
 * names, short forms and defaults, plus this project's additions. */
#include "args.h"
#include "common/flags.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum {
    OPT_CTX_SIZE = 1000,
    OPT_TOP_K,
    OPT_TOP_P,
    OPT_MIN_P,
    OPT_REPEAT_PENALTY,
    OPT_REPEAT_LAST_N,
    OPT_CONFIDENCE_THRESHOLD,
    OPT_CRITICAL_THRESHOLD,
    OPT_DRY_MULTIPLIER,
    OPT_TOP_N_SIGMA,
    OPT_TYPICAL,
    OPT_SAMPLERS,
    OPT_SAMPLING_SEQ,
    OPT_XTC_PROBABILITY,
    OPT_XTC_THRESHOLD,
    OPT_DYNATEMP_RANGE,
    OPT_DYNATEMP_EXP,
    OPT_MIROSTAT,
    OPT_MIROSTAT_LR,
    OPT_MIROSTAT_ENT,
    OPT_DRY_BASE,
    OPT_DRY_ALLOWED_LENGTH,
    OPT_DRY_LAST_N,
    OPT_SHARPEN_THRESHOLD,
    OPT_PRESET,
    OPT_AGGRESSIVE,
    OPT_MAX_RETRACTIONS,
    OPT_RETRACT,
    OPT_NO_RETRACT,
    OPT_NO_SELFMOD,
    OPT_N_GPU_LAYERS,
    OPT_THREADS,
    OPT_MAX_REWIND,
    OPT_SEED,
    OPT_STOP,
    OPT_OPERATOR,
    OPT_BACKTRACK_EVERY,
    OPT_MAX_BACKTRACKS,
    OPT_COMBINE,
    OPT_MEMORY_FILE,
    OPT_NO_MEMORY,
    OPT_CHAT_TEMPLATE,
    OPT_SYSTEM,
    OPT_USER_LABEL,
    OPT_ASSISTANT_LABEL,
    OPT_QUIET,
    OPT_VERBOSE,
    OPT_VERBOSE_EVENTS,
    OPT_NO_STOP_AT_BOS,
    OPT_NO_COLOR,
    OPT_JSON_STREAM,
    OPT_MEMORY_FORMAT,
    OPT_OPERATOR_INPUT,
    OPT_OPERATOR_TOP_K,
    OPT_OPERATOR_TEMPERATURE,
    OPT_BACKTRACK_EVERY_ONLY,
    OPT_WRAP_PROMPT,
    OPT_PREFILL,
    OPT_GRAMMAR,
    OPT_GRAMMAR_FILE,
    OPT_JSON_OUTPUT,
    OPT_JSON_SCHEMA,
    OPT_JSON_SCHEMA_FILE,
    OPT_CHAT_TEMPLATE_FILE,
    OPT_JINJA,
    OPT_NO_JINJA,
    OPT_BEAM_SEARCH,
    OPT_BEAM_STABILITY,
    OPT_BEAM_FOCUS,
    OPT_IGNORE_EOS,
    OPT_CONTEXT_SHIFT,
    OPT_KEEP,
    OPT_RPC,
    OPT_NO_REPACK,
    OPT_SYSTEM_FILE,
    OPT_CHAT_TEMPLATE_KWARGS,
};

static const struct option long_options[] = {
    {"model", required_argument, NULL, 'm'},
    {"prompt", required_argument, NULL, 'p'},
    {"file", required_argument, NULL, 'f'},
    {"ctx-size", required_argument, NULL, OPT_CTX_SIZE},
    {"temperature", required_argument, NULL, 't'},
    {"top-k", required_argument, NULL, OPT_TOP_K},
    {"top-p", required_argument, NULL, OPT_TOP_P},
    {"min-p", required_argument, NULL, OPT_MIN_P},
    {"repeat-penalty", required_argument, NULL, OPT_REPEAT_PENALTY},
    {"repeat-last-n", required_argument, NULL, OPT_REPEAT_LAST_N},
    {"n-predict", required_argument, NULL, 'n'},
    {"confidence-threshold", required_argument, NULL, OPT_CONFIDENCE_THRESHOLD},
    {"critical-threshold", required_argument, NULL, OPT_CRITICAL_THRESHOLD},
    {"dry-multiplier", required_argument, NULL, OPT_DRY_MULTIPLIER},
    {"top-n-sigma", required_argument, NULL, OPT_TOP_N_SIGMA},
    {"typical", required_argument, NULL, OPT_TYPICAL},
    {"samplers", required_argument, NULL, OPT_SAMPLERS},
    {"sampling-seq", required_argument, NULL, OPT_SAMPLING_SEQ},
    {"sampler-seq", required_argument, NULL, OPT_SAMPLING_SEQ},
    {"xtc-probability", required_argument, NULL, OPT_XTC_PROBABILITY},
    {"xtc-threshold", required_argument, NULL, OPT_XTC_THRESHOLD},
    {"dynatemp-range", required_argument, NULL, OPT_DYNATEMP_RANGE},
    {"dynatemp-exp", required_argument, NULL, OPT_DYNATEMP_EXP},
    {"mirostat", required_argument, NULL, OPT_MIROSTAT},
    {"mirostat-lr", required_argument, NULL, OPT_MIROSTAT_LR},
    {"mirostat-ent", required_argument, NULL, OPT_MIROSTAT_ENT},
    {"dry-base", required_argument, NULL, OPT_DRY_BASE},
    {"dry-allowed-length", required_argument, NULL, OPT_DRY_ALLOWED_LENGTH},
    {"dry-penalty-last-n", required_argument, NULL, OPT_DRY_LAST_N},
    {"sharpen-threshold", required_argument, NULL, OPT_SHARPEN_THRESHOLD},
    {"preset", required_argument, NULL, OPT_PRESET},
    {"aggressive", no_argument, NULL, OPT_AGGRESSIVE},
    {"max-retractions", required_argument, NULL, OPT_MAX_RETRACTIONS},
    {"retract", no_argument, NULL, OPT_RETRACT},
    {"no-retract", no_argument, NULL, OPT_NO_RETRACT},
    {"no-selfmod", no_argument, NULL, OPT_NO_SELFMOD},
    {"n-gpu-layers", required_argument, NULL, OPT_N_GPU_LAYERS},
    {"rpc", required_argument, NULL, OPT_RPC},
    {"no-repack", no_argument, NULL, OPT_NO_REPACK},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"max-rewind", required_argument, NULL, OPT_MAX_REWIND},
    {"seed", required_argument, NULL, OPT_SEED},
    {"stop", required_argument, NULL, OPT_STOP},
    {"operator", required_argument, NULL, OPT_OPERATOR},
    {"backtrack-every", required_argument, NULL, OPT_BACKTRACK_EVERY},
    {"backtrack-every-only", no_argument, NULL, OPT_BACKTRACK_EVERY_ONLY},
    {"operator-input", required_argument, NULL, OPT_OPERATOR_INPUT},
    {"operator-top-k", required_argument, NULL, OPT_OPERATOR_TOP_K},
    {"operator-temperature", required_argument, NULL, OPT_OPERATOR_TEMPERATURE},
    {"max-backtracks", required_argument, NULL, OPT_MAX_BACKTRACKS},
    {"combine", required_argument, NULL, OPT_COMBINE},
    {"memory-file", required_argument, NULL, OPT_MEMORY_FILE},
    {"no-memory", no_argument, NULL, OPT_NO_MEMORY},
    {"chat-template", required_argument, NULL, OPT_CHAT_TEMPLATE},
    {"system", required_argument, NULL, OPT_SYSTEM},
    {"system-prompt-file", required_argument, NULL, OPT_SYSTEM_FILE},
    {"chat-template-kwargs", required_argument, NULL, OPT_CHAT_TEMPLATE_KWARGS},
    {"user-label", required_argument, NULL, OPT_USER_LABEL},
    {"assistant-label", required_argument, NULL, OPT_ASSISTANT_LABEL},
    {"quiet", no_argument, NULL, OPT_QUIET},
    {"verbose", no_argument, NULL, OPT_VERBOSE},
    {"verbose-events", no_argument, NULL, OPT_VERBOSE_EVENTS},
    {"no-stop-at-bos", no_argument, NULL, OPT_NO_STOP_AT_BOS},
    {"ignore-eos", no_argument, NULL, OPT_IGNORE_EOS},
    {"context-shift", no_argument, NULL, OPT_CONTEXT_SHIFT},
    {"keep", required_argument, NULL, OPT_KEEP},
    {"no-color", no_argument, NULL, OPT_NO_COLOR},
    {"json-stream", optional_argument, NULL, OPT_JSON_STREAM},
    {"memory-format", required_argument, NULL, OPT_MEMORY_FORMAT},
    {"wrap-prompt", no_argument, NULL, OPT_WRAP_PROMPT},
    {"prefill", required_argument, NULL, OPT_PREFILL},
    {"grammar", required_argument, NULL, OPT_GRAMMAR},
    {"grammar-file", required_argument, NULL, OPT_GRAMMAR_FILE},
    {"json-output", no_argument, NULL, OPT_JSON_OUTPUT},
    {"json-schema", required_argument, NULL, OPT_JSON_SCHEMA},
    {"json-schema-file", required_argument, NULL, OPT_JSON_SCHEMA_FILE},
    {"chat-template-file", required_argument, NULL, OPT_CHAT_TEMPLATE_FILE},
    {"jinja", no_argument, NULL, OPT_JINJA},
    {"no-jinja", no_argument, NULL, OPT_NO_JINJA},
    {"beam-search", required_argument, NULL, OPT_BEAM_SEARCH},
    {"beam-stability", required_argument, NULL, OPT_BEAM_STABILITY},
    {"beam-focus", required_argument, NULL, OPT_BEAM_FOCUS},
    CLI_INTRO_LONG_OPTIONS
    CLI_FUSION_LONG_OPTIONS
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

int cli_flag_arity(const char *name) {
    for (const struct option *o = long_options; name && o->name; o++)
        if (strcmp(o->name, name) == 0)
            return o->has_arg == no_argument ? 0 : o->has_arg == required_argument ? 1 : 2;
    return -1;
}

/* Leading ':' makes getopt report a missing argument as ':' and stay
 * silent, so every message has this program's one format. */
static const char short_options[] = ":m:p:f:t:n:hV";

void cli_print_version(FILE *out) {
    fprintf(out, "llama_selfmod %s (llama.cpp 0.5.0)\n", SM_VERSION);
}

void cli_print_help(FILE *out) {
    fputs(
        "usage: llama_selfmod [options]\n"
        "       llama_selfmod eval|serve|steer|tune [options]   (subcommands; each takes --help)\n"
        "A self-modifying inference engine: generation adapts its own sampling from the model's\n"
        "confidence, and can retract and regenerate text. Without --prompt it runs a chat.\n"
        "\n"
        "model and context:\n"
        "  -m, --model PATH              GGUF model file (default: " CLI_DEFAULT_MODEL ")\n"
        "  -p, --prompt TEXT             generate once from TEXT; without it: interactive chat\n"
        "  -f, --file FILE               ... from FILE's text (one final newline dropped, as\n"
        "                                llama-cli does)\n"
        "      --ctx-size N              context size in tokens; 0 = the model's (default: 2048)\n"
        "      --n-gpu-layers N          layers to offload to a GPU or the RPC servers; -1 = all\n"
        "                                (default: 0; with --rpc: all)\n"
        "      --rpc HOST:PORT[,...]     ggml RPC servers (llama.cpp's ggml-rpc-server) that hold\n"
        "                                the offloaded layers, as llama.cpp's --rpc\n"
        "      --no-repack               weights as stored: no repacked or AMX buffers (llama.cpp's\n"
        "                                --no-repack; faster one-token decoding on some CPUs)\n"
        "      --threads N               CPU threads; 0 = all online cores (default: auto)\n"
        "\n"
        "sampling:\n"
        "  -t, --temperature F           initial temperature; 0 = greedy (default: 0)\n"
        "      --top-k N                 keep the N most likely tokens; 0 = all (default: 40)\n"
        "      --top-p F                 nucleus mass in (0, 1]; 1 = off (default: 0.95)\n"
        "      --min-p F                 drop tokens below F * p(top) in [0, 1) (default: 0.05)\n"
        "      --repeat-penalty F        penalty for recent tokens; 1 = off (default: 1.1)\n"
        "      --repeat-last-n N         tokens the repeat penalty looks back (default: 64)\n"
        "  -n, --n-predict N             tokens to generate; -1 = until a stop (default: 256)\n"
        "      --seed N                  random seed (default: taken from the clock, reported)\n"
        "      --dry-multiplier F        llama.cpp's DRY repetition penalty; 0 = off (default: 0)\n"
        "      --top-n-sigma F --typical F --xtc-probability F --xtc-threshold F --dynatemp-range F\n"
        "      --dynatemp-exp F --mirostat 2 --mirostat-lr F --mirostat-ent F   llama.cpp's samplers,\n"
        "                                its names and defaults (off: -1, 1, 0, 0.1, 0, 1, 0, 0.1, 5)\n"
        "      --dry-base F --dry-allowed-length N --dry-penalty-last-n N   its settings\n"
        "      --samplers LIST           only these of the chain run, e.g. \"top_k;top_p;infill\" (llama-cli's;\n"
        "                                its order: penalties;dry;top_n_sigma;top_k;typ_p;top_p;min_p;xtc;\n"
        "                                infill;temperature; infill is llama.cpp's infill sampler)\n"
        "      --sampling-seq LETTERS    the same by llama-cli's letters, e.g. \"kpi\" (edskypmxit)\n"
        "                                (defaults: 1.75, 2, -1 = the whole context)\n"
        "      --stop STR                stop when STR appears; repeatable (default: none)\n"
        "      --no-stop-at-bos          go on when the model generates BOS, which models trained\n"
        "                                on BOS-separated documents use to start a new one\n"
        "                                (default: stop there, as llama2.c's run.c does)\n"
        "      --ignore-eos              never sample an end-of-generation token: go on to -n or a\n"
        "                                stop, as llama.cpp's --ignore-eos (default: off)\n"
        "      --context-shift           a full context drops half of what follows the first --keep\n"
        "                                tokens and generation goes on, as llama.cpp's (default: stop)\n"
        "      --keep N                  prompt tokens a context shift keeps; -1 = all (default: 0)\n"
        "\n"
        "self-modification:\n"
        "      --confidence-threshold F  mean confidence below which T and the repeat penalty\n"
        "                                rise (default: 0.5)\n"
        "      --critical-threshold F    mean confidence below which to retract (default: 0.35)\n"
        "      --sharpen-threshold F     mean confidence above which T falls (default: 0.85)\n"
        "      --preset NAME             the policy: calibrated (the default: relative to the\n"
        "                                text's own confidence, retracts repeated 4-grams),\n"
        "                                original (the Rust llama_selfmod's rules), fixed (the\n"
        "                                first policy; the threshold flags and --aggressive\n"
        "                                choose it when no --preset is given), tuned (fixed with\n"
        "                                --confidence-threshold 0 --sharpen-threshold 0.5);\n"
        "                                or a FILE.json that llama_selfmod tune wrote;\n"
        "                                backtracking-llm: its defaults (top-k 50, T 1, nothing\n"
        "                                else, no self-modification) and its operator input.\n"
        "                                Other flags refine a preset wherever they stand\n"
        "      --aggressive              larger adjustments, exploration bursts, retraction\n"
        "                                (default: off)\n"
        "      --max-retractions N       retractions per generation at most (default: 3)\n"
        "      --retract                 retract at critical confidence even without --aggressive\n"
        "                                (the fixed policy's rule)\n"
        "      --no-retract              never retract, even with --aggressive (default: the\n"
        "                                calibrated policy retracts repeated 4-grams; the fixed\n"
        "                                and original ones retract only with --aggressive)\n"
        "      --no-selfmod              no adaptation at all: plain sampling (default: on)\n"
        "      --max-rewind N            deepest rewind without re-decoding (default: 64)\n"
        "\n"
        "backtracking operators:\n"
        "      --operator NAME[:k=v,..]  add an operator, e.g. probability_threshold:min_probability=0.1;\n"
        "                                repeatable (default: none; --operator help lists them)\n"
        "      --backtrack-every N       heed the operators every N tokens (default: 1)\n"
        "      --backtrack-every-only    show them only every N-th token, as backtracking-llm did\n"
        "                                (default: they see every token, so their history is whole)\n"
        "      --operator-input MODE     full: raw p over the whole vocabulary at T 1 and the top\n"
        "                                --operator-top-k (default 10); original: backtracking-llm's\n"
        "                                top-k (default 50) of logits / T, renormalised, and a count k\n"
        "                                removes the token and k before it (default: full)\n"
        "      --operator-top-k N        candidates in the operators' view\n"
        "      --operator-temperature T  original input: divide by T (default 0: the token's own)\n"
        "      --max-backtracks N        backtracks per generation, then stop (default: 64)\n"
        "      --combine first|max       several operators: the first that fires, or the largest\n"
        "                                count (default: first)\n"
        "\n"
        "chat (interactive mode):\n"
        "      --chat-template NAME      a llama.cpp template name (default: the model's own,\n"
        "                                else the plain User:/Assistant: form)\n"
        "      --chat-template-file F    a Jinja chat template from a file\n"
        "      --chat-template-kwargs JSON  the template's variables, e.g. '{\"enable_thinking\": false}'\n"
        "      --jinja, --no-jinja       render the model's template with llama.cpp's Jinja engine,\n"
        "                                as llama-server does (default), or by its heuristics\n"
        "      --system PROMPT           system prompt (default: none)\n"
        "      --system-prompt-file FILE ... from FILE (-sysf)\n"
        "      --user-label STR          plain form's user label (default: \"User:\")\n"
        "      --assistant-label STR     plain form's assistant label (default: \"Assistant:\")\n"
        "\n"
        CLI_INTRO_HELP
        CLI_FUSION_HELP
        "output:\n"
        "      --memory-file PATH        append one JSON line per generation; \"\" = off\n"
        "                                (default: " CLI_DEFAULT_MEMORY_FILE ")\n"
        "      --no-memory               do not write the memory file\n"
        "      --memory-format FORMAT    native (default) or original: the Rust llama_selfmod's\n"
        "                                record (CRITICAL_RETRACT, FUSION_SAMPLE with fusion_data)\n"
        "      --json-stream[=FORMAT]    stdout carries only JSON events, one per line: native\n"
        "                                (start/token/done), or original: the Rust llama_selfmod's\n"
        "                                init/token/modification/complete, which its GUI reads\n"
        "                                (default FORMAT: $LLAMA_SELFMOD_JSON_STREAM, else native)\n"
        "      --wrap-prompt             send -p as \"User: PROMPT\\nAssistant:\", as the original did\n"
        "      --grammar GBNF            the text follows this llama.cpp grammar (root rule: root)\n"
        "      --grammar-file FILE       ... the grammar in FILE\n"
        "      --json-output             ... one JSON object\n"
        "      --json-schema SCHEMA      ... JSON that follows this JSON schema (llama.cpp's converter)\n"
        "      --json-schema-file FILE   ... the schema in FILE\n"
        "      --beam-search W           a beam search of width W to -n tokens instead of sampling: the\n"
        "                                best beam's text (--json-stream: every beam); -p only\n"
        "      --beam-stability F --beam-focus F  activation scoring: each token also adds F times\n"
        "                                the observed layers' norm stability / attention focus\n"
        "                                (needs --introspect-layers; default: 0, likelihood only)\n"
        "      --prefill TEXT            the answer begins with TEXT (its tokens are forced, then the\n"
        "                                model goes on; every chat turn too)\n"
        "      --quiet                   no event lines or summary\n"
        "      --verbose                 llama.cpp's own log lines too (default: hidden)\n"
        "      --verbose-events          event lines with descriptions, and the settings used\n"
        "      --no-color                no colors on the terminal (also: NO_COLOR set)\n"
        "  -h, --help                    this help\n"
        "  -V, --version                 the version\n",
        out);
}

/* ------------------------------------------------------------------ */
/* Strict number parsing: the whole text must be the number.           */
/* ------------------------------------------------------------------ */

static bool report(FILE *err, const char *flag, const char *value, const char *expected) {
    return flag_invalid(err, "llama_selfmod", flag, value, expected);
}

static bool parse_int_in(FILE *err, const char *flag, const char *text, long lo, long hi,
                         const char *expected, int32_t *out) {
    return flag_int_in(err, "llama_selfmod", flag, text, lo, hi, expected, out);
}

typedef enum { OPEN, CLOSED } bound;

/* A float in the interval between lo and hi, each end open or closed. */
static bool parse_float_in(FILE *err, const char *flag, const char *text, float lo, bound lo_b,
                           float hi, bound hi_b, const char *expected, float *out) {
    float v;
    bool ok = flag_float(text, &v);
    if (ok) ok = lo_b == CLOSED ? v >= lo : v > lo;
    if (ok) ok = hi_b == CLOSED ? v <= hi : v < hi;
    if (!ok) return report(err, flag, text, expected);
    *out = v;
    return true;
}

static bool parse_seed(FILE *err, const char *text, uint64_t *out) {
    if (flag_u64(text, out)) return true;
    return report(err, "--seed", text, "an integer in [0, 18446744073709551615]");
}

/* A seed that differs from run to run; it is reported so a run can be
 * repeated with --seed. Kept below 2^32 so it is easy to type back. */
static uint64_t seed_from_clock(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_sec * 1000000007ULL ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 16);
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x & 0xffffffffULL;
}

static bool add_to_list(FILE *err, const char *flag, const char *value, const char **list,
                        int32_t *n) {
    if (*n >= CLI_MAX_LIST) {
        fprintf(err, "llama_selfmod: error: %s given more than %d times\n", flag, CLI_MAX_LIST);
        return false;
    }
    list[(*n)++] = value;
    return true;
}

static void set_defaults(cli_options *opt) {
    memset(opt, 0, sizeof *opt);
    opt->model_path = CLI_DEFAULT_MODEL;
    opt->memory_file = CLI_DEFAULT_MEMORY_FILE;
    opt->session = sm_session_default_params();
    opt->n_gpu_layers = 0;
    opt->gen = sm_gen_default_params();
    opt->chat = sm_chat_default_params();
}

/* --preset, applied before every other flag so that they refine it
 * wherever they stand (a preset that sets T must not undo a -t before it). */
static bool apply_preset(const char *arg, cli_options *opt, FILE *err) {
    sm_error invalid;
    opt->preset_given = true;
    bool file = strchr(arg, '/') || strstr(arg, ".json"); /* from llama_selfmod tune */
    if ((file ? sm_gen_params_load_preset(arg, &opt->gen, &invalid) : sm_gen_params_preset(&opt->gen, arg, &invalid)) ==
        SM_OK)
        return true;
    fprintf(err, "llama_selfmod: error: --preset: %s\n", invalid.message);
    return false;
}

static bool refuse_two_prompts(FILE *err) {
    fprintf(err, "llama_selfmod: error: -p/--prompt and -f/--file both give the prompt: give one\n");
    return false;
}

/* The text of a flag's file into *owned (replacing what an earlier one
 * read), one final newline dropped as llama.cpp does; *text points at it. */
static bool read_text_flag(FILE *err, const char *flag, const char *path, char **owned, const char **text) {
    char *read = flag_read_file(path, 1u << 20);
    if (!read) {
        fprintf(err, "llama_selfmod: error: %s: cannot read '%s': %s\n", flag, path,
                errno == EFBIG ? "larger than 1 MB" : strerror(errno));
        return false;
    }
    size_t len = strlen(read);
    if (len > 0 && read[len - 1] == '\n') read[len - 1] = '\0';
    free(*owned);
    *owned = read;
    *text = read;
    return true;
}

void cli_options_free(cli_options *opt) {
    if (!opt) return;
    for (size_t i = 0; i < sizeof opt->file_texts / sizeof *opt->file_texts; i++) {
        free(opt->file_texts[i]);
        opt->file_texts[i] = NULL;
    }
}

/* Applies one flag. Returns false after printing an error. */
static bool apply_option(int c, const char *arg, cli_options *opt, FILE *err) {
    sm_sampling_params *s = &opt->gen.sampling;
    sm_policy_params *p = &opt->gen.policy;
    int32_t n;
    if (c >= CLI_FUSION_FIRST_OPTION) return cli_fusion_apply(c, arg, &opt->fusion, &opt->gen.fusion, err);
    if (c >= CLI_INTRO_FIRST_OPTION) return cli_intro_apply(c, arg, opt, err);
    switch (c) {
    case 'm':
        opt->model_path = arg;
        opt->model_given = true;
        return true;
    case 'p':
        if (opt->prompt_file) return refuse_two_prompts(err);
        opt->prompt = arg;
        return true;
    case 'f':
        if (opt->prompt && !opt->prompt_file) return refuse_two_prompts(err);
        opt->prompt_file = arg;
        return read_text_flag(err, "-f/--file", arg, &opt->file_texts[0], &opt->prompt);
    case OPT_CTX_SIZE:
        if (!parse_int_in(err, "--ctx-size", arg, 0, INT32_MAX, "an integer >= 0 (0 = the model's)", &n))
            return false;
        opt->session.n_ctx = (uint32_t)n;
        opt->ctx_size_given = true;
        return true;
    case 't':
        return parse_float_in(err, "--temperature", arg, 0.0f, CLOSED, 100.0f, CLOSED,
                              "a number in [0, 100]", &s->temperature);
    case OPT_TOP_K:
        return parse_int_in(err, "--top-k", arg, 0, INT32_MAX, "an integer >= 0", &s->top_k);
    case OPT_TOP_P:
        return parse_float_in(err, "--top-p", arg, 0.0f, OPEN, 1.0f, CLOSED, "a number in (0, 1]",
                              &s->top_p);
    case OPT_MIN_P:
        return parse_float_in(err, "--min-p", arg, 0.0f, CLOSED, 1.0f, OPEN, "a number in [0, 1)",
                              &s->min_p);
    case OPT_REPEAT_PENALTY:
        return parse_float_in(err, "--repeat-penalty", arg, 0.0f, OPEN, 100.0f, CLOSED,
                              "a number in (0, 100]", &s->repeat_penalty);
    case OPT_REPEAT_LAST_N:
        return parse_int_in(err, "--repeat-last-n", arg, 0, INT32_MAX, "an integer >= 0",
                            &s->repeat_last_n);
    case 'n':
        return parse_int_in(err, "--n-predict", arg, -1, INT32_MAX,
                            "an integer >= 0, or -1 for no limit", &opt->gen.n_predict);
    case OPT_TOP_N_SIGMA:
        return parse_float_in(err, "--top-n-sigma", arg, -1.0f, CLOSED, 100.0f, CLOSED, "a number <= 100 (-1 = off)",
                              &s->top_n_sigma);
    case OPT_SAMPLERS: /* applied once every flag is read: they turn the others off */
        opt->samplers = arg;
        return true;
    case OPT_SAMPLING_SEQ:
        opt->sampling_seq = arg;
        return true;
    case OPT_TYPICAL:
        return parse_float_in(err, "--typical", arg, 0.0f, CLOSED, 1.0f, CLOSED, "a number in [0, 1] (1 = off)", &s->typical_p);
    case OPT_XTC_PROBABILITY:
        return parse_float_in(err, "--xtc-probability", arg, 0.0f, CLOSED, 1.0f, CLOSED, "a number in [0, 1]",
                              &s->xtc_probability);
    case OPT_XTC_THRESHOLD:
        return parse_float_in(err, "--xtc-threshold", arg, 0.0f, CLOSED, 1.0f, CLOSED, "a number in [0, 1]",
                              &s->xtc_threshold);
    case OPT_DYNATEMP_RANGE:
        return parse_float_in(err, "--dynatemp-range", arg, 0.0f, CLOSED, 100.0f, CLOSED, "a number in [0, 100]",
                              &s->dynatemp_range);
    case OPT_DYNATEMP_EXP:
        return parse_float_in(err, "--dynatemp-exp", arg, 0.0f, CLOSED, 100.0f, CLOSED, "a number in [0, 100]",
                              &s->dynatemp_exponent);
    case OPT_MIROSTAT:
        if (strcmp(arg, "0") == 0) s->mirostat = 0;
        else if (strcmp(arg, "2") == 0) s->mirostat = 2;
        else return report(err, "--mirostat", arg, "0 (off) or 2 (mirostat v2)");
        return true;
    case OPT_MIROSTAT_LR:
        return parse_float_in(err, "--mirostat-lr", arg, 0.0f, CLOSED, 10.0f, CLOSED, "a number in [0, 10]", &s->mirostat_eta);
    case OPT_MIROSTAT_ENT:
        return parse_float_in(err, "--mirostat-ent", arg, 0.0f, CLOSED, 100.0f, CLOSED, "a number in [0, 100]",
                              &s->mirostat_tau);
    case OPT_DRY_MULTIPLIER:
        return parse_float_in(err, "--dry-multiplier", arg, 0.0f, CLOSED, 100.0f, CLOSED,
                              "a number in [0, 100] (0 = off)", &s->dry_multiplier);
    case OPT_DRY_BASE:
        return parse_float_in(err, "--dry-base", arg, 1.0f, CLOSED, 100.0f, CLOSED, "a number in [1, 100]",
                              &s->dry_base);
    case OPT_DRY_ALLOWED_LENGTH:
        return parse_int_in(err, "--dry-allowed-length", arg, 1, INT32_MAX, "an integer >= 1",
                            &s->dry_allowed_length);
    case OPT_DRY_LAST_N:
        return parse_int_in(err, "--dry-penalty-last-n", arg, -1, INT32_MAX,
                            "an integer >= 0, or -1 for the whole context", &s->dry_penalty_last_n);
    case OPT_CRITICAL_THRESHOLD:
        opt->critical_given = true;
        return parse_float_in(err, "--critical-threshold", arg, 0.0f, CLOSED, 1.0f, CLOSED,
                              "a number in [0, 1]", &p->critical_threshold);
    case OPT_SHARPEN_THRESHOLD:
        opt->sharpen_given = true;
        return parse_float_in(err, "--sharpen-threshold", arg, 0.0f, CLOSED, 1.0f, CLOSED,
                              "a number in [0, 1]", &p->sharpen_threshold);
    case OPT_PRESET: return true; /* applied before the other flags: apply_preset */
    case OPT_CONFIDENCE_THRESHOLD:
        opt->confidence_given = true;
        return parse_float_in(err, "--confidence-threshold", arg, 0.0f, CLOSED, 1.0f, CLOSED,
                              "a number in [0, 1]", &p->confidence_threshold);
    case OPT_AGGRESSIVE: p->aggressive = true; return true;
    case OPT_MAX_RETRACTIONS:
        opt->max_retractions_given = true;
        return parse_int_in(err, "--max-retractions", arg, 0, INT32_MAX, "an integer >= 0",
                            &p->max_retractions);
    case OPT_RETRACT: p->retract = 1; return true;
    case OPT_NO_RETRACT: p->retract = 0; return true;
    case OPT_NO_SELFMOD: p->enabled = false; return true;
    case OPT_N_GPU_LAYERS:
        opt->n_gpu_layers_given = true;
        return parse_int_in(err, "--n-gpu-layers", arg, -1, INT32_MAX,
                            "an integer >= 0, or -1 for all", &opt->n_gpu_layers);
    case OPT_RPC:
        opt->rpc_servers = arg;
        return flag_endpoints(err, "llama_selfmod", "--rpc", arg);
    case OPT_NO_REPACK: opt->no_repack = true; return true;
    case OPT_THREADS:
        return parse_int_in(err, "--threads", arg, 0, 1024, "an integer in [0, 1024] (0 = auto)",
                            &opt->session.n_threads);
    case OPT_MAX_REWIND:
        return parse_int_in(err, "--max-rewind", arg, 1, 1 << 20, "an integer >= 1",
                            &opt->session.max_rewind);
    case OPT_SEED:
        opt->seed_given = true;
        return parse_seed(err, arg, &s->seed);
    case OPT_STOP:
        if (!*arg) {
            fprintf(err, "llama_selfmod: error: --stop needs a non-empty string\n");
            return false;
        }
        return add_to_list(err, "--stop", arg, opt->stops, &opt->n_stops);
    case OPT_OPERATOR:
        return add_to_list(err, "--operator", arg, opt->operator_specs, &opt->n_operator_specs);
    case OPT_BACKTRACK_EVERY:
        return parse_int_in(err, "--backtrack-every", arg, 1, INT32_MAX, "an integer >= 1",
                            &opt->gen.backtrack.every_n);
    case OPT_BACKTRACK_EVERY_ONLY: opt->gen.backtrack.every_n_only = true; return true;
    case OPT_OPERATOR_INPUT:
        if (strcmp(arg, "full") == 0) opt->gen.backtrack.input = SM_OPERATOR_INPUT_FULL;
        else if (strcmp(arg, "original") == 0) {
            opt->gen.backtrack.input = SM_OPERATOR_INPUT_ORIGINAL;
            if (!opt->operator_top_k_given) opt->gen.backtrack.top_n_view = 50; /* its top-k */
        } else return report(err, "--operator-input", arg, "full or original");
        return true;
    case OPT_OPERATOR_TOP_K:
        opt->operator_top_k_given = true;
        return parse_int_in(err, "--operator-top-k", arg, 1, 1000, "an integer in [1, 1000]",
                            &opt->gen.backtrack.top_n_view);
    case OPT_OPERATOR_TEMPERATURE:
        return parse_float_in(err, "--operator-temperature", arg, 0.0f, CLOSED, 100.0f, CLOSED,
                              "a number in [0, 100] (0 = the token's own)", &opt->gen.backtrack.input_temperature);
    case OPT_MAX_BACKTRACKS:
        return parse_int_in(err, "--max-backtracks", arg, 0, INT32_MAX, "an integer >= 0",
                            &opt->gen.backtrack.max_backtracks);
    case OPT_COMBINE:
        if (strcmp(arg, "first") == 0) opt->gen.backtrack.combine = SM_COMBINE_FIRST;
        else if (strcmp(arg, "max") == 0) opt->gen.backtrack.combine = SM_COMBINE_MAX;
        else return report(err, "--combine", arg, "first or max");
        return true;
    case OPT_MEMORY_FILE: opt->memory_file = *arg ? arg : NULL; return true;
    case OPT_NO_MEMORY: opt->memory_file = NULL; return true;
    case OPT_CHAT_TEMPLATE: opt->chat.template_name = arg; return true;
    case OPT_SYSTEM: opt->chat.system_prompt = arg; return true;
    case OPT_CHAT_TEMPLATE_KWARGS: opt->chat.template_kwargs = arg; return true; /* the chat checks it */
    case OPT_SYSTEM_FILE:
        return read_text_flag(err, "--system-prompt-file", arg, &opt->file_texts[1], &opt->chat.system_prompt);
    case OPT_USER_LABEL: opt->chat.fallback_user = arg; return true;
    case OPT_ASSISTANT_LABEL: opt->chat.fallback_assistant = arg; return true;
    case OPT_QUIET: opt->quiet = true; return true;
    case OPT_VERBOSE: opt->verbose = true; return true;
    case OPT_NO_STOP_AT_BOS: opt->gen.stop_at_bos = false; return true;
    case OPT_IGNORE_EOS: opt->gen.ignore_eos = true; return true;
    case OPT_CONTEXT_SHIFT: opt->gen.context_shift = true; return true;
    case OPT_KEEP:
        return parse_int_in(err, "--keep", arg, -1, INT32_MAX, "an integer >= 0, or -1 for the whole prompt",
                            &opt->gen.n_keep);
    case OPT_VERBOSE_EVENTS: opt->verbose_events = true; return true;
    case OPT_NO_COLOR: opt->no_color = true; return true;
    case OPT_JSON_STREAM: {
        /* A front-end that passes a fixed command line (the original's GUI)
         * chooses the format through the environment. */
        const char *format = arg ? arg : getenv("LLAMA_SELFMOD_JSON_STREAM");
        opt->json_stream = true;
        if (!format || !*format || strcmp(format, "native") == 0) opt->json_original = false;
        else if (strcmp(format, "original") == 0) opt->json_original = true;
        else return report(err, arg ? "--json-stream" : "LLAMA_SELFMOD_JSON_STREAM", format, "native or original");
        return true;
    }
    case OPT_MEMORY_FORMAT:
        if (!sm_memlog_format_from_name(arg, &opt->memory_format))
            return report(err, "--memory-format", arg, "native or original");
        return true;
    case OPT_WRAP_PROMPT: opt->wrap_prompt = true; return true;
    case OPT_BEAM_SEARCH:
        return parse_int_in(err, "--beam-search", arg, 1, 64, "a beam width in [1, 64]", &opt->beam_width);
    case OPT_BEAM_STABILITY:
        return parse_float_in(err, "--beam-stability", arg, 0.0f, CLOSED, 100.0f, CLOSED, "a weight in [0, 100]",
                              &opt->beam_stability);
    case OPT_BEAM_FOCUS:
        return parse_float_in(err, "--beam-focus", arg, 0.0f, CLOSED, 100.0f, CLOSED, "a weight in [0, 100]",
                              &opt->beam_focus);
    case OPT_GRAMMAR:
    case OPT_GRAMMAR_FILE:
    case OPT_JSON_OUTPUT:
    case OPT_JSON_SCHEMA:
    case OPT_JSON_SCHEMA_FILE:
        if (opt->grammar || opt->grammar_file || opt->json_output || opt->json_schema || opt->json_schema_file) {
            fprintf(err, "llama_selfmod: error: give one of --grammar, --grammar-file, --json-output, "
                         "--json-schema and --json-schema-file\n");
            return false;
        }
        if (c == OPT_GRAMMAR) opt->grammar = arg;
        else if (c == OPT_GRAMMAR_FILE) opt->grammar_file = arg;
        else if (c == OPT_JSON_SCHEMA) opt->json_schema = arg;
        else if (c == OPT_JSON_SCHEMA_FILE) opt->json_schema_file = arg;
        else opt->json_output = true;
        return true;
    case OPT_CHAT_TEMPLATE_FILE: opt->chat_template_file = arg; return true;
    case OPT_JINJA: opt->chat.jinja = true; return true;
    case OPT_NO_JINJA: opt->chat.jinja = false; return true;
    case OPT_PREFILL:
        if (!*arg) return report(err, "--prefill", arg, "some text (the answer's first words)");
        opt->prefill = arg;
        return true;
    }
    return false;
}

/* The flag as the user typed it, for messages about it. */
static const char *typed_flag(char **argv, int index) {
    return index > 0 && argv[index - 1] ? argv[index - 1] : "?";
}

/* Thresholds the user set that contradict each other: retraction below
 * heating below sharpening (0 switches heating off). */
static bool check_thresholds(cli_options *opt, FILE *err) {
    sm_policy_params *p = &opt->gen.policy;
    if (p->style == SM_POLICY_CALIBRATED) { /* it has no absolute thresholds and no bursts */
        const char *flag = opt->confidence_given ? "--confidence-threshold"
                           : opt->critical_given ? "--critical-threshold"
                           : opt->sharpen_given  ? "--sharpen-threshold"
                           : p->aggressive       ? "--aggressive"
                           : p->retract == 1     ? "--retract"
                                                 : NULL;
        /* Without --preset these flags choose the policy they belong to,
         * as they did before the calibrated policy became the default. */
        if (flag && !opt->preset_given) {
            p->style = SM_POLICY_FIXED;
            flag = NULL;
        }
        if (flag) {
            fprintf(err, "llama_selfmod: error: %s belongs to the fixed and original policies, not --preset calibrated "
                         "(which moves T relative to the text's own confidence and retracts repeated 4-grams)\n", flag);
            return false;
        }
    }
    if ((opt->critical_given || opt->confidence_given) && p->confidence_threshold > 0 &&
        p->critical_threshold > p->confidence_threshold) {
        fprintf(err, "llama_selfmod: error: --critical-threshold %g is above --confidence-threshold %g: retraction "
                     "must need lower confidence than heating\n", p->critical_threshold, p->confidence_threshold);
        return false;
    }
    if ((opt->sharpen_given || opt->confidence_given) && p->sharpen_threshold < p->confidence_threshold) {
        fprintf(err, "llama_selfmod: error: --sharpen-threshold %g is below --confidence-threshold %g: the policy "
                     "would heat and cool at once\n", p->sharpen_threshold, p->confidence_threshold);
        return false;
    }
    return true;
}

/* Flags that do nothing in this combination: said once, not refused. */
static void warn_inert(const cli_options *opt, FILE *err) {
    /* the one-shot prompt is raw text: the chat's settings shape nothing */
    const char *chat_only = !opt->prompt ? NULL
                            : opt->file_texts[1] ? "--system-prompt-file"
                            : opt->chat.system_prompt ? "--system"
                            : opt->chat.template_kwargs ? "--chat-template-kwargs" : NULL;
    if (chat_only)
        fprintf(err, "llama_selfmod: warning: %s has no effect with -p/-f: the prompt is given as raw text "
                     "(leave out -p for a chat)\n", chat_only);
    const sm_policy_params *p = &opt->gen.policy;
    bool retracts = p->style == SM_POLICY_CALIBRATED ? p->enabled && p->retract != 0
                                                     : p->enabled && (p->retract == 1 || (p->retract == -1 && p->aggressive));
    if (retracts) return;
    const char *why = !p->enabled ? "--no-selfmod is given" : "retraction is off (it needs --aggressive or --retract)";
    if (opt->max_retractions_given) fprintf(err, "llama_selfmod: warning: --max-retractions has no effect: %s\n", why);
    if (opt->critical_given) fprintf(err, "llama_selfmod: warning: --critical-threshold has no effect: %s\n", why);
}

/* --samplers "top_k;top_p" or --sampling-seq "kp": only those run
 * (sm_sampling_params_set_samplers). */
static bool apply_samplers(cli_options *opt, FILE *err) {
    enum { MAX_SAMPLERS = 32 };
    sm_error why;
    if (opt->samplers && opt->sampling_seq) {
        fprintf(err, "llama_selfmod: error: --samplers and --sampling-seq both give the samplers: give one\n");
        return false;
    }
    if (opt->sampling_seq) {
        if (sm_sampling_params_set_sampler_letters(&opt->gen.sampling, opt->sampling_seq, &why) == SM_OK) return true;
        fprintf(err, "llama_selfmod: error: --sampling-seq: %s\n", why.message);
        return false;
    }
    char copy[512];
    const char *names[MAX_SAMPLERS];
    int32_t n = 0;
    if (strlen(opt->samplers) >= sizeof copy) {
        fprintf(err, "llama_selfmod: error: --samplers: too long\n");
        return false;
    }
    strcpy(copy, opt->samplers);
    /* llama-cli separates them with ";"; a list from Python comes with "," */
    for (char *save = NULL, *name = strtok_r(copy, ";,", &save); name; name = strtok_r(NULL, ";,", &save)) {
        if (n == MAX_SAMPLERS) {
            fprintf(err, "llama_selfmod: error: --samplers: at most %d names\n", MAX_SAMPLERS);
            return false;
        }
        names[n++] = name;
    }
    if (sm_sampling_params_set_samplers(&opt->gen.sampling, names, n, &why) == SM_OK) return true;
    fprintf(err, "llama_selfmod: error: --%s\n", why.message);
    return false;
}

/* Checks that need every flag: the library's own validation of the
 * generation parameters, and the prompt. */
static bool check_combination(cli_options *opt, FILE *err) {
    if ((opt->samplers || opt->sampling_seq) && !apply_samplers(opt, err)) return false;
    if (opt->model_given && opt->fusion.n_models > 0) {
        fprintf(err, "llama_selfmod: error: both -m/--model and --models given: list every model in --models\n");
        return false;
    }
    if (!check_thresholds(opt, err)) return false;
    warn_inert(opt, err);
    if (opt->beam_width > 0) {
        const char *clash = !opt->prompt ? "interactive mode (give -p)"
                            : opt->n_operator_specs > 0 ? "--operator"
                            : opt->prefill ? "--prefill"
                            : opt->gen.interventions.lookahead.k > 0 ? "--lookahead"
                            : opt->intro.n_safety > 0 ? "--safety"
                            : opt->intro.steer_rule ? "--steer-when/--steer-target"
                            : opt->intro.inject_file ? "--inject"
                            : opt->gen.interventions.tools ? "--tools"
                            : opt->json_original ? "--json-stream=original" : NULL;
        if (clash) {
            fprintf(err, "llama_selfmod: error: --beam-search searches beams and samples nothing: not with %s\n", clash);
            return false;
        }
        if ((opt->beam_stability > 0 || opt->beam_focus > 0) && opt->intro.n_layers == 0) {
            fprintf(err, "llama_selfmod: error: --beam-stability and --beam-focus read activations: give "
                         "--introspect-layers L,.. (at most 16)\n");
            return false;
        }
    } else if (opt->beam_stability > 0 || opt->beam_focus > 0) {
        fprintf(err, "llama_selfmod: error: --beam-stability and --beam-focus weigh --beam-search's beams\n");
        return false;
    }
    if (opt->wrap_prompt && !opt->prompt) {
        fprintf(err, "llama_selfmod: error: --wrap-prompt wraps the one-shot prompt: give it with -p (interactive "
                     "mode already uses \"User:\"/\"Assistant:\" where the model has no chat template)\n");
        return false;
    }
    if (opt->prompt && !*opt->prompt && opt->prompt_file) {
        fprintf(err, "llama_selfmod: error: -f/--file '%s' is empty: the prompt needs some text\n", opt->prompt_file);
        return false;
    }
    if (opt->prompt && !*opt->prompt) {
        fprintf(err, "llama_selfmod: error: empty prompt (--prompt \"\"): give some text, or leave "
                     "out --prompt for interactive mode\n");
        return false;
    }
    if (!*opt->model_path) {
        fprintf(err, "llama_selfmod: error: empty model path (--model \"\")\n");
        return false;
    }
    opt->gen.stop_strings = opt->stops;
    opt->gen.n_stop_strings = opt->n_stops;
    if (!cli_intro_check(opt, err)) return false;
    if (!cli_fusion_check(&opt->fusion, &opt->gen.fusion, err)) return false;
    sm_error invalid;
    if (sm_gen_params_validate(&opt->gen, &invalid) != SM_OK) {
        fprintf(err, "llama_selfmod: error: invalid parameters: %s\n", invalid.message);
        return false;
    }
    return true;
}

/* llama-cli's names for flags this program has (its -t is threads; ours,
 * the original llama_selfmod's, is the temperature) */
static const flag_alias LLAMA_ALIASES[] = {
    {"-ngl", "--n-gpu-layers"}, {"-nr", "--no-repack"}, {"-c", "--ctx-size"}, {"-s", "--seed"},
    {"-sys", "--system"}, {"-sysf", "--system-prompt-file"}, {NULL, NULL}};

static cli_parse_outcome parse_args(int argc, char **argv, cli_options *opt, FILE *err) {
    set_defaults(opt);
    if (!flag_llama_aliases(argc, argv, short_options, long_options, LLAMA_ALIASES, err, "llama_selfmod"))
        return CLI_PARSE_ERROR;
    opterr = 0;
    int c;
    /* First the presets (the last one given wins), then every other flag. */
    optind = 0; /* 0, not 1: glibc then also forgets a short-option group left half-read */
    while ((c = getopt_long(argc, argv, short_options, long_options, NULL)) != -1)
        if (c == OPT_PRESET && !apply_preset(optarg, opt, err)) return CLI_PARSE_ERROR;
    optind = 0;
    while ((c = getopt_long(argc, argv, short_options, long_options, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_print_help(stdout);
            return CLI_PARSE_EXIT_OK;
        case 'V':
            cli_print_version(stdout);
            return CLI_PARSE_EXIT_OK;
        case ':':
            fprintf(err, "llama_selfmod: error: %s needs a value (see --help)\n",
                    typed_flag(argv, optind));
            return CLI_PARSE_ERROR;
        case '?':
            if (optopt > 0 && optopt < 128 && strchr(short_options, optopt))
                fprintf(err, "llama_selfmod: error: -%c needs a value (see --help)\n", optopt);
            else if (optopt > 0 && optopt < 128 && isprint(optopt))
                fprintf(err, "llama_selfmod: error: unknown flag '-%c' (see --help)\n", optopt);
            else if (optopt >= 128 && strchr(typed_flag(argv, optind), '='))
                /* a flag that takes no value, given one ("--quiet=1") */
                fprintf(err, "llama_selfmod: error: '%s': this flag takes no value (see --help)\n",
                        typed_flag(argv, optind));
            else fprintf(err, "llama_selfmod: error: unknown flag '%s' (see --help)\n", typed_flag(argv, optind));
            return CLI_PARSE_ERROR;
        default:
            if (!apply_option(c, optarg, opt, err)) return CLI_PARSE_ERROR;
        }
    }
    if (optind < argc) {
        fprintf(err, "llama_selfmod: error: unexpected argument '%s' (the model goes after -m, "
                     "the prompt after -p)\n", argv[optind]);
        return CLI_PARSE_ERROR;
    }
    if (!opt->seed_given) opt->gen.sampling.seed = seed_from_clock();
    return check_combination(opt, err) ? CLI_PARSE_RUN : CLI_PARSE_ERROR;
}

/* getopt's state (optind, optarg, its place in a short-option group) is the
 * C library's, one for the process: libselfmod_cli parses each run's flags
 * on the caller's thread, and Python's generate_many runs several at once.
 * Without the lock one parse moved another's optind (a run lost its
 * --prompt, or read the next flag's name as its value). */
static pthread_mutex_t getopt_lock = PTHREAD_MUTEX_INITIALIZER;

cli_parse_outcome cli_parse_args(int argc, char **argv, cli_options *opt, FILE *err) {
    pthread_mutex_lock(&getopt_lock);
    cli_parse_outcome outcome = parse_args(argc, argv, opt, err);
    pthread_mutex_unlock(&getopt_lock);
    return outcome;
}
