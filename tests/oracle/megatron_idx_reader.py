#!/usr/bin/env python3
"""Independent reader/writer of Megatron indexed datasets (PREFIX.bin + PREFIX.idx).

Written from the format description of megatron-core's `indexed_dataset.py` (MMapIndexedDataset
layout), with the standard library only (struct), so the Rust test suite can run it with any
python3. It shares no code with escale.

.idx layout, little-endian:
    9 bytes  magic b"MMIDIDX\\x00\\x00"
    u64      version (1)
    u8       dtype code: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16
    u64      sequence count n
    u64      document index count m (= documents + 1)
    i32[n]   sequence lengths (elements)
    i64[n]   sequence pointers (byte offsets into .bin)
    i64[m]   document indices (0, then one past each document's last sequence)
.bin: the elements of all sequences, back to back.

Usage:
    megatron_idx_reader.py read PREFIX      -> prints JSON {dtype_code, dtype, sequence_count,
                                               document_count, sequence_lengths, sequence_pointers,
                                               document_indices, documents: [[ids...], ...]}
    megatron_idx_reader.py write PREFIX CODE < docs.json
                                            -> writes a dataset holding the JSON list of documents
                                               (lists of ints), one sequence per document, as
                                               Megatron's IndexedDatasetBuilder does.
Exit status 1 with a message on stderr when the files are invalid.
"""
import json
import struct
import sys

MAGIC = b"MMIDIDX\x00\x00"
# code -> (name, struct format char, size)
DTYPES = {
    1: ("uint8", "B", 1),
    2: ("int8", "b", 1),
    3: ("int16", "h", 2),
    4: ("int32", "i", 4),
    5: ("int64", "q", 8),
    6: ("float64", "d", 8),
    7: ("float32", "f", 4),
    8: ("uint16", "H", 2),
}


class FormatError(Exception):
    pass


def read(prefix):
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    with open(idx_path, "rb") as f:
        idx = f.read()
    with open(bin_path, "rb") as f:
        data = f.read()
    if len(idx) < 34:
        raise FormatError(f"{idx_path}: header truncated ({len(idx)} bytes)")
    if idx[:9] != MAGIC:
        raise FormatError(f"{idx_path}: bad magic {idx[:9]!r}")
    (version,) = struct.unpack_from("<Q", idx, 9)
    if version != 1:
        raise FormatError(f"{idx_path}: bad version {version}")
    code = idx[17]
    if code not in DTYPES:
        raise FormatError(f"{idx_path}: unknown dtype code {code}")
    name, fmt, size = DTYPES[code]
    n, m = struct.unpack_from("<QQ", idx, 18)
    off = 34
    need = off + 4 * n + 8 * n + 8 * m
    if len(idx) < need:
        raise FormatError(f"{idx_path}: {len(idx)} bytes, layout needs {need}")
    lengths = list(struct.unpack_from(f"<{n}i", idx, off))
    off += 4 * n
    pointers = list(struct.unpack_from(f"<{n}q", idx, off))
    off += 8 * n
    doc_idx = list(struct.unpack_from(f"<{m}q", idx, off))
    if m < 1 or doc_idx[0] != 0 or doc_idx[-1] != n:
        raise FormatError(f"{idx_path}: bad document indices {doc_idx[:3]}...{doc_idx[-3:]}")
    if any(b < a for a, b in zip(doc_idx, doc_idx[1:])):
        raise FormatError(f"{idx_path}: document indices decrease")
    sequences = []
    for i in range(n):
        end = pointers[i] + lengths[i] * size
        if lengths[i] < 0 or pointers[i] < 0 or end > len(data):
            raise FormatError(f"{bin_path}: sequence {i} ends at byte {end}, file has {len(data)}")
        sequences.append(list(struct.unpack_from(f"<{lengths[i]}{fmt}", data, pointers[i])))
    documents = []
    for d in range(m - 1):
        doc = []
        for s in range(doc_idx[d], doc_idx[d + 1]):
            doc.extend(sequences[s])
        documents.append(doc)
    return {
        "dtype_code": code,
        "dtype": name,
        "sequence_count": n,
        "document_count": m,
        "sequence_lengths": lengths,
        "sequence_pointers": pointers,
        "document_indices": doc_idx,
        "documents": documents,
    }


def write(prefix, code, documents):
    name, fmt, size = DTYPES[code]
    lengths, pointers, pos = [], [], 0
    with open(prefix + ".bin", "wb") as f:
        for doc in documents:
            f.write(struct.pack(f"<{len(doc)}{fmt}", *doc))
            pointers.append(pos)
            lengths.append(len(doc))
            pos += len(doc) * size
    n = len(documents)
    doc_idx = list(range(n + 1))
    with open(prefix + ".idx", "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", code))
        f.write(struct.pack("<QQ", n, len(doc_idx)))
        f.write(struct.pack(f"<{n}i", *lengths))
        f.write(struct.pack(f"<{n}q", *pointers))
        f.write(struct.pack(f"<{len(doc_idx)}q", *doc_idx))


def main(argv):
    if len(argv) >= 3 and argv[1] == "read":
        json.dump(read(argv[2]), sys.stdout)
        sys.stdout.write("\n")
        return 0
    if len(argv) >= 4 and argv[1] == "write":
        write(argv[2], int(argv[3]), json.load(sys.stdin))
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (FormatError, OSError, struct.error) as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(1)
