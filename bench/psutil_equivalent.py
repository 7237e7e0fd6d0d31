#!/usr/bin/env python3
"""The usual alternative, for bench/run: the same process:* fields the procfs collector
produces, for every PID, with psutil, including the SHA-256 of each binary read through
/proc/<pid>/exe and cached by (device, inode, size, mtime) as the agent does.
Prints one RESULT line."""
import hashlib
import os
import time

import psutil

ATTRS = ["pid", "name", "cmdline", "uids", "gids", "ppid", "create_time", "cwd", "exe",
         "username", "cpu_num"]


def main():
    hashes = {}
    started = time.perf_counter()
    count = 0
    for proc in psutil.process_iter():
        try:
            info = proc.as_dict(attrs=ATTRS)
            status = proc.status()
            groups = open(f"/proc/{proc.pid}/status").read()
            cgroup = open(f"/proc/{proc.pid}/cgroup").read()
            labels = {
                "process:pid": info["pid"], "process:name": info["name"],
                "process:cmdline": " ".join(a for a in (info["cmdline"] or []) if a),
                "process:uid": info["uids"].effective if info["uids"] else None,
                "process:gid": info["gids"].effective if info["gids"] else None,
                "process:ppid": info["ppid"], "process:start-time": info["create_time"],
                "process:cwd": info["cwd"], "process:binary:path": info["exe"],
                "process:user:name": info["username"], "status": status,
                "groups": [l for l in groups.splitlines() if l.startswith(("Groups:", "CapEff:"))],
                "process:cgroup": cgroup,
            }
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
            count += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError, ProcessLookupError,
                PermissionError):
            continue
    total = time.perf_counter() - started
    print(f"RESULT processes={count} total_us={int(total * 1e6)}")


main()
