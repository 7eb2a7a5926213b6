/* The HTTP side: libmicrohttpd with one thread per connection, request
 * bodies with a size limit, routing, authentication, CORS, and replies. */
#ifndef SERVER_HTTP_H
#define SERVER_HTTP_H

#include "server/channel.h"
#include "server/context.h"
#include "server/request.h"

#include <cjson/cJSON.h>
#include <microhttpd.h>

typedef struct reply {
    unsigned status;
    struct MHD_Response *response;   /* NULL: out of memory */
} reply;

reply reply_json(unsigned status, cJSON *json);   /* takes json */
reply reply_error(const api_error *err);
reply reply_error_simple(unsigned status, const char *param, const char *message);
/* 404 with code "not_found": "<what>: <url>". */
reply reply_not_found(const char *what, const char *url);
reply reply_stream(channel *ch);                  /* text/event-stream */
reply reply_bytes(unsigned status, const char *content_type, const void *data, size_t len);

/* A POST handler: the body is complete and within the size limit. */
typedef reply (*api_handler)(server *srv, int client_fd, const char *body, size_t len);

/* Listens on every address of --host (a comma-separated list): writes up
 * to max daemons and returns how many, or 0 with err set. */
int http_start(server *srv, struct MHD_Daemon **daemons, int max, char *err, size_t err_size);
/* The port actually bound (for --port 0). */
int http_bound_port(struct MHD_Daemon *daemon);

#endif
