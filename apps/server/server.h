/* `llama_selfmod serve`: an OpenAI-compatible HTTP server with the web page. */
#ifndef SERVER_SERVER_H
#define SERVER_SERVER_H

/* argv[0] is "serve". Returns the process exit code. */
int serve_main(int argc, char **argv);

#endif
