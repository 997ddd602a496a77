/*
 * read.c: print one line per message of an edgeplex ring, like `edgeplex ring cat --meta
 * --hash`: seq, length, lost_before and the FNV-1a 64 hash of the payload, read in place.
 *
 *   cc -I include examples/read.c -L target/debug -ledgeplex_ring_c -o read
 *   ./read /dev/shm/edgeplex/cam0/cam0.ring 10 [oldest|newest|next]
 *
 * Exit codes: 0 done, 64 usage, 66 no usable ring, 1 otherwise.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgeplex_ring.h"

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: read RING [COUNT] [oldest|newest|next]\n");
    return 64;
  }
  long count = argc > 2 ? strtol(argv[2], NULL, 10) : 10;
  int start = EDGEPLEX_START_NEWEST;
  if (argc > 3 && strcmp(argv[3], "oldest") == 0) start = EDGEPLEX_START_OLDEST;
  if (argc > 3 && strcmp(argv[3], "next") == 0) start = EDGEPLEX_START_NEXT;

  EdgeplexRing *ring = edgeplex_ring_open(argv[1], start, 10000);
  if (ring == NULL) {
    fprintf(stderr, "read: %s\n", edgeplex_last_error());
    return 66;
  }
  EdgeplexGeometry g;
  if (edgeplex_ring_geometry(ring, &g) == EDGEPLEX_OK && g.kind == EDGEPLEX_KIND_VIDEO) {
    fprintf(stderr, "read: video %" PRIu32 "x%" PRIu32 " stride %" PRIu32 ", %" PRIu32 " slots\n",
            g.width, g.height, g.stride, g.slot_count);
  }
  long seen = 0;
  while (seen < count) {
    EdgeplexMsg *msg = NULL;
    int rc = edgeplex_ring_next(ring, 5000, &msg);
    if (rc == EDGEPLEX_TIMEDOUT) {
      fprintf(stderr, "read: no message for 5 s (writer alive: %d)\n", edgeplex_ring_writer_alive(ring));
      break;
    }
    if (rc != EDGEPLEX_OK) {
      fprintf(stderr, "read: %s\n", edgeplex_last_error());
      edgeplex_ring_close(ring);
      return 1;
    }
    /* Hash the payload in place, then check the writer did not lap it meanwhile. */
    uint64_t hash = edgeplex_fnv1a64(edgeplex_msg_data(msg), edgeplex_msg_len(msg));
    if (edgeplex_msg_intact(msg)) {
      printf("{\"seq\":%" PRIu64 ",\"epoch\":%" PRIu64 ",\"len\":%zu,\"lost_before\":%" PRIu64
             ",\"fnv1a64\":\"%016" PRIx64 "\"}\n",
             edgeplex_msg_seq(msg), edgeplex_msg_epoch(msg), edgeplex_msg_len(msg),
             edgeplex_msg_lost_before(msg), hash);
      fflush(stdout);
      seen++;
    }
    edgeplex_msg_free(msg);
  }
  printf("{\"event\":\"end\",\"lost\":%" PRIu64 "}\n", edgeplex_ring_lost(ring));
  edgeplex_ring_close(ring);
  return 0;
}
