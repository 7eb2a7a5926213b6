#include "server/channel.h"

#include <microhttpd.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct channel {
    pthread_mutex_t mutex;
    pthread_cond_t ready;
    char *buf;
    size_t len, cap, read_at;
    bool closed;       /* the producer is done    */
    bool cancelled;    /* the consumer is gone    */
    int refs;
    const atomic_bool *stopping;
};

channel *channel_new(const atomic_bool *stopping) {
    channel *ch = calloc(1, sizeof *ch);
    if (!ch) return NULL;
    pthread_mutex_init(&ch->mutex, NULL);
    pthread_cond_init(&ch->ready, NULL);
    ch->refs = 2;
    ch->stopping = stopping;
    return ch;
}

static void unref_locked_and_unlock(channel *ch) {
    bool last = --ch->refs == 0;
    pthread_mutex_unlock(&ch->mutex);
    if (!last) return;
    pthread_mutex_destroy(&ch->mutex);
    pthread_cond_destroy(&ch->ready);
    free(ch->buf);
    free(ch);
}

bool channel_write(channel *ch, const char *bytes, size_t len) {
    pthread_mutex_lock(&ch->mutex);
    if (ch->cancelled) {
        pthread_mutex_unlock(&ch->mutex);
        return false;
    }
    if (ch->read_at == ch->len) ch->read_at = ch->len = 0; /* all read: start over */
    bool ok = true;
    if (ch->len + len > ch->cap) {
        size_t cap = ch->cap ? ch->cap : 4096;
        while (cap < ch->len + len) cap *= 2;
        char *b = realloc(ch->buf, cap);
        if (b) {
            ch->buf = b;
            ch->cap = cap;
        } else {
            ok = false;
        }
    }
    if (ok) {
        memcpy(ch->buf + ch->len, bytes, len);
        ch->len += len;
        pthread_cond_signal(&ch->ready);
    }
    pthread_mutex_unlock(&ch->mutex);
    return ok;
}

bool channel_write_str(channel *ch, const char *text) { return channel_write(ch, text, strlen(text)); }

bool channel_cancelled(channel *ch) {
    pthread_mutex_lock(&ch->mutex);
    bool cancelled = ch->cancelled;
    pthread_mutex_unlock(&ch->mutex);
    return cancelled;
}

void channel_close(channel *ch) {
    pthread_mutex_lock(&ch->mutex);
    ch->closed = true;
    pthread_cond_signal(&ch->ready);
    unref_locked_and_unlock(ch);
}

static void wait_a_while(channel *ch) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += 200 * 1000 * 1000;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&ch->ready, &ch->mutex, &until);
}

ssize_t channel_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    channel *ch = cls;
    pthread_mutex_lock(&ch->mutex);
    /* Timed waits, so that a server shutting down is noticed. */
    while (ch->read_at == ch->len && !ch->closed && !(ch->stopping && atomic_load(ch->stopping)))
        wait_a_while(ch);
    ssize_t n;
    if (ch->read_at < ch->len) {
        size_t avail = ch->len - ch->read_at;
        size_t k = avail < max ? avail : max;
        memcpy(buf, ch->buf + ch->read_at, k);
        ch->read_at += k;
        n = (ssize_t)k;
    } else {
        n = ch->closed ? MHD_CONTENT_READER_END_OF_STREAM : MHD_CONTENT_READER_END_WITH_ERROR;
    }
    pthread_mutex_unlock(&ch->mutex);
    return n;
}

void channel_consumer_done(void *cls) {
    channel *ch = cls;
    pthread_mutex_lock(&ch->mutex);
    ch->cancelled = true;
    unref_locked_and_unlock(ch);
}
