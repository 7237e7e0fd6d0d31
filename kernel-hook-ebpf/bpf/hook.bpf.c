// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * The metadata-agent kernel hook.
 *
 * cgroup/connect4|6 and cgroup/sendmsg4|6, attached to the cgroup v2 root, report every TCP
 * connect and UDP send (connected or not) of every process; the sched_process_exec and
 * sched_process_exit tracepoints report execs and process exits. Events go through one ring
 * buffer without waking the reader (BPF_RB_NO_WAKEUP): user space drains it on a short timer,
 * which keeps the cost per connect low.
 *
 * Enforcement: when SETTINGS[SETTING_ENFORCE] is 1, a connect or send is refused (EPERM)
 * when the process's entry in VERDICTS is VERDICT_DENY, or when it has no entry and the default
 * verdict is deny. The exit tracepoint deletes the entry of a process that ends, in the kernel,
 * so a reused PID never inherits a verdict.
 */
#include "kernel.h"
#include "hook.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24);
} EVENTS SEC(".maps");

/* Events the ring buffer had no room for, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} LOST SEC(".maps");

/* tgid → VERDICT_*. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} VERDICTS SEC(".maps");

/* SETTING_* → value. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} SETTINGS SEC(".maps");

static __attribute__((always_inline)) void count_lost(void)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(&LOST, &zero);
	if (lost)
		__sync_fetch_and_add(lost, 1);
}

static __attribute__((always_inline)) __u32 setting(__u32 index)
{
	__u32 *value = bpf_map_lookup_elem(&SETTINGS, &index);
	return value ? *value : 0;
}

/* 1 to let the call through, 0 to refuse it with EPERM. */
static __attribute__((always_inline)) int allowed(__u32 tgid)
{
	if (setting(SETTING_ENFORCE) != 1)
		return 1;
	__u32 *verdict = bpf_map_lookup_elem(&VERDICTS, &tgid);
	__u32 decided = verdict ? *verdict : setting(SETTING_DEFAULT_VERDICT);
	return decided == VERDICT_DENY ? 0 : 1;
}

static __attribute__((always_inline)) struct hook_event *reserve(__u32 kind)
{
	struct hook_event *event = bpf_ringbuf_reserve(&EVENTS, sizeof(*event), 0);
	if (!event) {
		count_lost();
		return 0;
	}
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();
	event->kind = kind;
	event->tgid = pid_tgid >> 32;
	event->tid = (__u32)pid_tgid;
	event->uid = (__u32)uid_gid;
	event->gid = uid_gid >> 32;
	event->family = 0;
	event->protocol = 0;
	event->verdict = 1;
	event->cgroup_id = bpf_get_current_cgroup_id();
	event->timestamp_ns = bpf_ktime_get_ns();
	event->port = 0;
	for (int i = 0; i < 16; i++)
		event->addr[i] = 0;
	for (int i = 0; i < 6; i++)
		event->pad[i] = 0;
	bpf_get_current_comm(event->comm, sizeof(event->comm));
	return event;
}

static __attribute__((always_inline)) int report(struct bpf_sock_addr *ctx, __u16 family)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	int verdict = allowed(tgid);
	struct hook_event *event = reserve(EVENT_CONNECT);
	if (!event)
		return verdict;
	event->family = family;
	event->protocol = ctx->type == SOCK_DGRAM ? PROTO_UDP : PROTO_TCP;
	event->verdict = verdict;
	__u16 port = (__u16)ctx->user_port;
	event->port = (__u16)((port >> 8) | (port << 8));
	if (family == AF_INET) {
		__u32 ip = ctx->user_ip4;
		__builtin_memcpy(event->addr, &ip, 4);
	} else {
		__u32 ip0 = ctx->user_ip6[0], ip1 = ctx->user_ip6[1];
		__u32 ip2 = ctx->user_ip6[2], ip3 = ctx->user_ip6[3];
		__builtin_memcpy(event->addr, &ip0, 4);
		__builtin_memcpy(event->addr + 4, &ip1, 4);
		__builtin_memcpy(event->addr + 8, &ip2, 4);
		__builtin_memcpy(event->addr + 12, &ip3, 4);
	}
	bpf_ringbuf_submit(event, BPF_RB_NO_WAKEUP);
	return verdict;
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	return report(ctx, AF_INET);
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	return report(ctx, AF_INET6);
}

SEC("cgroup/sendmsg4")
int sendmsg4(struct bpf_sock_addr *ctx)
{
	return report(ctx, AF_INET);
}

SEC("cgroup/sendmsg6")
int sendmsg6(struct bpf_sock_addr *ctx)
{
	return report(ctx, AF_INET6);
}

SEC("tracepoint/sched/sched_process_exec")
int process_exec(void *ctx)
{
	struct hook_event *event = reserve(EVENT_EXEC);
	if (event)
		bpf_ringbuf_submit(event, BPF_RB_NO_WAKEUP);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int process_exit(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	/* Only the thread-group leader's exit ends the process. */
	if (tgid != (__u32)pid_tgid)
		return 0;
	bpf_map_delete_elem(&VERDICTS, &tgid);
	struct hook_event *event = reserve(EVENT_EXIT);
	if (event)
		bpf_ringbuf_submit(event, BPF_RB_NO_WAKEUP);
	return 0;
}
