/* --beam-search: the tree's beam search as a one-shot mode. */
#include "beam.h"

#include "lib_extras.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_beam_json(FILE *out, const sm_suggestion *s, int32_t rank) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", "beam");
    cJSON_AddNumberToObject(o, "rank", rank);
    sm_json_add_text(o, "text", s->text, strlen(s->text));
    cJSON_AddNumberToObject(o, "score", s->score);
    cJSON_AddStringToObject(o, "end", sm_tree_end_name(s->end));
    cJSON *tokens = cJSON_AddArrayToObject(o, "tokens");
    for (int32_t k = 0; k < s->n_tokens; k++) cJSON_AddItemToArray(tokens, cJSON_CreateNumber(s->tokens[k]));
    char *text = cJSON_PrintUnformatted(o);
    if (text) fprintf(out, "%s\n", text);
    free(text);
    cJSON_Delete(o);
}

/* The best beam as a generation record: its text, tokens and mean p. */
static void record_beam(cli_app *app, const sm_suggestion *best) {
    if (!app->memlog) return;
    double p = 0;
    for (int32_t k = 0; k < best->n_tokens; k++) p += best->probs[k];
    sm_result r = {
        .text = best->text,
        .text_len = strlen(best->text),
        .tokens = best->tokens,
        .n_tokens = best->n_tokens,
        .stop_reason = best->end == SM_TREE_END_EOG ? SM_STOP_EOG : SM_STOP_N_PREDICT,
        .avg_confidence = best->n_tokens ? (float)(p / best->n_tokens) : 0.0f,
        .final_temperature = 0.0f,
        .n_sampled = best->n_tokens,
    };
    sm_error err = {0};
    if (sm_memlog_append(app->memlog, app->model_label, app->opt->prompt, &app->gen, &r, &err) != SM_OK)
        cli_error("%s", err.message);
}

int cli_beam_search(cli_app *app) {
    const cli_options *opt = app->opt;
    const cli_intro_options *io = &opt->intro;
    int32_t n = opt->gen.n_predict > 0 ? opt->gen.n_predict : 256;
    sm_tree_params p = sm_beam_search_params(opt->beam_width, n);
    p.stability_weight = opt->beam_stability;
    p.focus_weight = opt->beam_focus;
    bool scored = p.stability_weight > 0 || p.focus_weight > 0;
    sm_error err = {0};
    sm_tree *tree = sm_tree_new_observed(app->models, app->n_models, sm_session_n_ctx(app->session),
                                         opt->session.n_threads, opt->beam_width, scored ? io->layers : NULL,
                                         scored ? io->n_layers : 0, scored && opt->session.introspect_attention, &err);
    if (!tree) {
        cli_error("--beam-search: %s", err.message);
        return EXIT_FAILURE;
    }
    sm_tree_result r;
    if (sm_tree_expand(tree, app->prompt_text, &p, &r) != SM_OK) {
        cli_error("--beam-search: %s", sm_tree_last_error(tree));
        sm_tree_free(tree);
        return EXIT_FAILURE;
    }
    if (opt->json_stream) {
        for (int32_t i = 0; i < r.n_suggestions; i++) print_beam_json(app->out, &r.suggestions[i], i);
    } else if (r.n_suggestions > 0) {
        fputs(r.suggestions[0].text, app->out);
        fputc('\n', app->out);
    }
    fflush(app->out);
    if (!opt->quiet && r.n_suggestions > 0)
        fprintf(stderr, "[beam] width %d: %d beams, best score %.4f (%s), %d levels, %.1f ms\n", opt->beam_width,
                r.n_suggestions, r.suggestions[0].score, scored ? "ln p + activation terms" : "sum of ln p", r.n_levels,
                r.elapsed_ms);
    if (r.n_suggestions > 0) record_beam(app, &r.suggestions[0]);
    sm_tree_result_free(&r);
    sm_tree_free(tree);
    return EXIT_SUCCESS;
}
