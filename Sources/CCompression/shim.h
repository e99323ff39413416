// The system decompression libraries svmm uses to unpack a bzImage's payload
// on the host (Debian: zlib1g-dev liblzma-dev liblz4-dev libzstd-dev libbz2-dev).
#include <zlib.h>
#include <lzma.h>
#include <lz4.h>
#include <zstd.h>
#include <bzlib.h>
