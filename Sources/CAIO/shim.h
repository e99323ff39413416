// Linux native asynchronous I/O through the system libaio (Debian:
// libaio-dev): virtio-blk's requests in flight (VMCore's AsyncIO).
#include <libaio.h>
