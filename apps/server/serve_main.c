/*
 * llama_selfmod serve: loads the models once, starts the HTTP server and
 * runs until SIGINT or SIGTERM.
 */
#include "server/server.h"
#include "server/context.h"
#include "server/http.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

static bool has_index(const char *dir) {
    char path[2 * PATH_MAX];
    snprintf(path, sizeof path, "%s/index.html", dir);
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static bool use_dir(server *srv, const char *dir) {
    if (!dir || !has_index(dir)) return false;
    char *real = realpath(dir, NULL);
    const char *chosen = real ? real : dir;
    bool fits = strlen(chosen) < sizeof srv->web_dir;
    if (fits) memcpy(srv->web_dir, chosen, strlen(chosen) + 1);
    free(real);
    return fits;
}

/* --web-dir; else the source tree's web/ (SELFMOD_WEB_DIR, set by the
 * build); else web/ beside or above the program. */
static bool find_web_dir(server *srv) {
    if (srv->opt.web_dir) {
        if (use_dir(srv, srv->opt.web_dir)) return true;
        fprintf(stderr, "llama_selfmod serve: error: --web-dir '%s' has no index.html\n", srv->opt.web_dir);
        return false;
    }
    /* An installed copy's own page first (PREFIX/share/llama_selfmod/web
     * beside PREFIX/bin), then the checkout it was built from. */
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) *slash = '\0';
        char dir[2 * PATH_MAX];
        snprintf(dir, sizeof dir, "%s/../share/llama_selfmod/web", exe);
        if (use_dir(srv, dir)) return true;
    }
#ifdef SELFMOD_WEB_DIR
    if (use_dir(srv, SELFMOD_WEB_DIR)) return true;
#endif
    if (n > 0) {
        static const char *const CANDIDATES[] = {"%s/../web", "%s/web", "%s/../../web"};
        for (size_t i = 0; i < sizeof CANDIDATES / sizeof CANDIDATES[0]; i++) {
            char dir[2 * PATH_MAX];
            snprintf(dir, sizeof dir, CANDIDATES[i], exe);
            if (use_dir(srv, dir)) return true;
        }
    }
    srv->web_dir[0] = '\0';
    if (!srv->opt.quiet) fprintf(stderr, "[serve] no web page found (give --web-dir DIR): serving the API only\n");
    return true;
}

static uint32_t context_size(const server *srv) {
    uint32_t n_ctx = srv->opt.n_ctx;
    for (int i = 0; i < srv->models.n_models; i++) {
        int32_t n_train = sm_model_n_ctx_train(srv->models.models[i].model);
        if (n_ctx == 0 && n_train > 0) n_ctx = (uint32_t)n_train;
        /* past its training length a model with learned positions aborts */
        if (n_train > 0 && n_ctx > (uint32_t)n_train) n_ctx = (uint32_t)n_train;
    }
    return n_ctx ? n_ctx : 2048;
}

static int threads_per_slot(const server *srv) {
    if (srv->opt.n_threads > 0) return srv->opt.n_threads;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    long n = (cores > 0 ? cores : 1) / srv->opt.parallel;
    return n > 0 ? (int)n : 1;
}

static bool start_slots(server *srv) {
    sm_session_params sp = sm_session_default_params();
    sp.n_ctx = context_size(srv);
    if (srv->opt.n_batch > 0) sp.n_batch = srv->opt.n_batch;
    sp.n_threads = threads_per_slot(srv);
    sp.fusion_align = srv->opt.fusion_align;
    sm_chat_params cp = sm_chat_default_params();
    /* As llama-server: with Jinja, --chat-template's value is a template's
     * text unless it names one of llama.cpp's. */
    const char *named = srv->opt.chat_template;
    bool as_text = named && !srv->opt.no_jinja && !sm_chat_template_known(named);
    cp.template_name = as_text ? NULL : named;
    cp.template_kwargs = srv->opt.chat_template_kwargs;
    cp.template_source = as_text ? named : srv->opt.chat_template_text;
    cp.jinja = !srv->opt.no_jinja;
    cp.keep_all_turns = !srv->opt.drop_old_turns;
    cp.fallback_user = srv->opt.user_label;
    cp.fallback_assistant = srv->opt.assistant_label;
    if (!slot_pool_init(&srv->slots, srv->opt.parallel, &srv->models, &sp, &cp, srv->opt.loom_max_beams)) {
        fprintf(stderr, "llama_selfmod serve: error: out of memory\n");
        return false;
    }
    /* Continuous batching: one context per model for every slot, decoding
     * with all the threads (models of other vocabularies too: each of their
     * sequences catches up with its slot's text in the same steps). */
    srv->slots.batched = !srv->opt.no_batch;
    srv->slots.kv_unified = srv->opt.kv_unified;
    srv->slots.batch_threads = srv->opt.n_threads;
    /* Make one slot's sessions now, so that a problem (a vocabulary
     * mismatch, a context too large) shows before the server listens. */
    slot *s = slot_acquire(&srv->slots, 0, NULL, 0);
    char why[512] = "";
    bool ok = slot_session(&srv->slots, s, 0, why, sizeof why) != NULL;
    sm_chat *chat = ok ? slot_chat(&srv->slots, s, 0, false, why, sizeof why) : NULL;
    ok = ok && chat;
    if (ok) fprintf(stderr, "llama_selfmod serve: chat format %s\n", sm_chat_template_used(chat));
    if (ok) ok = (srv->chat_template = strdup(sm_chat_template_text(chat))) != NULL;
    slot_release(&srv->slots, s);
    if (!ok) fprintf(stderr, "llama_selfmod serve: error: %s\n", why);
    return ok;
}

static void wait_for_workers(server *srv) {
    pthread_mutex_lock(&srv->workers_mutex);
    while (srv->n_workers > 0) pthread_cond_wait(&srv->workers_done, &srv->workers_mutex);
    pthread_mutex_unlock(&srv->workers_mutex);
}

static void stop_listening(server *srv, struct MHD_Daemon **daemons, int n) {
    atomic_store(&srv->stopping, true);
    for (int i = 0; i < n; i++) MHD_stop_daemon(daemons[i]);
    wait_for_workers(srv);
    watchdog_stop(&srv->watchdog);
}

/* The first SIGTERM or SIGINT drains: new requests and /health get 503
 * (a proxy takes the replica out and retries elsewhere), the requests in
 * flight finish, for --drain-timeout seconds at most. A second signal, or
 * the timeout, ends what is left at once. */
static void drain(server *srv, const sigset_t *signals, int sig) {
    fprintf(stderr, "llama_selfmod serve: %s: finishing %d request%s in flight, refusing new ones\n",
            sig == SIGINT ? "interrupted" : "terminated", atomic_load(&srv->in_flight),
            atomic_load(&srv->in_flight) == 1 ? "" : "s");
    fflush(stderr);
    atomic_store(&srv->draining, true);
    struct timespec tick = {0, 50 * 1000 * 1000};
    for (int waited_ms = 0; atomic_load(&srv->in_flight) > 0; waited_ms += 50) {
        if (srv->opt.drain_timeout >= 0 && waited_ms >= srv->opt.drain_timeout * 1000) {
            fprintf(stderr, "llama_selfmod serve: --drain-timeout: ending %d request%s\n", atomic_load(&srv->in_flight),
                    atomic_load(&srv->in_flight) == 1 ? "" : "s");
            return;
        }
        if (sigtimedwait(signals, NULL, &tick) > 0) {
            fprintf(stderr, "llama_selfmod serve: a second signal: ending what is in flight\n");
            return;
        }
    }
}

static int run(server *srv) {
    char err[512];
    /* Signals go to sigwait below, not to whichever thread runs. */
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* Listening first, as llama-server: /health answers 503 until the
     * models are ready, so a proxy or orchestrator can wait for them. */
    atomic_store(&srv->loading, true);
    struct MHD_Daemon *daemons[8];
    int n_daemons = http_start(srv, daemons, 8, err, sizeof err);
    if (n_daemons == 0) {
        fprintf(stderr, "llama_selfmod serve: error: %s\n", err);
        return EXIT_FAILURE;
    }
    sm_model_params mp = sm_model_default_params();
    mp.n_gpu_layers = srv->opt.rpc_servers && !srv->opt.n_gpu_layers_given ? -1 : srv->opt.n_gpu_layers;
    mp.rpc_servers = srv->opt.rpc_servers;
    mp.no_repack = srv->opt.no_repack;
    if (!model_set_load(&srv->models, srv->opt.model_paths, srv->opt.n_models, srv->opt.alias, srv->opt.tags, &mp, err,
                        sizeof err)) {
        fprintf(stderr, "llama_selfmod serve: error: %s\n", err);
        stop_listening(srv, daemons, n_daemons);
        return EXIT_FAILURE;
    }
    if (!find_web_dir(srv) || !start_slots(srv)) {
        stop_listening(srv, daemons, n_daemons);
        return EXIT_FAILURE;
    }
    atomic_store(&srv->loading, false);
    if (sm_model_amx_refused(srv->models.models[0].model))
        fprintf(stderr, "llama_selfmod serve: note: llama.cpp's AMX matrix product fails on this CPU: the weights "
                        "stay as stored (as --no-repack)\n");
    if (srv->slots.batched)
        fprintf(stderr, "llama_selfmod serve: model %s, %d slot%s of %u tokens, decoded together (continuous batching)\n",
                srv->models.default_id, srv->slots.n_slots, srv->slots.n_slots == 1 ? "" : "s",
                srv->slots.session_params.n_ctx);
    else
        fprintf(stderr, "llama_selfmod serve: model %s, %d slot%s of %u tokens, %d thread%s each\n",
                srv->models.default_id, srv->slots.n_slots, srv->slots.n_slots == 1 ? "" : "s",
                srv->slots.session_params.n_ctx, srv->slots.session_params.n_threads,
                srv->slots.session_params.n_threads == 1 ? "" : "s");
    if (srv->web_dir[0]) fprintf(stderr, "llama_selfmod serve: web page from %s\n", srv->web_dir);
    char hosts[512];
    snprintf(hosts, sizeof hosts, "%s", srv->opt.host);
    char *save = NULL;
    for (const char *host = strtok_r(hosts, ",", &save); host; host = strtok_r(NULL, ",", &save)) {
        bool v6 = strchr(host, ':') != NULL;
        fprintf(stderr, "llama_selfmod serve: listening on http://%s%s%s:%d\n", v6 ? "[" : "", host, v6 ? "]" : "",
                http_bound_port(daemons[0]));
    }
    fflush(stderr);

    int sig = 0;
    sigwait(&stop_signals, &sig);
    drain(srv, &stop_signals, sig);
    fprintf(stderr, "llama_selfmod serve: stopping\n");
    stop_listening(srv, daemons, n_daemons);
    return EXIT_SUCCESS;
}

int serve_main(int argc, char **argv) {
    static server srv; /* large (paths); one per process */
    memset(&srv, 0, sizeof srv);
    switch (server_parse_options(argc, argv, &srv.opt, stdout, stderr)) {
    case OPTIONS_EXIT_OK: return EXIT_SUCCESS;
    case OPTIONS_ERROR: return 2;
    case OPTIONS_RUN: break;
    }
    sm_set_llama_logging(false);
    pthread_mutex_init(&srv.workers_mutex, NULL);
    pthread_mutex_init(&srv.metrics_mutex, NULL);
    pthread_cond_init(&srv.workers_done, NULL);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    srv.started_unix = (double)now.tv_sec;
    int code = run(&srv);
    slot_pool_free(&srv.slots);
    model_set_free(&srv.models);
    server_options_free(&srv.opt);
    free(srv.chat_template);
    pthread_mutex_destroy(&srv.workers_mutex);
    pthread_mutex_destroy(&srv.metrics_mutex);
    pthread_cond_destroy(&srv.workers_done);
    return code;
}
