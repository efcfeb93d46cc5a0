#!/usr/bin/env python3
"""Reference for the data benchmark: the Python `tokenizers` package's batch encoding of the same JSONL file
escale prepare-data reads. Same work as escale: read the documents, encode them in batches (the Rust core runs the
batch in parallel), append the EOS id to each document, write the ids (int32, as Megatron does for a vocab over
65535) and the document lengths to disk. Prints a JSON line with its own phase timings."""
import argparse
import json
import os
import sys
import time
from array import array

from tokenizers import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--eos", default="<|endoftext|>")
    ap.add_argument("--batch", type=int, default=1000)
    a = ap.parse_args()
    t0 = time.perf_counter()
    tok = Tokenizer.from_file(a.tokenizer)
    eos = tok.token_to_id(a.eos)
    if eos is None:
        sys.exit(f"tokenizer has no {a.eos}")
    t_load = time.perf_counter() - t0
    n_docs = n_tokens = n_bytes = 0
    t_encode = 0.0
    sizes = array("q")
    with open(a.input, "rb") as f, open(a.output + ".ids", "wb") as out:
        batch = []

        def flush():
            nonlocal n_tokens, t_encode
            t = time.perf_counter()
            encs = tok.encode_batch(batch, add_special_tokens=False)
            t_encode += time.perf_counter() - t
            for e in encs:
                ids = array("i", e.ids)
                ids.append(eos)
                sizes.append(len(ids))
                n_tokens_local = len(ids)
                out.write(ids.tobytes())
                n_tokens += n_tokens_local

        for line in f:
            n_bytes += len(line)
            if not line.strip():
                continue
            batch.append(json.loads(line)["text"])
            n_docs += 1
            if len(batch) >= a.batch:
                flush()
                batch = []
        if batch:
            flush()
        out.flush()
        os.fsync(out.fileno())
    with open(a.output + ".sizes", "wb") as s:
        s.write(sizes.tobytes())
    total = time.perf_counter() - t0
    print(json.dumps({"documents": n_docs, "tokens": n_tokens, "bytes": n_bytes, "load_s": t_load,
                      "encode_s": t_encode, "total_s": total}))


if __name__ == "__main__":
    main()
