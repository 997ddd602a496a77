/*
 * edgeplex_ring.h: read edgeplex shared-memory rings from C and C++.
 *
 * Link with -ledgeplex_ring_c (libedgeplex_ring_c.so or .a; with the static library also
 * -lpthread -ldl -lm). The library is the Rust crate edgeplex-ring's reader behind a C ABI, so
 * the ring protocol (docs/RING.md) is implemented once, correctly on x86_64 and aarch64.
 *
 * The payload contract: edgeplex_msg_data() points into the ring slot itself (no copy). It stays
 * readable until the message is freed, but the writer may overwrite it once it laps the slot
 * (the ring keeps slot_count - 1 messages safe). Use the bytes, then call edgeplex_msg_intact()
 * and discard everything derived from them if it returns 0; or use edgeplex_msg_copy(), which
 * checks for you.
 *
 * A ring handle is not thread-safe: use one per thread, or lock. Messages may be used from any
 * thread and outlive their ring. Kept in step with crates/edgeplex-ring-c/src/lib.rs by
 * crates/edgeplex-ring-c/tests/c_example.rs.
 */
#ifndef EDGEPLEX_RING_H
#define EDGEPLEX_RING_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes. */
#define EDGEPLEX_OK 0        /* success */
#define EDGEPLEX_TIMEDOUT 1  /* nothing arrived within the timeout */
#define EDGEPLEX_ERROR (-1)  /* see edgeplex_last_error() */

/* Where a new reader starts. */
#define EDGEPLEX_START_NEWEST 0  /* the newest message already published, then what follows */
#define EDGEPLEX_START_OLDEST 1  /* the oldest message the ring still holds safely */
#define EDGEPLEX_START_NEXT 2    /* only messages published after opening */

/* Stream kinds. */
#define EDGEPLEX_KIND_BYTES 0
#define EDGEPLEX_KIND_VIDEO 1
#define EDGEPLEX_KIND_SERIAL 2

/* Message flags. */
#define EDGEPLEX_FLAG_TRUNCATED 1u
#define EDGEPLEX_FLAG_CAPTURE_REALTIME 2u
#define EDGEPLEX_FLAG_DEVICE_ERROR 4u

typedef struct EdgeplexRing EdgeplexRing; /* a reader of one ring */
typedef struct EdgeplexMsg EdgeplexMsg;   /* one message, in place */

/* The layout of a ring file. */
typedef struct EdgeplexGeometry {
  uint32_t kind;       /* EDGEPLEX_KIND_* */
  uint32_t width;      /* video: pixels */
  uint32_t height;     /* video: pixels */
  uint32_t fourcc;     /* video: V4L2 fourcc, little-endian ('Y' | 'U' << 8 | ...) */
  uint32_t stride;     /* video: bytes per line */
  uint32_t slot_count; /* number of slots */
  uint64_t slot_size;  /* payload capacity of one slot, bytes */
} EdgeplexGeometry;

/* The last error on this thread, one line ("" if none); valid until the next call. */
const char *edgeplex_last_error(void);

/* Open the ring at path. start: EDGEPLEX_START_*. wait_ms > 0 waits that long for a ring that
 * does not exist yet. NULL on error. */
EdgeplexRing *edgeplex_ring_open(const char *path, int start, int64_t wait_ms);

/* Wait up to timeout_ms for a ring to appear at path: EDGEPLEX_OK or EDGEPLEX_ERROR. */
int edgeplex_wait_for_ring(const char *path, int64_t timeout_ms);

/* The next message, waiting up to timeout_ms (< 0: forever). On EDGEPLEX_OK, *out holds a
 * message to free with edgeplex_msg_free(). A geometry change is followed transparently. */
int edgeplex_ring_next(EdgeplexRing *ring, int64_t timeout_ms, EdgeplexMsg **out);

/* The newest message, skipping older ones (counted as lost); else waits like _next. */
int edgeplex_ring_latest(EdgeplexRing *ring, int64_t timeout_ms, EdgeplexMsg **out);

/* The current file's layout. */
int edgeplex_ring_geometry(const EdgeplexRing *ring, EdgeplexGeometry *out);

/* Messages lost so far (lapped, or skipped by _latest). */
uint64_t edgeplex_ring_lost(const EdgeplexRing *ring);

/* 1 if a writer holds the ring's lock now, else 0. */
int edgeplex_ring_writer_alive(const EdgeplexRing *ring);

/* Close the ring (NULL is ignored). Messages not yet freed stay valid. */
void edgeplex_ring_close(EdgeplexRing *ring);

uint64_t edgeplex_msg_seq(const EdgeplexMsg *msg);         /* number since the ring was created */
uint64_t edgeplex_msg_epoch(const EdgeplexMsg *msg);       /* epoch of its writer */
uint64_t edgeplex_msg_capture_ns(const EdgeplexMsg *msg);  /* CLOCK_MONOTONIC unless flag 2 */
uint64_t edgeplex_msg_device_seq(const EdgeplexMsg *msg);  /* restarts with each writer */
uint64_t edgeplex_msg_publish_ns(const EdgeplexMsg *msg);  /* CLOCK_REALTIME */
uint32_t edgeplex_msg_flags(const EdgeplexMsg *msg);       /* EDGEPLEX_FLAG_* */
uint64_t edgeplex_msg_lost_before(const EdgeplexMsg *msg); /* lost since the previous message */
size_t edgeplex_msg_len(const EdgeplexMsg *msg);           /* payload bytes */

/* The payload in place; see the contract above. */
const uint8_t *edgeplex_msg_data(const EdgeplexMsg *msg);

/* 1 if the writer has not overwritten the slot since the message was handed out, else 0. */
int edgeplex_msg_intact(const EdgeplexMsg *msg);

/* Copy the payload into dst (cap bytes) and check it: EDGEPLEX_OK if intact, else
 * EDGEPLEX_ERROR (dst too small, or overwritten during the copy). */
int edgeplex_msg_copy(const EdgeplexMsg *msg, uint8_t *dst, size_t cap);

/* Free a message (NULL is ignored). */
void edgeplex_msg_free(EdgeplexMsg *msg);

/* FNV-1a 64 of len bytes: the hash `edgeplex ring cat --meta --hash` prints. */
uint64_t edgeplex_fnv1a64(const uint8_t *data, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* EDGEPLEX_RING_H */
