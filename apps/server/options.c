#include "server/options.h"
#include "common/flags.h"
#include "server/request.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <dirent.h>
#include <sys/stat.h>

enum {
    OPT_HOST = 1000,
    OPT_PORT,
    OPT_MODELS,
    OPT_ALIAS,
    OPT_TAGS,
    OPT_API_KEY,
    OPT_PARALLEL,
    OPT_THREADS,
    OPT_CTX_SIZE,
    OPT_CTX_SIZE_TOTAL,
    OPT_MAX_BODY,
    OPT_WEB_DIR,
    OPT_CHAT_TEMPLATE,
    OPT_CHAT_TEMPLATE_FILE,
    OPT_CHAT_TEMPLATE_KWARGS,
    OPT_JINJA,
    OPT_NO_JINJA,
    OPT_FUSION_ALIGN,
    OPT_LOOM_MAX_BEAMS,
    OPT_N_GPU_LAYERS,
    OPT_QUIET,
    OPT_VERBOSE,
    OPT_DROP_OLD_TURNS,
    OPT_SPM_INFILL,
    OPT_CONTEXT_SHIFT,
    OPT_BATCH_SIZE,
    OPT_KV_UNIFIED,
    OPT_DRAIN_TIMEOUT,
    OPT_RPC,
    OPT_NO_REPACK,
    OPT_KEEP,
    OPT_API_KEY_FILE,
    OPT_CORS_ORIGINS,
    OPT_MAX_CONNECTIONS,
    OPT_SELFMOD,
    OPT_PRESET,
    OPT_PRESET_DIR,
    OPT_STOP_AT_BOS,
    OPT_HEADER_TIMEOUT,
    OPT_NO_BATCH,
    OPT_USER_LABEL,
    OPT_ASSISTANT_LABEL,
    OPT_TEMPERATURE,
    OPT_SEED,
    OPT_N_PREDICT,
    OPT_METRICS,
    OPT_SLOTS,
    OPT_SLOT_SAVE_PATH,
    OPT_NO_UI,
};

static const struct option long_options[] = {
    {"model", required_argument, NULL, 'm'},
    {"models", required_argument, NULL, OPT_MODELS},
    {"alias", required_argument, NULL, OPT_ALIAS},
    {"tags", required_argument, NULL, OPT_TAGS},
    {"host", required_argument, NULL, OPT_HOST},
    {"port", required_argument, NULL, OPT_PORT},
    {"api-key", required_argument, NULL, OPT_API_KEY},
    {"parallel", required_argument, NULL, OPT_PARALLEL},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"ctx-size", required_argument, NULL, OPT_CTX_SIZE},
    {"ctx-size-total", required_argument, NULL, OPT_CTX_SIZE_TOTAL},
    {"batch-size", required_argument, NULL, OPT_BATCH_SIZE},
    {"kv-unified", no_argument, NULL, OPT_KV_UNIFIED},
    {"drain-timeout", required_argument, NULL, OPT_DRAIN_TIMEOUT},
    {"rpc", required_argument, NULL, OPT_RPC},
    {"no-repack", no_argument, NULL, OPT_NO_REPACK},
    {"max-body", required_argument, NULL, OPT_MAX_BODY},
    {"web-dir", required_argument, NULL, OPT_WEB_DIR},
    {"chat-template", required_argument, NULL, OPT_CHAT_TEMPLATE},
    {"chat-template-file", required_argument, NULL, OPT_CHAT_TEMPLATE_FILE},
    {"chat-template-kwargs", required_argument, NULL, OPT_CHAT_TEMPLATE_KWARGS},
    {"jinja", no_argument, NULL, OPT_JINJA},
    {"no-jinja", no_argument, NULL, OPT_NO_JINJA},
    {"fusion-align", no_argument, NULL, OPT_FUSION_ALIGN},
    {"loom-max-beams", required_argument, NULL, OPT_LOOM_MAX_BEAMS},
    {"n-gpu-layers", required_argument, NULL, OPT_N_GPU_LAYERS},
    {"quiet", no_argument, NULL, OPT_QUIET},
    {"verbose", no_argument, NULL, OPT_VERBOSE},
    {"slot-save-path", required_argument, NULL, OPT_SLOT_SAVE_PATH},
    {"drop-old-turns", no_argument, NULL, OPT_DROP_OLD_TURNS},
    {"spm-infill", no_argument, NULL, OPT_SPM_INFILL},
    {"context-shift", no_argument, NULL, OPT_CONTEXT_SHIFT},
    {"keep", required_argument, NULL, OPT_KEEP},
    {"api-key-file", required_argument, NULL, OPT_API_KEY_FILE},
    {"cors-origins", required_argument, NULL, OPT_CORS_ORIGINS},
    {"max-connections", required_argument, NULL, OPT_MAX_CONNECTIONS},
    {"selfmod", no_argument, NULL, OPT_SELFMOD},
    {"preset", required_argument, NULL, OPT_PRESET},
    {"preset-dir", required_argument, NULL, OPT_PRESET_DIR},
    {"stop-at-bos", no_argument, NULL, OPT_STOP_AT_BOS},
    {"header-timeout", required_argument, NULL, OPT_HEADER_TIMEOUT},
    {"no-batch", no_argument, NULL, OPT_NO_BATCH},
    {"user-label", required_argument, NULL, OPT_USER_LABEL},
    {"assistant-label", required_argument, NULL, OPT_ASSISTANT_LABEL},
    {"temperature", required_argument, NULL, OPT_TEMPERATURE},
    {"temp", required_argument, NULL, OPT_TEMPERATURE},
    {"seed", required_argument, NULL, OPT_SEED},
    {"n-predict", required_argument, NULL, OPT_N_PREDICT},
    {"metrics", no_argument, NULL, OPT_METRICS},
    {"slots", no_argument, NULL, OPT_SLOTS},
    {"no-ui", no_argument, NULL, OPT_NO_UI},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static void print_usage(FILE *out) {
    fputs("usage: llama_selfmod serve -m MODEL [options]\n"
          "\n"
          "An OpenAI-compatible HTTP server (plus llama-server's /completion, /tokenize,\n"
          "/detokenize and the LLooM's /loom/expand) with the web page at /.\n"
          "\n"
          "  -m, --model PATH          a GGUF model (repeat it, or use --models, for fusion)\n"
          "      --models A,B,...      several models, fused per token; a name without a\n"
          "                            folder is looked for beside the previous model\n"
          "      --alias NAME[,NAME..] the names requests may give the model; the first in byte\n"
          "                            order is the id /v1/models reports (default: the file's\n"
          "                            name without .gguf; models joined with '+')\n"
          "      --tags T[,T..]        labels /v1/models reports with the model\n"
          "      --host ADDR           address to bind (default: 127.0.0.1)\n"
          "      --port N              port (default: 8080; 0 = any free port)\n"
          "      --api-key KEY         require 'Authorization: Bearer KEY' (all but /health\n"
          "                            and the web page's files); visible in ps: prefer\n"
          "      --api-key-file FILE   the key from the first line of FILE\n"
          "      --cors-origins LIST   origins (scheme://host[:port], comma-separated, or *)\n"
          "                            whose pages may call the API (default: none, only\n"
          "                            pages this server serves)\n"
          "      --max-connections N   open connections at most; more are refused (default: 64)\n"
          "      --header-timeout S    seconds a client has to send a request's headers, and\n"
          "                            an idle connection stays open (default: 15)\n"
          "      --selfmod             adapt sampling (the policy) for requests that send no\n"
          "                            \"selfmod\" object (default: they sample as asked)\n"
          "      --preset NAME|FILE    the policy requests start from: calibrated (default),\n"
          "                            original, fixed, tuned, or a file llama_selfmod tune\n"
          "                            wrote (its values are the requests' defaults too)\n"
          "      --stop-at-bos         a generated BOS ends the answer (TinyStories models begin\n"
          "                            the next story there; default: it goes on, as llama-server)\n"
          "      --preset-dir DIR      DIR's preset files (NAME.json, as tune writes them) that\n"
          "                            a request chooses with \"selfmod\": {\"preset\": \"NAME\"}\n"
          "      --parallel N          requests generating at once; more wait (default: 2)\n"
          "      --threads N           CPU threads that decode the requests together; 0 = all\n"
          "                            cores (with --no-batch: per request, 0 = cores / parallel)\n"
          "      --no-batch            a context per request instead of one for all (default:\n"
          "                            continuous batching: every request's tokens in one decode)\n"
          "      --ctx-size N          context tokens per slot; 0 = the model's (default: 2048)\n"
          "  -c, --ctx-size-total N    llama-server's -c: N tokens for all the slots, each gets\n"
          "                            N / --parallel (all N with --kv-unified); 0 = the model's\n"
          "      --batch-size N        prompt tokens one decode takes at most (default: 512)\n"
          "      --drain-timeout S     on SIGTERM or Ctrl-C: refuse new requests (503, /health too) and\n"
          "                            finish those in flight for S seconds at most; -1 = no limit\n"
          "                            (default: 30; a second signal ends them at once)\n"
          "      --kv-unified          the slots share one pool of --ctx-size tokens, each may use all\n"
          "                            of it, and a decode that finds it full fails for every request\n"
          "                            in it (llama-server's --kv-unified; default: --ctx-size per slot)\n"
          "      --max-body BYTES      largest request body, else 413 (default: 1048576)\n"
          "      --web-dir DIR         the web page's folder (default: found beside the program)\n"
          "      --chat-template NAME  a llama.cpp template name (default: the model's own)\n"
          "      --chat-template-file F  a Jinja chat template from a file\n"
          "      --chat-template-kwargs JSON  the template's variables for every chat request, e.g.\n"
          "                            '{\"enable_thinking\": false}' (a request's chat_template_kwargs\n"
          "                            override them, member by member)\n"
          "      --jinja, --no-jinja   the model's template by llama.cpp's Jinja engine (default),\n"
          "                            or by llama.cpp's built-in heuristics\n"
          "      --metrics             GET /metrics: llama-server's Prometheus counters\n"
          "      --slots               GET /slots: each slot's context and state\n"
          "      --slot-save-path DIR  POST /slots/{id}?action=save|restore (files in DIR) and erase\n"
          "      --no-ui               no web page (the API only)\n"
          "      --temp F --seed N --n-predict N  what requests that do not say get\n"
          "                            (llama-server's names; default: T 0.8, a fresh seed per\n"
          "                            request, each API's own length, as llama-server)\n"
          "      --user-label STR --assistant-label STR   the plain chat form's labels\n"
          "                            (default: read off the model's template, else\n"
          "                            \"User:\" and \"Assistant:\")\n"
          "      --fusion-align        fuse models whose vocabularies differ (by token text)\n"
          "      --loom-max-beams N    the largest beam_limit /loom/expand accepts (default: 64)\n"
          "      --n-gpu-layers N      layers to offload, -1 = all (default: 0; with --rpc: all)\n"
          "      --rpc HOST:PORT[,...] ggml RPC servers (ggml-rpc-server) that hold the offloaded layers\n"
          "      --no-repack           weights as stored: no repacked or AMX buffers (llama.cpp's)\n"
          "      --quiet               no request log\n"
          "      --drop-old-turns      a chat too long for the context drops its oldest turns\n"
          "      --spm-infill          /infill puts the suffix before the prefix (for models trained\n"
          "                            suffix-prefix-middle; llama-server's)\n"
          "      --context-shift       a full context drops the older half after --keep tokens and\n"
          "                            generation goes on (llama-server's; requests: n_keep, n_discard)\n"
          "      --keep N              tokens of the prompt a context shift keeps; -1 = all (default: 0)\n"
          "                            (default: refused with 400, as OpenAI and llama-server)\n"
          "      --verbose             responses carry llama-server's \"__verbose\" object (the\n"
          "                            prompt as the model saw it, with its special tokens)\n"
          "  -h, --help                this help\n",
          out);
}

static bool parse_long(FILE *err, const char *flag, const char *arg, long lo, long hi, long *out) {
    char *end = NULL;
    errno = 0;
    long v = strtol(arg, &end, 10);
    if (errno || end == arg || *end || v < lo || v > hi) {
        fprintf(err, "llama_selfmod serve: error: %s '%s': expected an integer in [%ld, %ld]\n", flag, arg, lo, hi);
        return false;
    }
    *out = v;
    return true;
}

static bool is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* "name" beside the previous model: dir/name, then dir/name.gguf. */
static char *resolve_model_path(const char *item, const char *previous) {
    if (is_file(item) || strchr(item, '/') || !previous) return strdup(item);
    const char *slash = strrchr(previous, '/');
    if (!slash) return strdup(item);
    int dir_len = (int)(slash - previous);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%.*s/%s", dir_len, previous, item);
    if (is_file(path)) return strdup(path);
    snprintf(path, sizeof path, "%.*s/%s.gguf", dir_len, previous, item);
    if (is_file(path)) return strdup(path);
    return strdup(item); /* the loader names the missing file */
}

static bool add_model(server_options *opt, const char *item, FILE *err) {
    if (!*item) {
        fprintf(err, "llama_selfmod serve: error: an empty model name in --models\n");
        return false;
    }
    if (opt->n_models == SM_MAX_MODELS) {
        fprintf(err, "llama_selfmod serve: error: at most %d models\n", SM_MAX_MODELS);
        return false;
    }
    const char *previous = opt->n_models ? opt->model_paths[opt->n_models - 1] : NULL;
    opt->model_paths[opt->n_models++] = resolve_model_path(item, previous);
    return true;
}

static bool add_model_list(server_options *opt, const char *list, FILE *err) {
    char *copy = strdup(list);
    bool ok = copy != NULL;
    char *rest = copy;
    for (char *item; ok && (item = strsep(&rest, ",")) != NULL;) ok = add_model(opt, item, err);
    free(copy);
    return ok;
}

/* The key is the file's first line, without its line ending. */
static bool read_key_file(server_options *opt, const char *path, FILE *err) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(err, "llama_selfmod serve: error: --api-key-file '%s': %s\n", path, strerror(errno));
        return false;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, f);
    fclose(f);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
    if (n <= 0) {
        free(line);
        fprintf(err, "llama_selfmod serve: error: --api-key-file '%s': the first line is empty\n", path);
        return false;
    }
    free(opt->api_key_owned);
    opt->api_key = opt->api_key_owned = line;
    return true;
}

/* --chat-template-file: a Jinja template, the whole file. */
static bool read_template_file(server_options *opt, const char *path, FILE *err) {
    char *text = flag_read_file(path, 1u << 20);
    if (!text || !*text) {
        fprintf(err, "llama_selfmod serve: error: --chat-template-file '%s': %s\n", path,
                text ? "the file is empty" : errno == EFBIG ? "larger than 1 MB" : strerror(errno));
        free(text);
        return false;
    }
    free(opt->chat_template_text);
    opt->chat_template_text = text;
    return true;
}

enum { MAX_PRESETS = 64 };

/* NAME.json with NAME of letters, digits, '-' and '_': a request's name for it. */
static bool preset_stem(const char *file, char *stem, size_t size) {
    size_t n = strlen(file);
    if (n <= 5 || n - 5 >= size || strcmp(file + n - 5, ".json") != 0) return false;
    for (size_t i = 0; i < n - 5; i++)
        if (!(isalnum((unsigned char)file[i]) || file[i] == '-' || file[i] == '_')) return false;
    memcpy(stem, file, n - 5);
    stem[n - 5] = '\0';
    return true;
}

/* Loads one file; which of the sampling values it sets is found by loading
 * it over two bases that differ in them. */
static bool load_named_preset(const char *path, named_preset *out, FILE *err) {
    sm_gen_params a = sm_gen_default_params(), b = a;
    a.sampling.temperature = 0.0f, a.sampling.repeat_penalty = 1.0f;
    b.sampling.temperature = 1.0f, b.sampling.repeat_penalty = 2.0f;
    sm_error invalid;
    if (sm_gen_params_load_preset(path, &a, &invalid) != SM_OK || sm_gen_params_load_preset(path, &b, &invalid) != SM_OK) {
        fprintf(err, "llama_selfmod serve: error: --preset-dir: %s\n", invalid.message);
        return false;
    }
    out->policy = a.policy;
    out->sets_temperature = a.sampling.temperature == b.sampling.temperature;
    out->sets_repeat_penalty = a.sampling.repeat_penalty == b.sampling.repeat_penalty;
    out->temperature = a.sampling.temperature;
    out->repeat_penalty = a.sampling.repeat_penalty;
    return true;
}

/* --preset-dir DIR: every NAME.json in DIR, in name order. */
static bool load_preset_dir(server_options *opt, const char *dir, FILE *err) {
    struct dirent **entries;
    int n = scandir(dir, &entries, NULL, alphasort);
    if (n < 0) {
        fprintf(err, "llama_selfmod serve: error: --preset-dir: cannot read the folder '%s': %s\n", dir, strerror(errno));
        return false;
    }
    bool ok = true;
    int added = 0;
    for (int i = 0; i < n; i++) {
        char stem[sizeof opt->presets->name], path[PATH_MAX];
        struct stat st;
        const char *file = entries[i]->d_name;
        if (!ok || !preset_stem(file, stem, sizeof stem) ||
            snprintf(path, sizeof path, "%s/%s", dir, file) >= (int)sizeof path || stat(path, &st) != 0 ||
            !S_ISREG(st.st_mode))
            continue;
        sm_policy_params scratch = sm_policy_default_params();
        bool builtin = sm_policy_preset(&scratch, stem, NULL) == SM_OK, known = false;
        for (int k = 0; k < opt->n_presets; k++) known |= strcmp(opt->presets[k].name, stem) == 0;
        if (builtin || known || opt->n_presets >= MAX_PRESETS) {
            fprintf(err, "llama_selfmod serve: error: --preset-dir: '%s': %s\n", path,
                    builtin ? "its name is a built-in preset's (rename the file)"
                    : known ? "a preset of that name was given already"
                            : "more than 64 presets");
            ok = false;
            continue;
        }
        named_preset *grown = realloc(opt->presets, sizeof *grown * (size_t)(opt->n_presets + 1));
        if (!grown) {
            fprintf(err, "llama_selfmod serve: error: out of memory\n");
            ok = false;
            continue;
        }
        opt->presets = grown;
        named_preset *p = &opt->presets[opt->n_presets];
        memset(p, 0, sizeof *p);
        snprintf(p->name, sizeof p->name, "%s", stem);
        if (!load_named_preset(path, p, err)) {
            ok = false;
            continue;
        }
        opt->n_presets++;
        added++;
    }
    for (int i = 0; i < n; i++) free(entries[i]);
    free(entries);
    if (ok && added == 0) {
        fprintf(err, "llama_selfmod serve: error: --preset-dir: no preset files (NAME.json) in '%s'\n", dir);
        return false;
    }
    return ok;
}

static bool apply_option(server_options *opt, int c, const char *arg, FILE *err) {
    long v;
    switch (c) {
    case 'm': return add_model(opt, arg, err);
    case OPT_MODELS: return add_model_list(opt, arg, err);
    case OPT_ALIAS: opt->alias = arg; return true;
    case OPT_TAGS: opt->tags = arg; return true;
    case OPT_HOST: opt->host = arg; return true;
    case OPT_PORT:
        if (!parse_long(err, "--port", arg, 0, 65535, &v)) return false;
        opt->port = (int)v;
        return true;
    case OPT_API_KEY:
        if (!*arg) {
            fprintf(err, "llama_selfmod serve: error: --api-key is empty\n");
            return false;
        }
        opt->api_key = arg;
        return true;
    case OPT_PARALLEL:
        if (!parse_long(err, "--parallel", arg, 1, 256, &v)) return false;
        opt->parallel = (int)v;
        return true;
    case OPT_THREADS:
        if (!parse_long(err, "--threads", arg, 0, 1024, &v)) return false;
        opt->n_threads = (int)v;
        return true;
    case OPT_KV_UNIFIED: opt->kv_unified = true; return true;
    case OPT_DRAIN_TIMEOUT:
        if (!parse_long(err, "--drain-timeout", arg, -1, 86400, &v)) return false;
        opt->drain_timeout = (int)v;
        return true;
    case OPT_BATCH_SIZE:
        if (!parse_long(err, "--batch-size", arg, 1, 1 << 20, &v)) return false;
        opt->n_batch = (uint32_t)v;
        return true;
    case OPT_CTX_SIZE:
        if (!parse_long(err, "--ctx-size", arg, 0, INT32_MAX, &v)) return false;
        opt->n_ctx = (uint32_t)v;
        opt->ctx_size_given = true;
        return true;
    case OPT_CTX_SIZE_TOTAL:
        if (!parse_long(err, "--ctx-size-total", arg, 0, INT32_MAX, &v)) return false;
        opt->n_ctx_total = (uint32_t)v;
        opt->ctx_total_given = true;
        return true;
    case OPT_MAX_BODY:
        if (!parse_long(err, "--max-body", arg, 1024, LONG_MAX, &v)) return false;
        opt->max_body = (size_t)v;
        return true;
    case OPT_WEB_DIR: opt->web_dir = arg; return true;
    case OPT_CHAT_TEMPLATE: opt->chat_template = arg; return true;
    case OPT_CHAT_TEMPLATE_FILE: return read_template_file(opt, arg, err);
    case OPT_CHAT_TEMPLATE_KWARGS: {
        cJSON *kwargs = cJSON_Parse(arg);
        const cJSON *thinking = cJSON_GetObjectItemCaseSensitive(kwargs, "enable_thinking");
        bool ok = cJSON_IsObject(kwargs) && (!thinking || cJSON_IsBool(thinking));
        cJSON_Delete(kwargs);
        if (!ok) {
            fprintf(err, "llama_selfmod serve: error: --chat-template-kwargs '%.80s': a JSON object of template "
                         "variables, such as '{\"enable_thinking\": false}' (enable_thinking true or false)\n", arg);
            return false;
        }
        opt->chat_template_kwargs = arg;
        return true;
    }
    case OPT_JINJA: opt->no_jinja = false; return true;
    case OPT_NO_JINJA: opt->no_jinja = true; return true;
    case OPT_FUSION_ALIGN: opt->fusion_align = true; return true;
    case OPT_LOOM_MAX_BEAMS:
        if (!parse_long(err, "--loom-max-beams", arg, 1, 255, &v)) return false;
        opt->loom_max_beams = (int)v;
        return true;
    case OPT_N_GPU_LAYERS:
        if (!parse_long(err, "--n-gpu-layers", arg, -1, 100000, &v)) return false;
        opt->n_gpu_layers = (int)v;
        opt->n_gpu_layers_given = true;
        return true;
    case OPT_RPC:
        opt->rpc_servers = arg;
        return flag_endpoints(err, "llama_selfmod serve", "--rpc", arg);
    case OPT_NO_REPACK: opt->no_repack = true; return true;
    case OPT_QUIET: opt->quiet = true; return true;
    case OPT_VERBOSE: opt->verbose = true; return true;
    case OPT_SLOT_SAVE_PATH: {
        struct stat st;
        if (stat(arg, &st) != 0 || !S_ISDIR(st.st_mode)) {
            fprintf(err, "llama_selfmod serve: error: --slot-save-path '%s': not a folder\n", arg);
            return false;
        }
        opt->slot_save_path = arg;
        return true;
    }
    case OPT_DROP_OLD_TURNS: opt->drop_old_turns = true; return true;
    case OPT_SPM_INFILL: opt->spm_infill = true; return true;
    case OPT_CONTEXT_SHIFT: opt->base.context_shift = true; return true;
    case OPT_KEEP:
        return flag_int_in(err, "llama_selfmod serve", "--keep", arg, -1, INT32_MAX, "an integer >= 0, or -1 for the whole prompt",
                           &opt->base.n_keep);
    case OPT_API_KEY_FILE: return read_key_file(opt, arg, err);
    case OPT_CORS_ORIGINS:
        if (!*arg) {
            fprintf(err, "llama_selfmod serve: error: --cors-origins is empty\n");
            return false;
        }
        opt->cors_origins = arg;
        return true;
    case OPT_MAX_CONNECTIONS:
        if (!parse_long(err, "--max-connections", arg, 1, 100000, &v)) return false;
        opt->max_connections = (int)v;
        return true;
    case OPT_SELFMOD: opt->selfmod_default = true; return true;
    case OPT_PRESET: {
        sm_error invalid;
        bool file = strchr(arg, '/') || strstr(arg, ".json");
        int32_t n_predict = opt->base.n_predict; /* may be N_PREDICT_UNSET, which no generation takes */
        opt->base.n_predict = 256;
        sm_status st = file ? sm_gen_params_load_preset(arg, &opt->base, &invalid)
                            : sm_policy_preset(&opt->base.policy, arg, &invalid);
        opt->base.n_predict = n_predict;
        if (st == SM_OK) return true;
        fprintf(err, "llama_selfmod serve: error: --preset: %s\n", invalid.message);
        return false;
    }
    case OPT_PRESET_DIR: return load_preset_dir(opt, arg, err);
    case OPT_STOP_AT_BOS: opt->base.stop_at_bos = true; return true;
    case OPT_NO_BATCH: opt->no_batch = true; return true;
    case OPT_TEMPERATURE: {
        char *end;
        double t = strtod(arg, &end);
        if (end == arg || *end || !(t >= 0 && t <= 100)) {
            fprintf(err, "llama_selfmod serve: error: invalid value '%s' for --temp: expected a number in [0, 100]\n", arg);
            return false;
        }
        opt->base.sampling.temperature = (float)t;
        return true;
    }
    case OPT_SEED:
        if (!parse_long(err, "--seed", arg, -1, LONG_MAX, &v)) return false;
        opt->base.sampling.seed = v < 0 ? SEED_UNSET : (uint64_t)v;
        return true;
    case OPT_METRICS: opt->metrics = true; return true;
    case OPT_SLOTS: opt->slots = true; return true;
    case OPT_NO_UI: opt->no_ui = true; return true;
    case OPT_N_PREDICT:
        if (!parse_long(err, "--n-predict", arg, -1, INT32_MAX, &v)) return false;
        opt->base.n_predict = (int32_t)v;
        return true;
    case OPT_HEADER_TIMEOUT:
        if (!parse_long(err, "--header-timeout", arg, 1, 3600, &v)) return false;
        opt->header_timeout = (int)v;
        return true;
    case OPT_USER_LABEL: opt->user_label = arg; return true;
    case OPT_ASSISTANT_LABEL: opt->assistant_label = arg; return true;
    }
    return false;
}

/* llama-server's names for flags this program has. Its -c is the context
 * of all its slots together (ours, --ctx-size, is each slot's). */
static const flag_alias LLAMA_ALIASES[] = {
    {"-ngl", "--n-gpu-layers"}, {"-nr", "--no-repack"}, {"-np", "--parallel"}, {"-t", "--threads"},
    {"-c", "--ctx-size-total"},
    {"-b", "--batch-size"}, {"-a", "--alias"}, {"-kvu", "--kv-unified"}, {"-s", "--seed"}, {NULL, NULL}};

options_result server_parse_options(int argc, char **argv, server_options *opt, FILE *out, FILE *err) {
    *opt = (server_options){
        .host = "127.0.0.1",
        .port = 8080,
        .parallel = 2,
        .n_ctx = 2048,
        .max_body = 1u << 20,
        .loom_max_beams = 64,
        .max_connections = 64,
        .header_timeout = 15,
        .drain_timeout = 30,
        .base = sm_gen_default_params(),
    };
    opt->base.sampling.repeat_penalty = 1.0f; /* none unless asked for, as with OpenAI and llama-server */
    opt->base.sampling.temperature = 0.8f;    /* a request that names none samples at llama-server's T */
    opt->base.stop_at_bos = false;            /* a generated BOS goes on, as with llama-server */
    opt->base.n_predict = N_PREDICT_UNSET;   /* each API's own default, unless --n-predict */
    opt->base.sampling.seed = SEED_UNSET;    /* fresh per request, unless --seed */
    if (!flag_llama_aliases(argc, argv, ":m:h", long_options, LLAMA_ALIASES, err, "llama_selfmod serve")) {
        server_options_free(opt);
        return OPTIONS_ERROR;
    }
    optind = 0; /* 0, not 1: glibc then also forgets a short-option group left half-read */
    opterr = 0;
    for (;;) {
        int c = getopt_long(argc, argv, ":m:h", long_options, NULL);
        if (c == -1) break;
        if (c == 'h') {
            print_usage(out);
            server_options_free(opt);
            return OPTIONS_EXIT_OK;
        }
        if (c == '?' || c == ':') {
            const char *flag = argv[optind - 1];
            fprintf(err, "llama_selfmod serve: error: %s '%s' (see --help)\n",
                    c == ':' ? "missing value for" : "unknown option", flag);
            server_options_free(opt);
            return OPTIONS_ERROR;
        }
        if (!apply_option(opt, c, optarg, err)) {
            server_options_free(opt);
            return OPTIONS_ERROR;
        }
    }
    if (optind < argc) {
        fprintf(err, "llama_selfmod serve: error: unexpected argument '%s' (see --help)\n", argv[optind]);
        server_options_free(opt);
        return OPTIONS_ERROR;
    }
    if (opt->n_models == 0) {
        fprintf(err, "llama_selfmod serve: error: no model: give one with -m PATH (see --help)\n");
        server_options_free(opt);
        return OPTIONS_ERROR;
    }
    if (opt->ctx_total_given && opt->ctx_size_given) {
        fprintf(err, "llama_selfmod serve: error: give --ctx-size (each slot's) or -c/--ctx-size-total (all the "
                     "slots'), not both\n");
        server_options_free(opt);
        return OPTIONS_ERROR;
    }
    if (opt->ctx_total_given) { /* as llama-server splits its -c among its slots */
        uint32_t share = opt->kv_unified ? opt->n_ctx_total : opt->n_ctx_total / (uint32_t)opt->parallel;
        if (opt->n_ctx_total > 0 && share == 0) {
            fprintf(err, "llama_selfmod serve: error: -c %u leaves no context for each of %d slots\n",
                    opt->n_ctx_total, opt->parallel);
            server_options_free(opt);
            return OPTIONS_ERROR;
        }
        opt->n_ctx = share;
    }
    if (opt->kv_unified && opt->no_batch) {
        fprintf(err, "llama_selfmod serve: error: --kv-unified shares the batch's context: not with --no-batch\n");
        server_options_free(opt);
        return OPTIONS_ERROR;
    }
    return OPTIONS_RUN;
}

void server_options_free(server_options *opt) {
    for (int i = 0; i < opt->n_models; i++) free(opt->model_paths[i]);
    opt->n_models = 0;
    free(opt->api_key_owned);
    opt->api_key_owned = NULL;
    free(opt->chat_template_text);
    opt->chat_template_text = NULL;
    free(opt->presets);
    opt->presets = NULL;
    opt->n_presets = 0;
}
