/* Parsing of the multi-model fusion flags. */
#include "fusion_args.h"
#include "common/flags.h"

#include <string.h>

static void error(FILE *err, const char *flag, const char *value, const char *expected) {
    flag_invalid(err, "llama_selfmod", flag, value, expected);
}

static bool parse_float(FILE *err, const char *flag, const char *s, float lo, float hi, const char *expected,
                        float *out) {
    float v;
    if (!flag_float(s, &v) || v < lo || v > hi) {
        error(err, flag, s, expected);
        return false;
    }
    *out = v;
    return true;
}

/* Splits "a,b,c" in place into at most SM_MAX_MODELS paths. */
static bool parse_models(FILE *err, const char *arg, cli_fusion_options *fo) {
    if (strlen(arg) >= sizeof fo->models_buf) {
        error(err, "--models", "...", "a shorter list of paths");
        return false;
    }
    strcpy(fo->models_buf, arg);
    fo->n_models = 0;
    for (char *tok = fo->models_buf, *next; tok; tok = next) {
        next = strchr(tok, ',');
        if (next) *next++ = '\0';
        if (!*tok) {
            error(err, "--models", arg, "comma-separated model paths with none empty");
            return false;
        }
        if (fo->n_models == SM_MAX_MODELS) {
            error(err, "--models", arg, "at most 8 models");
            return false;
        }
        /* PATH@HOST:PORT+HOST:PORT: this model's layers on those RPC servers */
        char *at = strrchr(tok, '@');
        fo->model_rpc[fo->n_models] = NULL;
        if (at) {
            *at++ = '\0';
            if (!*tok || !*at || !strchr(at, ':')) {
                error(err, "--models", arg, "PATH or PATH@HOST:PORT[+HOST:PORT...] for each model");
                return false;
            }
            for (char *p = at; *p; p++)
                if (*p == '+') *p = ',';
            fo->model_rpc[fo->n_models] = at;
        }
        fo->model_paths[fo->n_models++] = tok;
    }
    return true;
}

static bool parse_weights(FILE *err, const char *arg, sm_fusion_params *fp) {
    char buf[1024];
    if (strlen(arg) >= sizeof buf) {
        error(err, "--fusion-weights", "...", "a shorter list");
        return false;
    }
    strcpy(buf, arg);
    fp->n_weights = 0;
    for (char *tok = buf, *next; tok; tok = next) {
        next = strchr(tok, ',');
        if (next) *next++ = '\0';
        if (fp->n_weights == SM_MAX_MODELS) {
            error(err, "--fusion-weights", arg, "at most 8 weights");
            return false;
        }
        if (!parse_float(err, "--fusion-weights", tok, 0.0f, 1e6f, "comma-separated numbers >= 0",
                         &fp->weights[fp->n_weights++]))
            return false;
    }
    return true;
}

bool cli_fusion_apply(int c, const char *arg, cli_fusion_options *fo, sm_fusion_params *fp, FILE *err) {
    switch (c) {
    case OPT_MODELS: return parse_models(err, arg, fo);
    case OPT_FUSION_MODE:
        if (sm_fusion_mode_from_name(arg, &fp->mode)) return true;
        error(err, "--fusion-mode", arg,
              "one of confidence, average, voting, harmony, adaptive, democratic, round_robin, reference, contrastive");
        return false;
    case OPT_FUSION_TURN:
        return flag_int_in(err, "llama_selfmod", "--fusion-turn", arg, 1, 1000000, "an integer >= 1", &fp->turn);
    case OPT_FUSION_WEIGHTS: return parse_weights(err, arg, fp);
    case OPT_FUSION_ALPHA: return parse_float(err, "--fusion-alpha", arg, 0.0f, 1.0f, "a number in [0, 1]", &fp->alpha);
    case OPT_FUSION_BETA: return parse_float(err, "--fusion-beta", arg, 0.0f, 100.0f, "a number in [0, 100]", &fp->beta);
    case OPT_FUSION_ALIGN: fo->align = true; return true;
    case OPT_FUSION_REFERENCE:
        return flag_int_in(err, "llama_selfmod", "--fusion-reference", arg, 0, SM_MAX_MODELS - 1, "a model index, 0 to 7",
                           &fp->reference);
    }
    return false;
}

bool cli_fusion_check(const cli_fusion_options *fo, const sm_fusion_params *fp, FILE *err) {
    int32_t n = fo->n_models > 0 ? fo->n_models : 1;
    if (fp->n_weights > 0 && fp->n_weights != n) {
        fprintf(err, "llama_selfmod: error: --fusion-weights has %d weights for %d model%s\n", fp->n_weights, n,
                n == 1 ? "" : "s");
        return false;
    }
    if (fp->n_weights > 0) {
        float sum = 0.0f;
        for (int32_t i = 0; i < fp->n_weights; i++) sum += fp->weights[i];
        if (!(sum > 0.0f)) {
            fprintf(err, "llama_selfmod: error: --fusion-weights: not all weights may be 0\n");
            return false;
        }
    }
    if (fp->reference >= n) {
        fprintf(err, "llama_selfmod: error: --fusion-reference %d: the models are 0 to %d\n", fp->reference, n - 1);
        return false;
    }
    if (fp->mode == SM_FUSION_CONTRASTIVE && n < 2) {
        fprintf(err, "llama_selfmod: error: --fusion-mode contrastive needs --models EXPERT,AMATEUR\n");
        return false;
    }
    return true;
}
