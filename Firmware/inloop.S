# inloop: per-exit cost of a port read. Reads the unhandled port 0x80 rdi
# times (one exit to userspace each), then exits with status 0 on port 0xF4.
#include "common.h"
_start:
        repeat_rdi
        in      $0x80, %al
        end_repeat_rdi
