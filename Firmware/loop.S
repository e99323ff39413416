# loop: guest instruction speed. Runs `dec/jnz` rdi times, then exits with
# status 0 on port 0xF4. Time per iteration = run time / rdi.
#include "common.h"
_start:
        repeat_rdi
        end_repeat_rdi
