/* The few kernel types the tracker's BPF program reads, declared with
 * preserve_access_index: libbpf relocates every field access against the running
 * kernel's BTF (CO-RE), so only the names and types must match, not the layout.
 * Written against the BTF of Linux 6.18; on a kernel without one of these fields the
 * load fails with libbpf naming it, and the agent falls back to the hash scan. */
#ifndef LIFEBOAT_VMLINUX_MIN_H
#define LIFEBOAT_VMLINUX_MIN_H

#include <linux/types.h>
#include <linux/bpf.h>

typedef __u64 sector_t;
typedef __u32 blk_opf_t;
typedef __u8 blk_status_t;
typedef __u32 dev_t;
typedef _Bool bool;
#define true 1
#define false 0

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct gendisk {
	int major;
	int first_minor;
};

struct block_device {
	struct gendisk *bd_disk;
	dev_t bd_dev;
};

struct bvec_iter {
	sector_t bi_sector;
	unsigned int bi_size;
};

struct bio {
	struct block_device *bi_bdev;
	blk_opf_t bi_opf;
	struct bvec_iter bi_iter;
};

struct request_queue {
	struct gendisk *disk;
};

struct request {
	struct request_queue *q;
	blk_opf_t cmd_flags;
	sector_t __sector;
};

#pragma clang attribute pop

#endif
