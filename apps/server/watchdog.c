/*
 * watchdog.c - connections that send their request too slowly are closed.
 *
 * libmicrohttpd's connection timeout only measures silence, so a client
 * that sends one header byte just before each timeout could hold a
 * connection (and, with a thread per connection, a thread) forever. Every
 * connection here has a deadline instead: its headers within
 * header_seconds of connecting (or of its previous request ending, which
 * also bounds an idle keep-alive connection), its body within
 * BODY_SECONDS after that. While a request is being answered
 * there is no deadline (a long generation is not a slow client). A thread
 * checks once a second and shuts down the socket of any connection past
 * its deadline, which ends the connection's thread.
 */
#include "server/watchdog.h"

#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { BODY_SECONDS = 120 };

struct watched {
    int fd;
    double deadline; /* monotonic seconds; 0 = none */
    watched *prev, *next;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *watch(void *arg) {
    watchdog *w = arg;
    pthread_mutex_lock(&w->mutex);
    while (!w->stop) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&w->wake, &w->mutex, &until);
        double t = now_s();
        for (watched *c = w->head; c; c = c->next)
            if (c->deadline > 0 && t > c->deadline) {
                shutdown(c->fd, SHUT_RDWR); /* its thread sees the error and closes it */
                c->deadline = 0;
                w->n_closed++;
            }
    }
    pthread_mutex_unlock(&w->mutex);
    return NULL;
}

bool watchdog_start(watchdog *w, int header_seconds) {
    *w = (watchdog){.header_seconds = header_seconds};
    pthread_mutex_init(&w->mutex, NULL);
    pthread_cond_init(&w->wake, NULL);
    if (pthread_create(&w->thread, NULL, watch, w) != 0) return false;
    w->running = true;
    return true;
}

void watchdog_stop(watchdog *w) {
    if (w->running) {
        pthread_mutex_lock(&w->mutex);
        w->stop = true;
        pthread_cond_signal(&w->wake);
        pthread_mutex_unlock(&w->mutex);
        pthread_join(w->thread, NULL);
        w->running = false;
    }
    while (w->head) {
        watched *c = w->head;
        w->head = c->next;
        free(c);
    }
    pthread_mutex_destroy(&w->mutex);
    pthread_cond_destroy(&w->wake);
}

watched *watchdog_add(watchdog *w, int fd) {
    watched *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->fd = fd;
    c->deadline = now_s() + w->header_seconds;
    pthread_mutex_lock(&w->mutex);
    c->next = w->head;
    if (w->head) w->head->prev = c;
    w->head = c;
    pthread_mutex_unlock(&w->mutex);
    return c;
}

void watchdog_remove(watchdog *w, watched *c) {
    if (!c) return;
    pthread_mutex_lock(&w->mutex);
    if (c->prev) c->prev->next = c->next;
    else w->head = c->next;
    if (c->next) c->next->prev = c->prev;
    pthread_mutex_unlock(&w->mutex);
    free(c);
}

static void set_deadline(watchdog *w, watched *c, double seconds) {
    if (!c) return;
    pthread_mutex_lock(&w->mutex);
    c->deadline = seconds > 0 ? now_s() + seconds : 0;
    pthread_mutex_unlock(&w->mutex);
}

void watchdog_headers_read(watchdog *w, watched *c) { set_deadline(w, c, BODY_SECONDS); }
void watchdog_answering(watchdog *w, watched *c) { set_deadline(w, c, 0); }
void watchdog_request_done(watchdog *w, watched *c) { set_deadline(w, c, w->header_seconds); }
