#!/usr/bin/env python3
"""The usual alternative, for bench/run: the same process:* fields the procfs collector
produces, for every PID, with psutil, including the SHA-256 of each binary read through
/proc/<pid>/exe and cached by (device, inode, size, mtime) as the agent does.

Two passes in one process, as `bench_procfs scan` makes: the first with no hash cached, the
second with the hashes of the first. Prints one RESULT line."""
import datetime
import grp
import hashlib
import os
import re
import time

import psutil

ATTRS = ["pid", "name", "cmdline", "uids", "gids", "ppid", "create_time", "cwd", "exe",
         "username"]
# CAP_* names by bit number (linux/capability.h), as the agent decodes CapEff.
CAPABILITIES = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE"]
CONTAINER_ID = re.compile(r"([0-9a-f]{64})(?:\.scope)?$", re.MULTILINE)


def status_field(status, name):
    for line in status.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].split()
    return []


def group_name(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def labels_of(proc, hashes):
    """Every process:* label the procfs collector gives, or None when the process is gone."""
    info = proc.as_dict(attrs=ATTRS)
    status = open(f"/proc/{proc.pid}/status").read()
    cgroup = open(f"/proc/{proc.pid}/cgroup").read()
    caps = int((status_field(status, "CapEff") or ["0"])[0], 16)
    labels = {
        "process:pid": info["pid"], "process:name": info["name"],
        "process:cmdline": " ".join(a for a in (info["cmdline"] or []) if a),
        "process:ppid": info["ppid"],
        "process:start-time": datetime.datetime.fromtimestamp(
            info["create_time"], datetime.timezone.utc).isoformat(),
        "process:cwd": info["cwd"], "process:binary:path": info["exe"],
        "process:user:name": info["username"],
        "process:gid:additional": status_field(status, "Groups"),
        "process:capabilities:effective": [
            "CAP_" + name for bit, name in enumerate(CAPABILITIES) if caps >> bit & 1],
        "process:cgroup": next((l[3:] for l in cgroup.splitlines() if l.startswith("0::")), None),
        "process:container:id": next(iter(CONTAINER_ID.findall(cgroup)), None),
    }
    if info["uids"]:
        labels["process:uid"] = labels["process:uid:effective"] = info["uids"].effective
        labels["process:uid:real"] = info["uids"].real
    if info["gids"]:
        labels["process:gid"] = labels["process:gid:effective"] = info["gids"].effective
        labels["process:gid:real"] = info["gids"].real
        labels["process:group:name"] = group_name(info["gids"].effective)
    if info["ppid"]:
        try:
            parent = psutil.Process(info["ppid"])
            labels["process:parent:name"] = parent.name()
            labels["process:parent:binary:path"] = parent.exe()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    if info["exe"]:
        exe = f"/proc/{proc.pid}/exe"
        st = os.stat(exe)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in hashes:
            digest = hashlib.sha256()
            with open(exe, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            hashes[key] = "sha256:" + digest.hexdigest()
        labels["process:binary:hash"] = hashes[key]
    return labels


def scan(hashes):
    """One pass over every process; returns (processes, hashes given, seconds)."""
    started = time.perf_counter()
    count = hashed = 0
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue  # as bench_procfs does: both sides hash the same binaries
        try:
            labels = labels_of(proc, hashes)
        except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError, ProcessLookupError,
                PermissionError):
            continue
        count += 1
        hashed += "process:binary:hash" in labels
    return count, hashed, time.perf_counter() - started


def main():
    hashes = {}
    _, _, first = scan(hashes)
    count, hashed, second = scan(hashes)
    print(f"RESULT processes={count} hashes={hashed} first_us={int(first * 1e6)} "
          f"second_us={int(second * 1e6)}")


main()
