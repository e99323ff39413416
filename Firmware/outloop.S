# outloop: per-exit cost. Writes to the unhandled port 0x80 rdi times (each
# write is one exit to userspace), then exits with status 0 on port 0xF4.
#include "common.h"
_start:
        repeat_rdi
        out     %al, $0x80
        end_repeat_rdi
