/* `llama_selfmod eval`: compares generation strategies on a prompt set. */
#ifndef EVAL_EVAL_H
#define EVAL_EVAL_H

/* argv[0] is "eval". Returns the process exit code: 0 on success, 2 for
 * a usage error, 1 when the evaluation itself fails. */
int eval_main(int argc, char **argv);

#endif
