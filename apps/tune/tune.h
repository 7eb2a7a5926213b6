/* `llama_selfmod tune`: searches the calibrated policy's settings. */
#ifndef TUNE_TUNE_H
#define TUNE_TUNE_H

/* argv[0] is "tune". 0 on success, 2 for a usage error, 1 when it fails. */
int tune_main(int argc, char **argv);

#endif
