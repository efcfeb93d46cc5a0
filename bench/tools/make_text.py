#!/usr/bin/env python3
"""Builds the tokenization benchmark input: a JSONL file ({"text": ...} per line, one document per line) of about
--size bytes of text, cut from the given text files into paragraph-sized documents and cycled until the size is
reached. Both escale and the Python reference read this same file, so a document means the same thing to both."""
import argparse
import json
import os


def paragraphs(paths, max_chars):
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        buf = []
        n = 0
        for line in text.splitlines():
            if not line.strip():
                if n >= 200:
                    yield "\n".join(buf)
                    buf, n = [], 0
                continue
            buf.append(line)
            n += len(line)
            if n >= max_chars:
                yield "\n".join(buf)
                buf, n = [], 0
        if buf:
            yield "\n".join(buf)


def collect(inputs):
    out = []
    for p in inputs:
        if os.path.isdir(p):
            for root, _, files in os.walk(p):
                out += [os.path.join(root, f) for f in sorted(files) if f.endswith((".txt", ".jsonl"))]
        else:
            out.append(p)
    return sorted(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--output", required=True)
    ap.add_argument("--size", type=int, required=True, help="bytes of JSONL to write (approximately)")
    ap.add_argument("--max-chars", type=int, default=2000)
    a = ap.parse_args()
    files = collect(a.inputs)
    docs = []
    for f in files:
        if f.endswith(".jsonl"):
            with open(f, encoding="utf-8") as fh:
                docs += [json.loads(l)["text"] for l in fh if l.strip()]
        else:
            docs += list(paragraphs([f], a.max_chars))
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise SystemExit("no text found in " + " ".join(a.inputs))
    lines = [json.dumps({"text": d}, ensure_ascii=False).encode() + b"\n" for d in docs]
    written = 0
    with open(a.output, "wb") as out:
        i = 0
        while written < a.size:
            out.write(lines[i % len(lines)])
            written += len(lines[i % len(lines)])
            i += 1
    print(f"{a.output}: {written} bytes, {i} documents from {len(files)} files")


if __name__ == "__main__":
    main()
