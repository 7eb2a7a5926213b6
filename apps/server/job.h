/* One generation request on its way through a slot. */
#ifndef SERVER_JOB_H
#define SERVER_JOB_H

#include "server/channel.h"
#include "server/context.h"
#include "server/request.h"
#include "server/tracker.h"

typedef struct job {
    server *srv;
    gen_request req;
    channel *ch;                 /* NULL unless streaming                 */
    char id[48];
    long created;
    const char *model_id;
    const served_model *vocab;   /* whose token ids the output uses       */
    sm_token *prompt_tokens;     /* completions: the tokenized prompt     */
    int32_t n_prompt_tokens;
    slot *slot;
    sm_session *session;
    tracker tr;
    int32_t n_prompt;            /* tokens in the context when generation began */
    int32_t n_cached;            /* of which the slot already held         */
    double t_prompt_ms;
    double t_prompt_start;       /* when the prompt's decode began (ms)   */
    bool out_of_memory;
    int client_fd;               /* a non-streamed request's socket, or -1 */
    double next_client_check;    /* when to look at it again (ms)         */
    bool client_gone;
    char *verbose_prompt;        /* --verbose: the context at the start, as text */
    sm_tool_prompt *tools;       /* a conversation with tools, or NULL    */
    /* A stream of several answers (n > 1, several prompts): this one's
     * index, and the answers after it, streamed in turn on one channel. */
    int choice_index;
    bool new_prompt;             /* the first answer to its prompt (usage counts its prompt) */
    struct job *next;
} job;

/* Whether the reply carries llama-server's "__verbose" object. */
static inline bool job_verbose(const job *j) { return j->req.verbose >= 0 ? j->req.verbose == 1 : j->srv->opt.verbose; }

#endif
