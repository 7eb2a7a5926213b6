/* The introspection and intervention flags at run time. */
#include "intro_run.h"
#include "common/flags.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One kept token's tracked values: the entropy of the distribution it was
 * chosen from, then norm and max |x| of each observed layer, then the mean
 * attention entropy of each layer (NaN without attention). */
typedef struct token_values {
    float *v;
    int32_t stride;
    int32_t cap;          /* tokens                                          */
} token_values;

typedef struct turn_summary {
    int32_t n_tokens;
    double *means;        /* stride values, averaged over the turn's tokens  */
} turn_summary;

struct cli_intro {
    FILE *trace;
    sm_hidden_writer *hidden;
    sm_control_vector cv;
    char *inject_text;
    int32_t n_layers;               /* observed, learnt from the first token */
    int32_t layer_ids[CLI_INTRO_MAX_LAYERS];
    token_values tokens;
    turn_summary *turns;
    int32_t n_turns, cap_turns;
};


static bool load_control_vectors(cli_app *app, struct cli_intro *in) {
    const cli_intro_options *io = &app->opt->intro;
    if (io->n_control_vectors == 0) return true;
    sm_error err = {0};
    if (sm_control_vector_load(io->control_vectors, io->n_control_vectors, &in->cv, &err) != SM_OK) {
        cli_error("--control-vector: %s", err.message);
        return false;
    }
    return true;
}

bool cli_intro_before_load(cli_app *app) {
    const cli_intro_options *io = &app->opt->intro;
    struct cli_intro *in = calloc(1, sizeof *in);
    if (!in) {
        cli_error("out of memory");
        return false;
    }
    app->intro = in;
    if (io->inject_file) {
        in->inject_text = flag_read_file(io->inject_file, 1u << 20);
        if (!in->inject_text) {
            cli_error("--inject: cannot read '%s': %s", io->inject_file,
                      errno == EFBIG ? "larger than 1 MB" : strerror(errno));
            return false;
        }
        app->gen.interventions.inject_text = in->inject_text;
    }
    if (io->trace_file && !(in->trace = fopen(io->trace_file, "w"))) {
        cli_error("--trace-file: cannot write '%s': %s", io->trace_file, strerror(errno));
        return false;
    }
    if (io->hidden_file) {
        sm_error err = {0};
        in->hidden = sm_hidden_writer_open(io->hidden_file, &err);
        if (!in->hidden) {
            cli_error("--hidden-states: %s", err.message);
            return false;
        }
    }
    return load_control_vectors(app, in);
}

bool cli_intro_after_load(cli_app *app) {
    const cli_intro_options *io = &app->opt->intro;
    struct cli_intro *in = app->intro;
    if (!in->cv.data) return true;
    int32_t start = io->cv_layer_start > 0 ? io->cv_layer_start : -1;
    int32_t end = io->cv_layer_start > 0 ? io->cv_layer_end : -1;
    if (io->steer_rule) { /* the rule applies the vector, at the strength it sets */
        sm_steer_rule *r = &app->gen.interventions.steer_rule;
        r->vector = in->cv.data;
        r->len = in->cv.n_embd * in->cv.n_layers;
        r->n_embd = in->cv.n_embd;
        r->il_start = start;
        r->il_end = end;
        return true;
    }
    if (sm_session_set_control_vector(app->session, in->cv.data, in->cv.n_embd * in->cv.n_layers, in->cv.n_embd, start,
                                      end) != SM_OK) {
        cli_error("--control-vector: %s", sm_session_last_error(app->session));
        return false;
    }
    return true;
}

bool cli_intro_prepare_prompt(cli_app *app) {
    const char *path = app->opt->intro.prompt_cache;
    if (!path) return true;
    const char *prompt = app->prompt_text;
    sm_tokens toks;
    sm_error err = {0};
    /* as the session tokenizes a prompt: plain text, BOS first */
    if (sm_tokenize(app->model, prompt, strlen(prompt), true, false, &toks, &err) != SM_OK || toks.n == 0) {
        cli_error("--prompt-cache: cannot tokenize the prompt: %s", toks.n == 0 && !*err.message ? "no tokens" : err.message);
        sm_tokens_free(&toks);
        return false;
    }
    int32_t n = toks.n;
    sm_prefix_info info;
    sm_status st = sm_session_load_prefix(app->session, path, toks.data, n, &info);
    sm_tokens_free(&toks);
    if (st != SM_OK) {
        cli_error("--prompt-cache: %s", sm_session_last_error(app->session));
        return false;
    }
    app->prompt_fed = true;
    if (!app->opt->quiet) {
        fprintf(stderr, "[prompt-cache] %d of %d prompt tokens from '%s'%s%s\n", info.n_reused, n, path,
                *info.reason ? ": " : "", info.reason);
    }
    if (info.n_reused >= n - 1) return true; /* the file already holds this prompt */
    if (sm_session_save_prefix(app->session, path) != SM_OK) {
        cli_error("--prompt-cache: %s", sm_session_last_error(app->session));
        return false;
    }
    return true;
}

/* ------------------------------------------------------------------ */
/* Per-turn tracking                                                   */
/* ------------------------------------------------------------------ */

static int32_t stride_of(const struct cli_intro *in) { return 1 + 3 * in->n_layers; }

static float *values_at(struct cli_intro *in, int32_t index) {
    token_values *tv = &in->tokens;
    if (index >= tv->cap) {
        int32_t cap = tv->cap ? tv->cap : 256;
        while (cap <= index) cap *= 2;
        float *v = realloc(tv->v, sizeof(float) * (size_t)cap * (size_t)tv->stride);
        if (!v) return NULL;
        tv->v = v;
        tv->cap = cap;
    }
    return tv->v + (size_t)index * (size_t)tv->stride;
}

static void track_token(struct cli_intro *in, const sm_event *e) {
    const sm_introspection *x = e->introspection;
    if (in->tokens.stride == 0) { /* the first token tells the layers */
        in->n_layers = x ? (x->n_layers < CLI_INTRO_MAX_LAYERS ? x->n_layers : CLI_INTRO_MAX_LAYERS) : 0;
        for (int32_t l = 0; l < in->n_layers; l++) in->layer_ids[l] = x->layers[l].layer;
        in->tokens.stride = stride_of(in);
    }
    float *v = values_at(in, e->token_index);
    if (!v) return;
    v[0] = e->signals.entropy;
    for (int32_t l = 0; l < in->n_layers; l++) {
        bool have = x && l < x->n_layers;
        v[1 + 3 * l] = have ? x->layers[l].norm : NAN;
        v[2 + 3 * l] = have ? x->layers[l].max_abs : NAN;
        double attn = 0.0;
        for (int32_t h = 0; have && h < x->n_heads; h++) attn += x->attn_entropy[l * x->n_heads + h];
        v[3 + 3 * l] = have && x->n_heads > 0 ? (float)(attn / x->n_heads) : NAN;
    }
}

/* The kept tokens are the first n (removed ones were overwritten or lie
 * beyond n): their means become the turn's summary. */
static void finish_turn(struct cli_intro *in, int32_t n) {
    if (in->n_turns == in->cap_turns) {
        int32_t cap = in->cap_turns ? in->cap_turns * 2 : 8;
        turn_summary *t = realloc(in->turns, sizeof *t * (size_t)cap);
        if (!t) return;
        in->turns = t;
        in->cap_turns = cap;
    }
    int32_t stride = in->tokens.stride ? in->tokens.stride : 1;
    turn_summary *t = &in->turns[in->n_turns];
    t->n_tokens = n;
    t->means = calloc((size_t)stride, sizeof(double));
    if (!t->means) return;
    in->n_turns++;
    for (int32_t k = 0; k < stride; k++) {
        double sum = 0.0;
        for (int32_t i = 0; i < n && in->tokens.v; i++) sum += in->tokens.v[(size_t)i * (size_t)stride + (size_t)k];
        t->means[k] = n > 0 ? sum / n : NAN;
    }
}

void cli_intro_on_event(cli_app *app, const sm_event *e) {
    struct cli_intro *in = app->intro;
    if (!in) return;
    if (in->trace) {
        char *line = sm_event_to_json(e);
        if (line) {
            fputs(line, in->trace);
            fputc('\n', in->trace);
        }
        free(line);
    }
    if (in->hidden) sm_hidden_writer_on_event(in->hidden, e);
    if (e->type == SM_EVENT_TOKEN) track_token(in, e);
    if (e->type == SM_EVENT_DONE) {
        finish_turn(in, e->token_index);
        if (in->trace) fflush(in->trace);
    }
}

static void print_turn(const struct cli_intro *in, int32_t turn, FILE *out) {
    const turn_summary *t = &in->turns[turn];
    fprintf(out, "turn %d: %d tokens, entropy %.3f", turn + 1, t->n_tokens, t->means[0]);
    for (int32_t l = 0; l < in->n_layers; l++) {
        fprintf(out, "; layer %d norm %.3f max %.3f", in->layer_ids[l], t->means[1 + 3 * l], t->means[2 + 3 * l]);
        if (!isnan(t->means[3 + 3 * l])) fprintf(out, " attention %.3f", t->means[3 + 3 * l]);
    }
    fputc('\n', out);
}

void cli_intro_turn_summary(cli_app *app, FILE *out) {
    struct cli_intro *in = app->intro;
    if (!in || in->n_turns == 0 || !sm_session_introspecting(app->session)) return;
    fputs("[introspect] ", out);
    print_turn(in, in->n_turns - 1, out);
    fflush(out);
}

void cli_intro_print_trace(cli_app *app, FILE *out) {
    struct cli_intro *in = app->intro;
    if (!in || in->n_turns == 0) {
        fputs("[trace] no turns yet\n", out);
        return;
    }
    fprintf(out, "[trace] means per turn over its kept tokens (%d turn%s)\n", in->n_turns, in->n_turns == 1 ? "" : "s");
    for (int32_t t = 0; t < in->n_turns; t++) {
        fputs("  ", out);
        print_turn(in, t, out);
    }
    if (in->n_turns < 2) return;
    const double *a = in->turns[0].means, *b = in->turns[in->n_turns - 1].means;
    fprintf(out, "  change turn 1 -> %d: entropy %+.3f", in->n_turns, b[0] - a[0]);
    for (int32_t l = 0; l < in->n_layers; l++)
        fprintf(out, "; layer %d norm %+.3f max %+.3f", in->layer_ids[l], b[1 + 3 * l] - a[1 + 3 * l],
                b[2 + 3 * l] - a[2 + 3 * l]);
    fputc('\n', out);
    fflush(out);
}

bool cli_intro_free(cli_app *app) {
    struct cli_intro *in = app->intro;
    if (!in) return true;
    bool ok = true;
    if (in->trace && fclose(in->trace) != 0) {
        cli_error("--trace-file: cannot finish '%s': %s", app->opt->intro.trace_file, strerror(errno));
        ok = false;
    }
    sm_error err = {0};
    if (in->hidden && sm_hidden_writer_close(in->hidden, &err) != SM_OK) {
        cli_error("--hidden-states: %s", err.message);
        ok = false;
    }
    sm_control_vector_free(&in->cv);
    free(in->inject_text);
    free(in->tokens.v);
    for (int32_t t = 0; t < in->n_turns; t++) free(in->turns[t].means);
    free(in->turns);
    free(in);
    app->intro = NULL;
    return ok;
}
