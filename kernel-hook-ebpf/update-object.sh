#!/usr/bin/env bash
# Rebuilds the committed BPF object from its C source and records the sources' hash, like
# bpf2go's generated files: commit bpf/hook.bpf.o and bpf/hook.bpf.o.sources together.
# A build without clang uses the committed object; a build with clang compiles the source and
# a test checks both agree.
set -euo pipefail
cd "$(dirname "$0")/bpf"
clang="${CLANG:-$(command -v clang-19 || command -v clang)}"
"$clang" -O2 -g -target bpf -Wall -Werror -fdebug-compilation-dir=. -c hook.bpf.c -o hook.bpf.o
cat hook.bpf.c hook.h kernel.h | sha256sum | cut -d' ' -f1 > hook.bpf.o.sources
echo "hook.bpf.o rebuilt with $("$clang" --version | head -1)"
