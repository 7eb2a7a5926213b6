/*
 * A byte channel from a generation thread to the HTTP connection that
 * streams its server-sent events. The connection's thread blocks in
 * channel_read until bytes arrive; when the client goes away the HTTP
 * library frees the response, which marks the channel cancelled, and the
 * generation sees that at its next event and stops.
 */
#ifndef SERVER_CHANNEL_H
#define SERVER_CHANNEL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct channel channel;

/* One reference for the producer, one for the consumer. `stopping` (may be
 * NULL) is the server's shutdown flag: a waiting reader gives up on it. */
channel *channel_new(const atomic_bool *stopping);
/* false when the consumer is gone (nothing is queued then). */
bool channel_write(channel *ch, const char *bytes, size_t len);
bool channel_write_str(channel *ch, const char *text);
bool channel_cancelled(channel *ch);
/* The producer is done; drops its reference. */
void channel_close(channel *ch);

/* For MHD_create_response_from_callback: returns bytes copied, or
 * MHD_CONTENT_READER_END_OF_STREAM / _END_WITH_ERROR. */
ssize_t channel_read(void *cls, uint64_t pos, char *buf, size_t max);
/* The response is gone (sent or the client left): cancels and drops the
 * consumer's reference. */
void channel_consumer_done(void *cls);

#endif
