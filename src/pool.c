/*
 * A tiny persistent thread pool: run fn(arg, i) for i in [0, n), index 0 on
 * the caller's thread, the others on parked workers. Used to decode every
 * model of a fused session at once; threads are kept because creating them
 * per token would cost more than a small model's whole decode.
 */
#include "internal.h"

#include <pthread.h>
#include <stdlib.h>

struct sm_pool {
    pthread_mutex_t lock;
    pthread_cond_t start, done;
    pthread_t *threads;
    int32_t n_workers;
    uint64_t epoch;          /* bumped for each job                 */
    int32_t pending;         /* workers still running the job       */
    int32_t n_jobs;          /* indices in this job                 */
    bool quit;
    void (*fn)(void *arg, int32_t index);
    void *arg;
};

typedef struct worker_arg {
    sm_pool *pool;
    int32_t index;           /* 1-based: index 0 is the caller's    */
} worker_arg;

static void *worker_main(void *p) {
    worker_arg *wa = p;
    sm_pool *pool = wa->pool;
    const int32_t index = wa->index;
    free(wa);
    uint64_t seen = 0;
    pthread_mutex_lock(&pool->lock);
    for (;;) {
        while (pool->epoch == seen && !pool->quit) pthread_cond_wait(&pool->start, &pool->lock);
        if (pool->quit) break;
        seen = pool->epoch;
        bool mine = index < pool->n_jobs;
        pthread_mutex_unlock(&pool->lock);
        if (mine) pool->fn(pool->arg, index);
        pthread_mutex_lock(&pool->lock);
        if (--pool->pending == 0) pthread_cond_signal(&pool->done);
    }
    pthread_mutex_unlock(&pool->lock);
    return NULL;
}

sm_pool *sm_pool_new(int32_t n_workers) {
    sm_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return NULL;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->start, NULL);
    pthread_cond_init(&pool->done, NULL);
    pool->threads = calloc((size_t)(n_workers > 0 ? n_workers : 1), sizeof(pthread_t));
    if (!pool->threads) {
        sm_pool_free(pool);
        return NULL;
    }
    for (int32_t i = 0; i < n_workers; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa) break;
        *wa = (worker_arg){pool, i + 1};
        if (pthread_create(&pool->threads[i], NULL, worker_main, wa) != 0) {
            free(wa);
            break;
        }
        pool->n_workers++;
    }
    if (pool->n_workers != n_workers) {
        sm_pool_free(pool);
        return NULL;
    }
    return pool;
}

void sm_pool_run(sm_pool *pool, void (*fn)(void *arg, int32_t index), void *arg, int32_t n) {
    if (!pool || pool->n_workers == 0 || n <= 1) {
        for (int32_t i = 0; i < n; i++) fn(arg, i);
        return;
    }
    pthread_mutex_lock(&pool->lock);
    pool->fn = fn;
    pool->arg = arg;
    pool->n_jobs = n;
    pool->pending = pool->n_workers;
    pool->epoch++;
    pthread_cond_broadcast(&pool->start);
    pthread_mutex_unlock(&pool->lock);
    fn(arg, 0);
    /* indices beyond the workers (never with one worker per extra model) */
    for (int32_t i = pool->n_workers + 1; i < n; i++) fn(arg, i);
    pthread_mutex_lock(&pool->lock);
    while (pool->pending > 0) pthread_cond_wait(&pool->done, &pool->lock);
    pthread_mutex_unlock(&pool->lock);
}

void sm_pool_free(sm_pool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->lock);
    pool->quit = true;
    pthread_cond_broadcast(&pool->start);
    pthread_mutex_unlock(&pool->lock);
    for (int32_t i = 0; i < pool->n_workers; i++) pthread_join(pool->threads[i], NULL);
    free(pool->threads);
    pthread_cond_destroy(&pool->start);
    pthread_cond_destroy(&pool->done);
    pthread_mutex_destroy(&pool->lock);
    free(pool);
}
