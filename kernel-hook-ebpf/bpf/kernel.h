/* The few kernel types and helpers hook.bpf.c uses, so that clang is the only build dependency
 * (no vmlinux.h, no libbpf): the stable UAPI (linux/bpf.h), and the handful of kernel-internal
 * fields read through CO-RE (their offsets are relocated against the running kernel's BTF when
 * the object is loaded). */
#ifndef METADATA_AGENT_KERNEL_H
#define METADATA_AGENT_KERNEL_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef long long __s64;

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name

enum {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LPM_TRIE = 11,
	BPF_MAP_TYPE_RINGBUF = 27,
};

#define BPF_RB_NO_WAKEUP 1
#define BPF_RB_FORCE_WAKEUP 2
#define BPF_ANY 0
#define BPF_NOEXIST 1
#define BPF_F_NO_PREALLOC 1
#define BPF_F_MMAPABLE (1U << 10)

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2

/* include/uapi/linux/bpf.h: the context of cgroup/connect4|6 and cgroup/sendmsg4|6. */
struct bpf_sock_addr {
	__u32 user_family;
	__u32 user_ip4;      /* network order */
	__u32 user_ip6[4];   /* network order */
	__u32 user_port;     /* network order, in the low 16 bits */
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 msg_src_ip4;
	__u32 msg_src_ip6[4];
	__u64 sk;
};

/* The context of raw tracepoints: the tracepoint's arguments. */
struct bpf_raw_tracepoint_args {
	__u64 args[0];
};

/* Kernel-internal structures, only the fields read; preserve_access_index makes clang record
 * each access for relocation (CO-RE), so only the names must match the kernel's. */
#define __kernel_struct __attribute__((preserve_access_index))
typedef struct {
	int counter;
} atomic_t;
struct signal_struct {
	atomic_t live;  /* threads not yet exited */
} __kernel_struct;
struct super_block {
	__u32 s_dev;
} __kernel_struct;
struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
	__s64 i_ctime_sec;
	__u32 i_ctime_nsec;
} __kernel_struct;
struct file {
	struct inode *f_inode;
} __kernel_struct;
struct mm_struct {
	struct file *exe_file;
} __kernel_struct;
typedef struct {
	unsigned int val;
} kuid_t;
typedef struct {
	unsigned int val;
} kgid_t;
struct cred {
	kuid_t euid;
	kgid_t egid;
} __kernel_struct;
struct task_struct {
	int pid;
	int tgid;
	const struct cred *cred;
	__u64 start_boottime;
	struct task_struct *group_leader;
	struct signal_struct *signal;
	struct mm_struct *mm;
} __kernel_struct;

/* Helper ids from include/uapi/linux/bpf.h (___BPF_FUNC_MAPPER). */
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) = (void *)2;
static long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)3;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static __u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
static __u64 (*bpf_get_current_uid_gid)(void) = (void *)15;
static long (*bpf_get_current_comm)(void *buf, __u32 size) = (void *)16;
static __u64 (*bpf_get_current_task)(void) = (void *)35;
static __u64 (*bpf_get_current_cgroup_id)(void) = (void *)80;
static long (*bpf_probe_read_kernel)(void *dst, __u32 size, const void *unsafe_ptr) = (void *)113;
static void *(*bpf_ringbuf_reserve)(void *ringbuf, __u64 size, __u64 flags) = (void *)131;
static void (*bpf_ringbuf_submit)(void *data, __u64 flags) = (void *)132;

#endif
