/* Deadlines for connections that send their requests too slowly
 * (watchdog.c). */
#ifndef SERVER_WATCHDOG_H
#define SERVER_WATCHDOG_H

#include <pthread.h>
#include <stdbool.h>

typedef struct watched watched;

typedef struct watchdog {
    pthread_mutex_t mutex;
    pthread_cond_t wake;
    pthread_t thread;
    bool running, stop;
    watched *head;
    long n_closed;     /* connections closed for missing a deadline */
    int header_seconds;
} watchdog;

bool watchdog_start(watchdog *w, int header_seconds);
void watchdog_stop(watchdog *w);
/* A new connection on socket fd: its headers are due. */
watched *watchdog_add(watchdog *w, int fd);
void watchdog_remove(watchdog *w, watched *c);
/* The request's headers are in: its body is due. */
void watchdog_headers_read(watchdog *w, watched *c);
/* The request is whole and being answered: no deadline. */
void watchdog_answering(watchdog *w, watched *c);
/* The answer is sent: the next request's headers are due. */
void watchdog_request_done(watchdog *w, watched *c);

#endif
