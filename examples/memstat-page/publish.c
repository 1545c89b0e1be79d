/*
 * publish: a memstat page publisher in C (docs/memstat-page.md).
 *
 *   OOMD_MEMSTAT_PAGE_FD=3 ./publish BYTES [COUNT] 3<>page
 *
 * Publishes BYTES COUNT times (default 1) on the page whose read-write fd is named by
 * OOMD_MEMSTAT_PAGE_FD, following the writer's protocol, and prints the page's sample
 * counter after the last write. Build: gcc -O2 -o publish publish.c
 *
 * The __atomic builtins with __ATOMIC_SEQ_CST compile to the same instructions as Go's
 * sync/atomic (MOV/XCHG/LOCK CMPXCHG on x86-64, LDAR/STLR/CAS on arm64), so this writer
 * may share a page with Go writers in other processes.
 */
#include <errno.h>
#include <inttypes.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

enum {
	PAGE_SIZE_ = 4096,
	OFF_MAGIC = 0,   /* u32 "OMSP", written by execd */
	OFF_VERSION = 4, /* u32 1, written by execd */
	OFF_SEQ = 8,     /* u64 seqlock: odd while a write is in progress */
	OFF_BYTES = 16,  /* u64 the value */
	OFF_COUNTER = 24,/* u64 samples published */
	OFF_FLAGS = 32,  /* u64 bit 0: publisher closed */
};
/* A write cycle is a few stores: only a writer that died or stopped mid-cycle holds the
 * page this long. Give up on the sample rather than wait without a bound. */
static const double MAX_ACQUIRE_WAIT_S = 1.0;
static const uint32_t MAGIC = 0x50534d4f; /* "OMSP" little-endian */
static const uint32_t VERSION = 1;

static uint64_t *word(unsigned char *page, int off) { return (uint64_t *)(page + off); }

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* publish runs one write cycle; it returns 0, or -1 if another writer held the page
 * (odd sequence) for MAX_ACQUIRE_WAIT_S. */
static int publish(unsigned char *page, uint64_t bytes)
{
	uint64_t *seq = word(page, OFF_SEQ);
	double give_up = 0;
	for (;;) {
		uint64_t s = __atomic_load_n(seq, __ATOMIC_SEQ_CST);
		/* 1. take the page: even -> odd, only if nobody else did */
		if ((s & 1) == 0 &&
		    __atomic_compare_exchange_n(seq, &s, s + 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
			uint64_t *counter = word(page, OFF_COUNTER);
			uint64_t c = __atomic_load_n(counter, __ATOMIC_SEQ_CST) + 1;
			/* 2. the value, 3. the counter */
			__atomic_store_n(word(page, OFF_BYTES), bytes, __ATOMIC_SEQ_CST);
			__atomic_store_n(counter, c, __ATOMIC_SEQ_CST);
			/* 4. release: odd -> even */
			__atomic_store_n(seq, s + 2, __ATOMIC_SEQ_CST);
			return 0;
		}
		if (give_up == 0)
			give_up = now() + MAX_ACQUIRE_WAIT_S;
		else if (now() > give_up)
			return -1;
		sched_yield();
	}
}

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: %s BYTES [COUNT]\n", argv[0]);
		return 2;
	}
	uint64_t bytes = strtoull(argv[1], NULL, 0);
	long count = argc == 3 ? strtol(argv[2], NULL, 0) : 1;
	const char *env = getenv("OOMD_MEMSTAT_PAGE_FD");
	if (env == NULL || *env == '\0') {
		fprintf(stderr, "OOMD_MEMSTAT_PAGE_FD is not set: start me from execd\n");
		return 2;
	}
	int fd = atoi(env);
	unsigned char *page = mmap(NULL, PAGE_SIZE_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (page == MAP_FAILED) {
		fprintf(stderr, "mmap fd %d: %s\n", fd, strerror(errno));
		return 1;
	}
	uint32_t magic, version;
	memcpy(&magic, page + OFF_MAGIC, 4);
	memcpy(&version, page + OFF_VERSION, 4);
	if (magic != MAGIC || version != VERSION) {
		fprintf(stderr, "not a memstat page: magic %#x version %u\n", magic, version);
		return 1;
	}
	for (long i = 0; i < count; i++) {
		if (publish(page, bytes) != 0) {
			fprintf(stderr, "page busy: another writer never finished its write\n");
			return 1;
		}
	}
	printf("%" PRIu64 "\n", __atomic_load_n(word(page, OFF_COUNTER), __ATOMIC_SEQ_CST));
	return 0;
}
