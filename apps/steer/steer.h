/* `llama_selfmod steer`: a control vector from contrasting prompts. */
#ifndef APPS_STEER_H
#define APPS_STEER_H

/* argv[0] is "steer". Returns the exit code: 0, 1 on failure, 2 on bad usage. */
int steer_main(int argc, char **argv);

#endif
