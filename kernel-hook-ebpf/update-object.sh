#!/usr/bin/env bash
# Rebuilds the committed BPF object from its C source and records what it was built from, like
# bpf2go's generated files: commit bpf/hook.bpf.o and bpf/hook.bpf.o.sources together.
# The record holds the SHA-256 of the sources (hook.bpf.c, hook.h, kernel.h, concatenated) and
# of the object. A build without clang uses the committed object once the sources' hash matches;
# a test checks both hashes on every run, and with clang that the object is what clang builds.
set -euo pipefail
cd "$(dirname "$0")/bpf"
clang="${CLANG:-$(command -v clang-19 || command -v clang)}"
"$clang" -O2 -g -target bpf -Wall -Werror -fdebug-compilation-dir=. -c hook.bpf.c -o hook.bpf.o
{
  echo "sources $(cat hook.bpf.c hook.h kernel.h | sha256sum | cut -d' ' -f1)"
  echo "object $(sha256sum < hook.bpf.o | cut -d' ' -f1)"
} > hook.bpf.o.sources
echo "hook.bpf.o rebuilt with $("$clang" --version | head -1)"
