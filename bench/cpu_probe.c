/*
 * cpu_probe: whether the library loads models with llama.cpp's extra
 * buffer types on this machine (src/cpu_probe.c: not where the AMX
 * product crashes). bench/run.sh gives plain llama.cpp the same placement,
 * so that its ratios measure the loop, not the weights' layout.
 * Prints "extra-buffers on" or "extra-buffers off".
 */
#include "internal.h"

#include <stdio.h>

int main(void) {
    sm_set_llama_logging(false);
    llama_backend_init();
    printf("extra-buffers %s\n", sm_cpu_extra_buffers_work() ? "on" : "off");
    return 0;
}
