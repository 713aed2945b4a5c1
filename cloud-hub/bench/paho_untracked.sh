#!/bin/bash
# What Debian's Paho C build costs us: a measurement aid, never shipped,
# never linked into anything the project builds.
#
#   cloud-hub/bench/paho_untracked.sh [DIR=/tmp/paho-untracked]
#   LD_LIBRARY_PATH=DIR build/bin/pp-sync-bench ...   # the same binaries, that Paho
#
# Debian's libpaho-mqtt3as 1.3.12 is compiled without HIGH_PERFORMANCE, and
# that cannot be switched off at run time:
#   - every malloc, realloc and free inside Paho goes through its heap
#     tracker (Heap.c): three mallocs a block and a red-black tree of every
#     live block, under one process-wide mutex;
#   - every Paho function's entry and exit goes through its stack tracer
#     (StackTrace.c), under another process-wide mutex.
# This script builds, in DIR, a libpaho-mqtt3as.so.1 from the same package's
# static archive (libpaho-mqtt-dev: the same source and version) with those
# two modules replaced by plain malloc/realloc/free and empty trace hooks,
# which is what upstream's HIGH_PERFORMANCE build compiles. Run a benchmark
# with LD_LIBRARY_PATH=DIR and Paho C++ loads it instead of the packaged one
# (same soname, same exported names); compare with a run without. Findings:
# docs/benchmarks.md, session 35.
#
# The archive's objects were compiled with every symbol hidden (the packaged
# .so exports its API by a link-time list this archive does not carry), so
# the names the packaged .so exports are made visible again in the extracted
# objects before they are linked: a byte in each such symbol's ELF entry.
set -euo pipefail
dir=${1:-/tmp/paho-untracked}
lib=/usr/lib/x86_64-linux-gnu
archive=$lib/libpaho-mqtt3as.a
packaged=$lib/libpaho-mqtt3as.so.1
for f in "$archive" "$packaged"; do
  [[ -r $f ]] || { echo "paho_untracked: $f is missing (apt-get install libpaho-mqtt-dev)" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "paho_untracked: needs python3" >&2; exit 1; }
rm -rf "$dir" && mkdir -p "$dir/obj"
(cd "$dir/obj" && ar x "$archive")
nm -D --defined-only "$packaged" | awk '{print $3}' | sort > "$dir/exports.txt"

# Set STV_DEFAULT on the defined, hidden symbols whose names are in the list.
python3 - "$dir/exports.txt" "$dir"/obj/*.o <<'PY'
import struct, sys
names = set(open(sys.argv[1]).read().split())
for path in sys.argv[2:]:
    b = bytearray(open(path, "rb").read())
    if b[:4] != b"\x7fELF" or b[4] != 2:
        sys.exit(f"{path}: not a 64-bit ELF object")
    shoff, = struct.unpack_from("<Q", b, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", b, 0x3A)
    # name, type, flags, addr, offset, size, link, info, addralign, entsize
    secs = [struct.unpack_from("<IIQQQQIIQQ", b, shoff + i * shentsize) for i in range(shnum)]
    for s in secs:
        if s[1] != 2:  # SHT_SYMTAB
            continue
        strtab = secs[s[6]][4]
        for p in range(s[4], s[4] + s[5], s[9]):
            name_off, _info, other, shndx = struct.unpack_from("<IBBH", b, p)
            start = strtab + name_off
            name = bytes(b[start:b.index(0, start)]).decode()
            if name in names and shndx != 0 and other & 3 == 2:  # defined, STV_HIDDEN
                b[p + 5] = other & ~3
    open(path, "wb").write(b)
PY

# The two modules, as HIGH_PERFORMANCE compiles them (signatures: Heap.h
# and StackTrace.h of Paho C 1.3).
cat > "$dir/untracked.c" <<'C'
#include <stdlib.h>
typedef struct { size_t current_size, max_size; } heap_info;
static heap_info no_info;
void* mymalloc(char* file, int line, size_t size) { (void)file; (void)line; return malloc(size); }
void* myrealloc(char* file, int line, void* p, size_t size) { (void)file; (void)line; return realloc(p, size); }
void myfree(char* file, int line, void* p) { (void)file; (void)line; free(p); }
int Heap_initialize(void) { return 0; }
void Heap_terminate(void) {}
__attribute__((visibility("default"))) heap_info* Heap_get_info(void) { return &no_info; }
void StackTrace_entry(const char* name, int line, int level) { (void)name; (void)line; (void)level; }
void StackTrace_exit(const char* name, int line, void* rc, int level) { (void)name; (void)line; (void)rc; (void)level; }
C
gcc -O2 -fPIC -fvisibility=hidden -c "$dir/untracked.c" -o "$dir/untracked.o"
objs=()
for o in "$dir"/obj/*.o; do
  case $(basename "$o") in Heap.c.o | StackTrace.c.o) ;; *) objs+=("$o") ;; esac
done
gcc -shared -Wl,-soname,libpaho-mqtt3as.so.1 -o "$dir/libpaho-mqtt3as.so.1" "${objs[@]}" \
  "$dir/untracked.o" -lssl -lcrypto -lpthread
if ! diff <(nm -D --defined-only "$dir/libpaho-mqtt3as.so.1" | awk '{print $3}' | sort) \
  "$dir/exports.txt" >/dev/null; then
  echo "paho_untracked: the built library does not export what the packaged one does" >&2
  exit 1
fi
echo "built $dir/libpaho-mqtt3as.so.1 (no heap tracking, no stack trace)"
echo "use: LD_LIBRARY_PATH=$dir build/bin/pp-sync-bench ..."
