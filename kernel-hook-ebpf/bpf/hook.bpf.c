// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * The metadata-agent kernel hook.
 *
 * cgroup/connect4|6 and cgroup/sendmsg4|6, attached to the cgroup v2 root, report every TCP
 * connect and UDP send (connected or not) of every process; raw tracepoints on
 * sched_process_fork, sched_process_exec and sched_process_exit follow processes, and
 * cgroup_attach_task their moves between cgroups. Events go
 * through one ring buffer without waking the reader (BPF_RB_NO_WAKEUP): user space drains it on
 * a short timer while events come, which keeps the cost per connect low. A reader that found
 * nothing for a while sets READER[0] and sleeps until the ring wakes it: the next event clears
 * the flag and is submitted with BPF_RB_FORCE_WAKEUP (one wakeup per quiet spell, so a quiet
 * node costs the agent nothing and the first event after a quiet spell is read at once).
 *
 * Enforcement (SETTINGS[SETTING_ENFORCE] == 1) is decided here, per connect, without waiting for
 * user space:
 *
 * - Each process has a rule set: the agent's verdict for its current image (VERDICTS, valid
 *   only while the process's start time and exec generation in PROCS are those the agent judged),
 *   else the kernel's own (PROCS.ruleset: looked up in IMAGES by cgroup and executable at exec,
 *   or the parent's at fork), else none, and SETTING_PENDING_VERDICT decides.
 * - A rule set is an LPM trie of address prefixes (RULES), each with its rules in precedence
 *   order (port range, protocol, verdict, policy); the first rule covering the connect decides,
 *   else the rule set's default (RULESETS).
 * - PROCS entries follow the process: created at fork (a new process inherits its parent's rule
 *   set, a reused PID never inherits the previous process's), renewed at exec (a new generation,
 *   so no verdict of the previous image holds), removed when the last thread exits (not the
 *   leader: a leader may exit while its threads run on).
 * - CHANGES counts, per bucket of processes (tgid & (CHANGE_BUCKETS - 1)), every fork, exec,
 *   cgroup move and exit, after PROCS shows it: user space maps it and, while a process's
 *   bucket has not counted, trusts the PROCS entry it last read without looking it up again.
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

/* [0]: 1 while the reader sleeps until the ring wakes it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} READER SEC(".maps");

/* SETTING_* → value. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SETTINGS_COUNT);
	__type(key, __u32);
	__type(value, __u32);
} SETTINGS SEC(".maps");

/* tgid → what the kernel knows of the process. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PROCS);
	__type(key, __u32);
	__type(value, struct proc_state);
} PROCS SEC(".maps");

/* Change counters, one per bucket of processes (tgid & (CHANGE_BUCKETS - 1)): a process's
 * bucket counts up after each fork, exec, cgroup move and exit of a process in it, once PROCS
 * shows the change. User space maps the array and reads a bucket with a plain load: a count
 * unchanged since an entry was found as expected says the entry still is, without a lookup (a
 * change of another process in the bucket only costs that lookup). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CHANGE_BUCKETS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
} CHANGES SEC(".maps");

/* tgid → the agent's verdict (rule set) for one image of the process. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PROCS);
	__type(key, __u32);
	__type(value, struct verdict);
} VERDICTS SEC(".maps");

/* rule set id → its default. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_RULESETS);
	__type(key, __u32);
	__type(value, struct ruleset);
} RULESETS SEC(".maps");

/* (rule set, address prefix) → the rules covering it. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_RULE_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct rule_key);
	__type(value, struct rule_list);
} RULES SEC(".maps");

/* exec-time identity → rule set. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_IMAGES);
	__type(key, struct image_key);
	__type(value, __u32);
} IMAGES SEC(".maps");

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

/* A process's start time in USER_HZ ticks since boot, as /proc/<pid>/stat gives it: that of
 * its thread-group leader (task may be any of its threads). */
static __attribute__((always_inline)) __u64 start_ticks(struct task_struct *task)
{
	struct task_struct *leader = 0;
	__u64 boottime = 0;
	bpf_probe_read_kernel(&leader, sizeof(leader), &task->group_leader);
	if (leader)
		bpf_probe_read_kernel(&boottime, sizeof(boottime), &leader->start_boottime);
	return boottime / (1000000000ULL / USER_HZ);
}

/* Counts a change of process tgid in its bucket of CHANGES (after PROCS shows it). */
static __attribute__((always_inline)) void changed(__u32 tgid)
{
	__u32 bucket = tgid & (CHANGE_BUCKETS - 1);
	__u64 *count = bpf_map_lookup_elem(&CHANGES, &bucket);
	if (count)
		__sync_fetch_and_add(count, 1);
}

/* The rule set a process is judged by now: its verdict's, when the verdict is for its current
 * image, else the kernel's own. A process the hook has not met yet (older than the hook) gets a
 * PROCS entry here, without a rule set. */
static __attribute__((always_inline)) __u32 current_ruleset(__u32 tgid)
{
	struct proc_state *proc = bpf_map_lookup_elem(&PROCS, &tgid);
	if (!proc) {
		struct proc_state fresh = {
			.start = start_ticks((struct task_struct *)bpf_get_current_task()),
			.ruleset = RULESET_PENDING,
		};
		/* The agent may have created it meanwhile, with the same start. */
		bpf_map_update_elem(&PROCS, &tgid, &fresh, BPF_NOEXIST);
		proc = bpf_map_lookup_elem(&PROCS, &tgid);
		if (!proc)
			return RULESET_PENDING;
	}
	struct verdict *verdict = bpf_map_lookup_elem(&VERDICTS, &tgid);
	if (verdict && verdict->start == proc->start && verdict->generation == proc->generation)
		return verdict->ruleset;
	return proc->ruleset;
}

struct decision {
	__u32 ruleset;
	__u16 policy;
	__u8 decision;
	__u8 verdict;
};

/* Judges a connect to addr (IPv6, or IPv4-mapped), port and protocol. */
static __attribute__((always_inline)) void judge(__u32 tgid, const __u8 addr[16], __u16 port,
						 __u8 protocol, struct decision *out)
{
	out->ruleset = RULESET_PENDING;
	out->policy = POLICY_NONE;
	out->verdict = VERDICT_ALLOW;
	if (setting(SETTING_ENFORCE) != 1) {
		out->decision = DECISION_OBSERVE;
		return;
	}
	__u32 id = current_ruleset(tgid);
	out->ruleset = id;
	if (id == RULESET_EXEMPT) {
		out->decision = DECISION_EXEMPT;
		return;
	}
	struct ruleset *ruleset = id == RULESET_PENDING ? 0 : bpf_map_lookup_elem(&RULESETS, &id);
	if (!ruleset) {
		out->decision = DECISION_PENDING;
		out->verdict = setting(SETTING_PENDING_VERDICT) == VERDICT_DENY ? VERDICT_DENY
										 : VERDICT_ALLOW;
		return;
	}
	struct rule_key key = {.prefixlen = 32 + 128, .ruleset = id};
	__builtin_memcpy(key.addr, addr, 16);
	struct rule_list *list = bpf_map_lookup_elem(&RULES, &key);
	if (list) {
		for (int i = 0; i < RULES_PER_PREFIX; i++) {
			if (i >= list->count)
				break;
			struct rule *rule = &list->rules[i];
			if (port < rule->port_first || port > rule->port_last)
				continue;
			if (rule->protocol && rule->protocol != protocol)
				continue;
			out->decision = DECISION_RULE;
			out->policy = rule->policy;
			out->verdict = rule->verdict == VERDICT_DENY ? VERDICT_DENY : VERDICT_ALLOW;
			return;
		}
	}
	out->decision = DECISION_DEFAULT;
	out->policy = (__u16)ruleset->default_policy;
	out->verdict = ruleset->default_verdict == VERDICT_DENY ? VERDICT_DENY : VERDICT_ALLOW;
}

/* Submits a reserved event, waking the reader when it sleeps. Two CPUs that both see the
 * flag set both wake it: harmless. */
static __attribute__((always_inline)) void submit(struct hook_event *event)
{
	__u32 zero = 0;
	__u32 *asleep = bpf_map_lookup_elem(&READER, &zero);
	if (asleep && *asleep) {
		*asleep = 0;
		bpf_ringbuf_submit(event, BPF_RB_FORCE_WAKEUP);
		return;
	}
	bpf_ringbuf_submit(event, BPF_RB_NO_WAKEUP);
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
	event->policy = POLICY_NONE;
	event->ruleset = RULESET_PENDING;
	event->generation = 0;
	event->decision = DECISION_OBSERVE;
	for (int i = 0; i < 3; i++)
		event->pad[i] = 0;
	event->ppid = 0;
	event->pad2 = 0;
	event->start = 0;
	event->parent_start = 0;
	/* The effective ids, which (with exec and cgroup events) tell user space whether what it
	 * resolved for this process still holds, without reading procfs per event. */
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	const struct cred *cred = 0;
	event->euid = (__u32)-1;
	event->egid = (__u32)-1;
	bpf_probe_read_kernel(&cred, sizeof(cred), &task->cred);
	if (cred) {
		bpf_probe_read_kernel(&event->euid, sizeof(event->euid), &cred->euid.val);
		bpf_probe_read_kernel(&event->egid, sizeof(event->egid), &cred->egid.val);
	}
	bpf_get_current_comm(event->comm, sizeof(event->comm));
	return event;
}

static __attribute__((always_inline)) int report(struct bpf_sock_addr *ctx, __u16 family)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u8 protocol = ctx->type == SOCK_DGRAM ? PROTO_UDP : PROTO_TCP;
	__u16 port = (__u16)ctx->user_port;
	port = (__u16)((port >> 8) | (port << 8));
	/* The destination as an IPv6 address: IPv4 mapped into ::ffff:0:0/96. */
	union {
		__u32 words[4];
		__u8 bytes[16];
	} mapped = {};
	if (family == AF_INET) {
		mapped.bytes[10] = 0xff;
		mapped.bytes[11] = 0xff;
		mapped.words[3] = ctx->user_ip4;
	} else {
		mapped.words[0] = ctx->user_ip6[0];
		mapped.words[1] = ctx->user_ip6[1];
		mapped.words[2] = ctx->user_ip6[2];
		mapped.words[3] = ctx->user_ip6[3];
	}
	struct decision decided;
	judge(tgid, mapped.bytes, port, protocol, &decided);
	int allowed = decided.verdict == VERDICT_DENY ? 0 : 1;
	struct hook_event *event = reserve(EVENT_CONNECT);
	if (!event)
		return allowed;
	event->family = family;
	event->protocol = protocol;
	event->verdict = allowed;
	event->port = port;
	event->policy = decided.policy;
	event->ruleset = decided.ruleset;
	event->decision = decided.decision;
	if (family == AF_INET)
		__builtin_memcpy(event->addr, &mapped.words[3], 4);
	else
		__builtin_memcpy(event->addr, mapped.bytes, 16);
	submit(event);
	return allowed;
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

/* sched_process_fork(parent, child): a new process starts with its parent's rule set, and user
 * space learns its parent (the lineage it keeps when the parent exits first); a new thread
 * changes nothing. Runs in the parent, before the child does. */
SEC("raw_tracepoint/sched_process_fork")
int process_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	int pid = 0, tgid = 0;
	bpf_probe_read_kernel(&pid, sizeof(pid), &child->pid);
	bpf_probe_read_kernel(&tgid, sizeof(tgid), &child->tgid);
	if (pid != tgid)
		return 0;
	__u32 parent = bpf_get_current_pid_tgid() >> 32;
	__u32 key = (__u32)tgid;
	struct proc_state state = {
		.start = start_ticks(child),
		.ruleset = RULESET_PENDING,
	};
	state.ruleset = current_ruleset(parent);
	/* Overwrites what a previous process with this PID left. */
	bpf_map_update_elem(&PROCS, &key, &state, BPF_ANY);
	bpf_map_delete_elem(&VERDICTS, &key);
	changed(key);
	struct hook_event *event = reserve(EVENT_FORK);
	if (event) {
		event->ppid = parent;
		event->parent_start = start_ticks((struct task_struct *)bpf_get_current_task());
		event->tgid = key;
		event->tid = key;
		event->start = state.start;
		submit(event);
	}
	return 0;
}

/* The exec-time identity's rule set: by cgroup and executable, by cgroup, by executable. */
static __attribute__((always_inline)) __u32 image_ruleset(struct task_struct *task)
{
	struct image_key key = {.cgroup_id = bpf_get_current_cgroup_id()};
	struct mm_struct *mm = 0;
	struct file *exe = 0;
	struct inode *inode = 0;
	struct super_block *sb = 0;
	bpf_probe_read_kernel(&mm, sizeof(mm), &task->mm);
	if (mm)
		bpf_probe_read_kernel(&exe, sizeof(exe), &mm->exe_file);
	if (exe)
		bpf_probe_read_kernel(&inode, sizeof(inode), &exe->f_inode);
	if (inode) {
		unsigned long ino = 0;
		bpf_probe_read_kernel(&ino, sizeof(ino), &inode->i_ino);
		bpf_probe_read_kernel(&sb, sizeof(sb), &inode->i_sb);
		key.ino = ino;
		if (__builtin_preserve_field_info(inode->i_ctime_sec, 2 /* BPF_FIELD_EXISTS */)) {
			bpf_probe_read_kernel(&key.ctime_sec, sizeof(key.ctime_sec), &inode->i_ctime_sec);
			bpf_probe_read_kernel(&key.ctime_nsec, sizeof(key.ctime_nsec),
					      &inode->i_ctime_nsec);
			/* Multigrain timestamps (6.13+) flag the top bit; nanoseconds fit in 30. */
			key.ctime_nsec &= (1U << 30) - 1;
		}
	}
	if (sb)
		bpf_probe_read_kernel(&key.dev, sizeof(key.dev), &sb->s_dev);
	__u32 *found = bpf_map_lookup_elem(&IMAGES, &key);
	if (found)
		return *found;
	struct image_key cgroup_only = {.cgroup_id = key.cgroup_id};
	found = bpf_map_lookup_elem(&IMAGES, &cgroup_only);
	if (found)
		return *found;
	key.cgroup_id = 0;
	found = bpf_map_lookup_elem(&IMAGES, &key);
	return found ? *found : RULESET_PENDING;
}

/* sched_process_exec(task, old_pid, bprm): the process runs a new image. It gets a new
 * generation (no verdict of the previous image holds) and the rule set of its exec-time
 * identity, if the agent gave one. */
SEC("raw_tracepoint/sched_process_exec")
int process_exec(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct proc_state state = {
		.exec_ns = bpf_ktime_get_ns(),
		.generation = 1,
		.ruleset = image_ruleset(task),
	};
	struct proc_state *known = bpf_map_lookup_elem(&PROCS, &tgid);
	if (known) {
		state.start = known->start;
		state.generation = known->generation + 1;
		state.moves = known->moves;
	} else {
		state.start = start_ticks(task);
	}
	/* User space trusts an unchanged entry to mean no exec: one that cannot be replaced goes
	 * (user space then reads procfs). */
	if (bpf_map_update_elem(&PROCS, &tgid, &state, BPF_ANY) != 0)
		bpf_map_delete_elem(&PROCS, &tgid);
	changed(tgid);
	struct hook_event *event = reserve(EVENT_EXEC);
	if (event) {
		event->timestamp_ns = state.exec_ns;
		event->ruleset = state.ruleset;
		event->generation = state.generation;
		event->start = state.start;
		submit(event);
	}
	return 0;
}

/* sched_process_exit(task, ...): a thread exits; when it was the last of its process, the
 * process ends and its entries go. */
SEC("raw_tracepoint/sched_process_exit")
int process_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	struct signal_struct *signal = 0;
	int live = 1;
	bpf_probe_read_kernel(&signal, sizeof(signal), &task->signal);
	if (signal)
		bpf_probe_read_kernel(&live, sizeof(live), &signal->live.counter);
	/* do_exit counts the thread out before the tracepoint. */
	if (live != 0)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	bpf_map_delete_elem(&PROCS, &tgid);
	bpf_map_delete_elem(&VERDICTS, &tgid);
	changed(tgid);
	struct hook_event *event = reserve(EVENT_EXIT);
	if (event) {
		event->start = start_ticks(task);
		submit(event);
	}
	return 0;
}

/* A task moved to another cgroup (on any hierarchy, v1 or v2), by itself or moved by another:
 * what user space resolved for its process (container identity, cgroup labels) may no longer
 * hold. */
static __attribute__((always_inline)) int moved(struct task_struct *task)
{
	int tgid = 0;
	bpf_probe_read_kernel(&tgid, sizeof(tgid), &task->tgid);
	/* Counted before the write that moved it returns, so a lookup made after the move sees
	 * it. A process without an entry has nothing user space could trust to be unchanged. */
	__u32 key = (__u32)tgid;
	struct proc_state *known = bpf_map_lookup_elem(&PROCS, &key);
	if (known)
		__sync_fetch_and_add(&known->moves, 1);
	changed(key);
	struct hook_event *event = reserve(EVENT_CGROUP);
	if (event) {
		event->tgid = key;
		submit(event);
	}
	return 0;
}

/* cgroup_attach_task(dst_cgrp, path, task, threadgroup): a write to cgroup.procs or
 * cgroup.threads (and the kernel's own attaches) moved a task. */
SEC("raw_tracepoint/cgroup_attach_task")
int cgroup_attach(struct bpf_raw_tracepoint_args *ctx)
{
	return moved((struct task_struct *)ctx->args[2]);
}

/* cgroup_transfer_tasks(dst_cgrp, path, task, threadgroup): cgroup v1's cpuset moved a task
 * out of a cpuset left without CPUs or memory. */
SEC("raw_tracepoint/cgroup_transfer_tasks")
int cgroup_transfer(struct bpf_raw_tracepoint_args *ctx)
{
	return moved((struct task_struct *)ctx->args[2]);
}
