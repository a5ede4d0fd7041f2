// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// The kernel accepts tracing programs only under a GPL-compatible license; this one file is
// dual-licensed for that reason (the rest of Lifeboat is Apache-2.0).
/*
 * Lifeboat's block-layer write tracker. See agent/src/tracker/ebpf.rs and docs/tracker.md.
 *
 * Every write-like bio queued to a tracked whole disk (write, discard, secure erase,
 * write-zeroes, zone append) sets, in that disk's *current epoch* bitmap, the bit of every
 * 4 KiB block it touches; so does every such request completing (a write in flight when
 * the agent flips the epoch is marked again in the new epoch when it lands, so a read made
 * after the flip can never miss it). Ranges too long to mark inline (large discards) and
 * anything that cannot be recorded go to user space through a ring buffer; if even that
 * fails, the disk's overflow counter tells the agent to compare the whole disk.
 *
 * User space flips a disk's epoch and then waits until no program is using the old one:
 * a program reads the epoch e, increments inflight[e], reads the epoch again and, if it
 * changed, moves to the new one; it decrements inflight[e] after its bits are set. All of
 * these are fetch atomics (fully ordered). Once the flip is done, a program that still
 * counts in inflight[old] saw `old` after it incremented, i.e. before the flip, and the
 * agent waits for it; one that increments later sees the new epoch and moves. When
 * inflight[old] reaches 0 the old bitmap is final.
 *
 * Frozen layout (shared with user space, version LIFEBOAT_BPF_VERSION): see the structs.
 */
#include "vmlinux_min.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define MAX_SLOTS 64
/* Ranges covering at most this many bitmap words are marked inline. */
#define INLINE_WORDS 16

#define REQ_OP_MASK 0xff
#define REQ_OP_WRITE 1
#define REQ_OP_DISCARD 3
#define REQ_OP_SECURE_ERASE 5
#define REQ_OP_ZONE_APPEND 7
#define REQ_OP_WRITE_ZEROES 9

/* Key: the whole disk's kernel dev_t, (major << 20) | minor. */
struct disk_info {
	__u32 slot;
	__u32 _pad;
	/* Index in `bitmap` of the first word of epoch 0; epoch 1 follows it. */
	__u64 base;
	/* Words per epoch. */
	__u64 words;
	/* 4 KiB blocks of the disk. */
	__u64 blocks;
};

struct slot_state {
	__u32 epoch;
	__u32 _pad;
	__u64 overflow;
	/* Programs using each epoch right now. */
	__u64 inflight[2];
	__u64 writes;
	__u64 discards;
	__u64 write_zeroes;
	__u64 secure_erases;
	__u64 bytes;
	__u64 token;
	__u64 ring_events;
	/* Write-like bios by size: <= 4 KiB, <= 16 KiB, <= 64 KiB, <= 256 KiB, larger. */
	__u64 sizes[5];
};

struct event {
	__u32 slot;
	__u32 epoch;
	__u64 first_block;
	__u64 end_block;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct disk_info);
} disks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct slot_state);
} slots SEC(".maps");

/* max_entries is set by the agent before loading. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} bitmap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

static __always_inline bool write_like(__u32 opf)
{
	__u32 op = opf & REQ_OP_MASK;
	return op == REQ_OP_WRITE || op == REQ_OP_DISCARD || op == REQ_OP_SECURE_ERASE ||
	       op == REQ_OP_WRITE_ZEROES || op == REQ_OP_ZONE_APPEND;
}

static __always_inline void set_word(__u64 index, __u64 mask)
{
	__u32 key = (__u32)index;
	__u64 *w = bpf_map_lookup_elem(&bitmap, &key);
	if (w)
		__sync_fetch_and_or(w, mask);
}

static __always_inline void mark(struct gendisk *disk, __u32 opf, __u64 sector, __u64 bytes,
				 bool count)
{
	if (!disk || !write_like(opf))
		return;
	__u32 dev = ((__u32)BPF_CORE_READ(disk, major) << 20) | (__u32)BPF_CORE_READ(disk, first_minor);
	struct disk_info *d = bpf_map_lookup_elem(&disks, &dev);
	if (!d)
		return;
	__u32 slot = d->slot;
	struct slot_state *s = bpf_map_lookup_elem(&slots, &slot);
	if (!s)
		return;
	__u32 epoch = *(volatile __u32 *)&s->epoch & 1;
	if (__sync_fetch_and_add(&s->inflight[epoch], 1) == ~0ULL)
		return; /* never: keeps the fetch (fully ordered) form */
	__u32 now = *(volatile __u32 *)&s->epoch & 1;
	if (now != epoch) {
		if (__sync_fetch_and_sub(&s->inflight[epoch], 1) == 0)
			return;
		epoch = now;
		if (__sync_fetch_and_add(&s->inflight[epoch], 1) == ~0ULL)
			return;
	}
	if (count) {
		__u32 op = opf & REQ_OP_MASK;
		if (op == REQ_OP_DISCARD)
			__sync_fetch_and_add(&s->discards, 1);
		else if (op == REQ_OP_WRITE_ZEROES)
			__sync_fetch_and_add(&s->write_zeroes, 1);
		else if (op == REQ_OP_SECURE_ERASE)
			__sync_fetch_and_add(&s->secure_erases, 1);
		else
			__sync_fetch_and_add(&s->writes, 1);
		__sync_fetch_and_add(&s->bytes, bytes);
		int b = bytes <= 4096 ? 0 : bytes <= 16384 ? 1 : bytes <= 65536 ? 2 : bytes <= 262144 ? 3 : 4;
		__sync_fetch_and_add(&s->sizes[b], 1);
	}
	__u64 first = sector >> 3;
	__u64 end = (sector + ((bytes + 511) >> 9) + 7) >> 3;
	if (end > d->blocks)
		end = d->blocks;
	if (first < end) {
		__u64 fw = first >> 6, lw = (end - 1) >> 6;
		__u64 base = d->base + (epoch ? d->words : 0);
		if (lw - fw < INLINE_WORDS) {
			for (int i = 0; i < INLINE_WORDS; i++) {
				__u64 w = fw + i;
				if (w > lw)
					break;
				__u64 lo = w == fw ? (first & 63) : 0;
				__u64 hi = w == lw ? ((end - 1) & 63) : 63;
				__u64 mask = (hi == 63 ? ~0ULL : ((1ULL << (hi + 1)) - 1)) & ~((1ULL << lo) - 1);
				set_word(base + w, mask);
			}
		} else {
			struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
			if (e) {
				e->slot = slot;
				e->epoch = epoch;
				e->first_block = first;
				e->end_block = end;
				bpf_ringbuf_submit(e, 0);
				__sync_fetch_and_add(&s->ring_events, 1);
			} else {
				__sync_fetch_and_add(&s->overflow, 1);
			}
		}
	}
	if (__sync_fetch_and_sub(&s->inflight[epoch], 1) == 0)
		return;
}

SEC("tp_btf/block_bio_queue")
int BPF_PROG(lifeboat_bio_queue, struct bio *bio)
{
	struct block_device *bdev = BPF_CORE_READ(bio, bi_bdev);
	struct gendisk *disk = bdev ? BPF_CORE_READ(bdev, bd_disk) : 0;
	mark(disk, BPF_CORE_READ(bio, bi_opf), BPF_CORE_READ(bio, bi_iter.bi_sector),
	     BPF_CORE_READ(bio, bi_iter.bi_size), true);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(lifeboat_rq_complete, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	struct request_queue *q = BPF_CORE_READ(rq, q);
	struct gendisk *disk = q ? BPF_CORE_READ(q, disk) : 0;
	mark(disk, BPF_CORE_READ(rq, cmd_flags), BPF_CORE_READ(rq, __sector), nr_bytes, false);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
