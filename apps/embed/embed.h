/*
 * llama_selfmod's command line as a library, for bindings (libselfmod_cli,
 * which python/selfmod loads). Settings ARE the program's flags: parsed,
 * checked and applied by the program's own code (apps/cli), so a binding
 * offers every setting the program has, with its defaults and its one-line
 * messages. Output IS the program's --json-stream: each JSON line is handed
 * to a callback as it is written.
 *
 *   smcli_models  the models a command line names (-m, or --models and the
 *               fusion flags; --n-gpu-layers), loaded once
 *   smcli_runner  a session on them: one-shot generations, or one chat whose
 *               history and KV cache carry from turn to turn
 *
 * smcli_models_load checks every flag it is given, but a run's flags are
 * only the ones that chose the models (-m or --models, --n-gpu-layers)
 * followed by the call's: a binding keeps its own defaults. A run that
 * asks for a different context (--ctx-size, --threads, introspection,
 * lookahead, ...) gets a new session; a chat keeps the session it began
 * with and refuses such a change, and a change of its --system or
 * template flags. Warnings come first, as lines of the
 * form {"type":"warning","message":"..."}.
 *
 * Errors: NULL or a non-zero code, and the program's message (without its
 * "llama_selfmod: error: " prefix) in err. A runner is used by one thread
 * at a time; different runners may run at once.
 */
#ifndef SELFMOD_EMBED_H
#define SELFMOD_EMBED_H

#include "selfmod.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Non-zero stops the generation (what it made so far is kept). */
typedef int (*smcli_line_fn)(const char *line, size_t len, void *user_data);

typedef struct smcli_models smcli_models;
typedef struct smcli_runner smcli_runner;

smcli_models *smcli_models_load(int argc, const char *const *argv, char *err, size_t err_size);
void smcli_models_free(smcli_models *models);
int32_t smcli_models_count(const smcli_models *models);
sm_model *smcli_models_get(const smcli_models *models, int32_t i);

smcli_runner *smcli_runner_new(smcli_models *models);
void smcli_runner_free(smcli_runner *runner);

/*
 * Sequences of the models decoding together (sm_batch) for n_runners
 * runners: runners made on it with smcli_runner_new_on run at the same
 * time from different threads, and every step decodes all their tokens in
 * one llama_decode. n_ctx: each runner's context (0: 2048, as the
 * program's; never past the models' training); n_threads 0: the online
 * cores. n_branches > 0 lets each runner's lookahead take that many
 * branches: the cells are then one pool (kv_unified) of n_runners contexts,
 * where a branch shares its session's cells. Free it after its runners.
 */
sm_batch *smcli_batch_new(smcli_models *models, int32_t n_runners, int32_t n_branches, uint32_t n_ctx,
                          int32_t n_threads, char *err, size_t err_size);
/* A runner whose session takes a sequence of batch at its first run and
 * keeps it until freed (a run when every sequence is taken fails, saying
 * so). NULL without a batch or out of memory. */
smcli_runner *smcli_runner_new_on(smcli_models *models, sm_batch *batch, char *err, size_t err_size);

/* Exit codes, as the program's. */
enum { SMCLI_OK = 0, SMCLI_FAILED = 1, SMCLI_USAGE = 2, SMCLI_INTERRUPTED = 130 };

/*
 * One run: with message == NULL, what the program does for these flags
 * (argv must give -p: a generation or a beam search); otherwise one turn
 * of the runner's chat (created by the first turn, with its --system and
 * template flags). operators and stages are the caller's, added after the
 * --operator ones (not owned). Returns an exit code; SMCLI_INTERRUPTED when
 * a signal (Ctrl-C) stopped the generation, whose lines were delivered.
 */
int smcli_run(smcli_runner *runner, int argc, const char *const *argv, const char *message,
            sm_operator *const *operators, int32_t n_operators, sm_stage *const *stages, int32_t n_stages,
            smcli_line_fn on_line, void *user_data, char *err, size_t err_size);

/* Forgets the chat (the next turn starts a new one). */
void smcli_chat_reset(smcli_runner *runner);
/* Whether the runner holds a chat. */
bool smcli_chat_active(const smcli_runner *runner);

/* Whether --name is one of the program's flags: -1 no, 0 it takes no
 * value, 1 it takes one, 2 it may take one. */
int smcli_flag_arity(const char *name);

/* sizeof of the library's structs a binding mirrors (by their C name,
 * e.g. "sm_token_view"); 0 for a name it does not know. */
size_t smcli_struct_size(const char *name);

#ifdef __cplusplus
}
#endif

#endif
