/* What every request handler shares: the options, the models, the slots. */
#ifndef SERVER_CONTEXT_H
#define SERVER_CONTEXT_H

#include "server/models.h"
#include "server/options.h"
#include "server/slots.h"
#include "server/watchdog.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>

typedef struct server {
    server_options opt;
    model_set models;
    slot_pool slots;
    char web_dir[PATH_MAX];       /* "" when there is none                 */
    atomic_bool stopping;         /* generations end now                   */
    /* Until the models are ready, and once a shutdown began, every request
     * but what is in flight is answered 503 (/health too: a proxy's check) */
    atomic_bool loading;
    atomic_bool draining;
    atomic_int in_flight;         /* requests being answered               */
    /* streaming generations run in their own threads; shutdown waits */
    pthread_mutex_t workers_mutex;
    pthread_cond_t workers_done;
    int n_workers;
    atomic_long n_requests;
    atomic_long n_cancelled;      /* generations whose client went away    */
    bool loopback_only;           /* bound to a loopback address           */
    watchdog watchdog;            /* deadlines for slow clients            */
    /* /metrics (llama-server's Prometheus counters), under metrics_mutex */
    pthread_mutex_t metrics_mutex;
    struct {
        double prompt_tokens, prompt_cached, prompt_seconds;
        double predicted_tokens, predicted_seconds;
        double n_tokens_max;
        double embedding_decodes;    /* llama_decode calls of /v1/embeddings */
        double last_prompt_rate, last_predicted_rate;
    } metrics;
    double started_unix;          /* for the Process-Start-Time-Unix header */
    char *chat_template;          /* the template's text, for /props        */
} server;

#endif
