/*
 * cpu_probe: whether the library loads models with llama.cpp's extra
 * buffer types on this machine (src/cpu_probe.c: not where the AMX
 * product crashes). bench/run.sh gives plain llama.cpp the same placement,
 * so that its ratios measure the loop, not the weights' layout.
 * Prints "extra-buffers on" or "extra-buffers off".
 *
 * --with-handlers: first installs fault handlers that exit 0, as a host
 * program might (tests/test_quantized.sh): the answer must not change.
 */
#include "internal.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void exit_quietly(int sig) {
    (void)sig;
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--with-handlers") == 0) {
        const int faults[] = {SIGILL, SIGSEGV, SIGBUS, SIGFPE};
        for (size_t i = 0; i < sizeof faults / sizeof *faults; i++) signal(faults[i], exit_quietly);
    }
    sm_set_llama_logging(false);
    llama_backend_init();
    printf("extra-buffers %s\n", sm_cpu_extra_buffers_work() ? "on" : "off");
    return 0;
}
