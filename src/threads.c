/*
 * threads.c - how many threads a context decodes one token with, when the
 * user left it to the library (n_threads = 0).
 *
 * llama.cpp's CPU threads meet at a barrier after every operation and
 * spin there. When another process holds a core, a thread waits for one
 * that is not running, and two threads on a busy two-core machine decode
 * 2-10x slower than one (README, "Threads under load"). No fixed count is
 * right both on an idle machine and on a busy one, so the tuner measures:
 * it decodes with `current` threads, and now and then tries the next
 * count down (half) or up (double, at most `max`) for a few tokens,
 * keeping whichever decoded faster on average (the mean, not the median:
 * under load most tokens are quick and a few wait many milliseconds for a
 * descheduled thread, and those few are the cost). A probe that
 * loses doubles the wait before the next one (up to MAX_BACKOFF tokens)
 * and ends after two tokens when it is clearly slower, so an idle machine
 * pays almost nothing for probing and a machine that becomes busy (or
 * idle again) is noticed within a few hundred tokens.
 *
 * Only one-token decodes are measured and tuned; a prompt's batch always
 * uses every thread.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

enum { MIN_WINDOW = 4, FIRST_PROBE = 4, BASE_BACKOFF = 64, MAX_BACKOFF = 4096 };

void sm_thread_tuner_init(sm_thread_tuner *t, int32_t max_threads, bool enabled) {
    memset(t, 0, sizeof *t);
    t->enabled = enabled && max_threads > 1;
    t->max = max_threads;
    t->current = max_threads;
    t->next_probe = FIRST_PROBE;
    t->backoff = BASE_BACKOFF;
}

/* The other count to try: down first, then up, alternating. */
static int32_t alternative(const sm_thread_tuner *t) {
    int32_t down = t->current / 2 > 0 ? t->current / 2 : 1;
    int32_t up = t->current * 2 < t->max ? t->current * 2 : t->max;
    bool can_down = down != t->current, can_up = up != t->current;
    if (can_down && (!can_up || !t->last_probe_was_down)) return down;
    return can_up ? up : t->current;
}

static double mean(const double *ms, int32_t n) {
    double sum = 0;
    for (int32_t i = 0; i < n; i++) sum += ms[i];
    return n > 0 ? sum / n : 0;
}

int32_t sm_thread_tuner_next(sm_thread_tuner *t) {
    if (!t->enabled) return t->max;
    if (!t->probing && t->n_decodes >= t->next_probe && t->n_current >= MIN_WINDOW) {
        int32_t a = alternative(t);
        if (a != t->current) {
            t->probing = true;
            t->probe = a;
            t->last_probe_was_down = a < t->current;
            t->n_probe = 0;
        }
    }
    return t->probing ? t->probe : t->current;
}

static void finish_probe(sm_thread_tuner *t, bool won) {
    t->probing = false;
    if (won) {
        t->current = t->probe;
        /* its latest times are the new window */
        int32_t n = t->n_probe < SM_TUNER_WINDOW ? t->n_probe : SM_TUNER_WINDOW;
        for (int32_t i = 0; i < n; i++) t->ms_current[i] = t->ms_probe[(t->n_probe - n + i) % SM_TUNER_PROBE_UP];
        t->n_current = n;
        t->next_current = n % SM_TUNER_WINDOW;
        t->backoff = BASE_BACKOFF;
        t->n_switches++;
    } else {
        t->backoff = t->backoff * 2 < MAX_BACKOFF ? t->backoff * 2 : MAX_BACKOFF;
    }
    t->next_probe = t->n_decodes + t->backoff;
}

void sm_thread_tuner_record(sm_thread_tuner *t, int32_t threads, double ms) {
    if (!t->enabled) return;
    t->n_decodes++;
    if (t->probing && threads == t->probe) {
        t->ms_probe[t->n_probe++ % SM_TUNER_PROBE_UP] = ms;
        double probe = mean(t->ms_probe, t->n_probe < SM_TUNER_PROBE_UP ? t->n_probe : SM_TUNER_PROBE_UP), current = mean(t->ms_current, t->n_current);
        /* a probe clearly losing ends early: under load a wrong count can
         * be several times slower, and each of its tokens costs that */
        if (t->n_probe >= 2 && probe > 1.5 * current) {
            finish_probe(t, false);
        } else if (t->probe < t->current && t->n_probe == SM_TUNER_WINDOW) {
            finish_probe(t, probe < 0.9 * current);
        } else if (t->probe > t->current && t->n_probe == SM_TUNER_PROBE_UP) {
            /* more threads must win for longer and by more: when they
             * lose under load, they lose by ten times */
            finish_probe(t, probe < 0.8 * current);
        }
        return;
    }
    if (threads != t->current) return;
    t->ms_current[t->next_current] = ms; /* the latest SM_TUNER_WINDOW decodes, as a ring */
    t->next_current = (t->next_current + 1) % SM_TUNER_WINDOW;
    if (t->n_current < SM_TUNER_WINDOW) t->n_current++;
}
