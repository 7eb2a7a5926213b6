/*
 * A complete user-written stage: it ends the generation after N sentences.
 * The sentence count is state a rewind must put back (a retraction can take
 * a full stop away again), so it is the stage's snapshot: the loop saves it
 * at every position and restores it on every rewind.
 *
 *   custom_stage MODEL N [PROMPT]
 */
#include "selfmod.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct sentence_budget {
    int32_t limit;
    int32_t n_sentences; /* the snapshot */
} sentence_budget;

static void budget_save(const void *state, void *snapshot) {
    memcpy(snapshot, &((const sentence_budget *)state)->n_sentences, sizeof(int32_t));
}

static void budget_restore(void *state, const void *snapshot) {
    memcpy(&((sentence_budget *)state)->n_sentences, snapshot, sizeof(int32_t));
}

static void budget_reset(void *state, sm_loop *loop) {
    (void)loop;
    ((sentence_budget *)state)->n_sentences = 0;
}

/* Called for every token that was kept, decoded and reported. */
static void budget_after_token(void *state, sm_loop *loop, const sm_token_view *view) {
    sentence_budget *b = state;
    if (!strpbrk(view->piece, ".!?")) return;
    if (++b->n_sentences < b->limit) return;
    char why[64];
    snprintf(why, sizeof why, "%d sentences written", b->n_sentences);
    sm_loop_stop(loop, why);
}

static const sm_stage_vtable sentence_budget_vt = {
    .name = "sentence_budget",
    .snapshot_size = sizeof(int32_t),
    .save = budget_save,
    .restore = budget_restore,
    .reset = budget_reset,
    .after_token = budget_after_token,
    .free_state = free,
};

int main(int argc, char **argv) {
    if (argc < 3 || atoi(argv[2]) < 1) {
        fprintf(stderr, "usage: %s MODEL N [PROMPT]  (N >= 1 sentences)\n", argv[0]);
        return 2;
    }
    sm_set_llama_logging(false);
    sm_error err = {0};
    sm_model *model = sm_model_load(argv[1], NULL, &err);
    if (!model) {
        fprintf(stderr, "error: %s\n", err.message);
        return 1;
    }
    sm_session *session = sm_session_new(model, NULL, &err);
    if (!session) {
        fprintf(stderr, "error: %s\n", err.message);
        sm_model_free(model);
        return 1;
    }
    sentence_budget *budget = calloc(1, sizeof *budget);
    budget->limit = atoi(argv[2]);
    sm_stage *stage = sm_stage_new(&sentence_budget_vt, budget);

    sm_gen_params params = sm_gen_default_params(); /* the policy may retract sentences */
    params.n_predict = 400;
    params.stages = &stage;
    params.n_stages = 1;
    sm_result result;
    const char *prompt = argc > 3 ? argv[3] : "Once upon a time";
    sm_status st = sm_session_generate(session, prompt, &params, &result);
    if (st == SM_OK) {
        printf("%s%s\n", prompt, result.text);
        fprintf(stderr, "stop: %s\nretractions: %d\n", sm_stop_reason_name(result.stop_reason), result.n_retractions);
    } else {
        fprintf(stderr, "error: %s\n", sm_session_last_error(session));
    }
    sm_result_free(&result);
    sm_stage_free(stage);
    sm_session_free(session);
    sm_model_free(model);
    return st == SM_OK ? 0 : 1;
}
