//! Megatron indexed dataset: writer, reader, bad files, and an independent Python reader/writer.

mod common;

use std::io::Write;
use std::path::Path;

use escale_data::indexed::{bin_path, idx_path, write_dataset, INDEX_HEADER_LEN};
use escale_data::{DType, DataError, IndexedDataset, IndexedDatasetWriter};

fn docs() -> Vec<Vec<u32>> {
    vec![vec![5, 6, 7, 2], vec![2], vec![], vec![65_000, 1, 2, 3, 4, 5, 2], vec![9; 1000]]
}

#[test]
fn round_trip_every_integer_dtype() {
    let dir = tempfile::tempdir().unwrap();
    for dtype in [DType::U8, DType::I8, DType::I16, DType::U16, DType::I32, DType::I64] {
        let docs: Vec<Vec<u32>> = docs()
            .into_iter()
            .map(|d| d.into_iter().map(|t| (t as u64 % (dtype.max_token().unwrap() + 1)) as u32).collect())
            .collect();
        let prefix = dir.path().join(format!("ds_{dtype}"));
        let w = write_dataset(&prefix, dtype, &docs).unwrap();
        assert_eq!(w.documents, docs.len() as u64);
        let ds = IndexedDataset::open(&prefix).unwrap();
        assert_eq!(ds.dtype(), dtype);
        assert_eq!(ds.len(), docs.len());
        assert_eq!(ds.num_documents(), docs.len());
        assert!(ds.is_contiguous());
        assert_eq!(ds.num_tokens(), docs.iter().map(|d| d.len() as u64).sum::<u64>());
        for (i, d) in docs.iter().enumerate() {
            assert_eq!(&ds.document_u32(i).unwrap(), d, "{dtype} doc {i}");
            assert_eq!(ds.sequence_length(i), d.len());
        }
        assert_eq!(ds.document_indices(), (0..=docs.len() as u64).collect::<Vec<_>>());
        let all: Vec<u32> = docs.concat();
        assert_eq!(ds.token_stream().unwrap().to_u32_vec(), all);
        // No temporary files left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

#[test]
fn exact_bytes_of_a_tiny_index() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("tiny");
    write_dataset(&prefix, DType::U16, &[vec![1, 2, 3], vec![4]]).unwrap();
    let idx = std::fs::read(idx_path(&prefix)).unwrap();
    let mut expect = Vec::new();
    expect.extend_from_slice(b"MMIDIDX\x00\x00");
    expect.extend_from_slice(&1u64.to_le_bytes());
    expect.push(8); // uint16
    expect.extend_from_slice(&2u64.to_le_bytes()); // sequences
    expect.extend_from_slice(&3u64.to_le_bytes()); // document indices = documents + 1
    for l in [3i32, 1] {
        expect.extend_from_slice(&l.to_le_bytes());
    }
    for p in [0i64, 6] {
        expect.extend_from_slice(&p.to_le_bytes());
    }
    for d in [0i64, 1, 2] {
        expect.extend_from_slice(&d.to_le_bytes());
    }
    assert_eq!(idx, expect);
    assert_eq!(std::fs::read(bin_path(&prefix)).unwrap(), [1, 0, 2, 0, 3, 0, 4, 0]);
}

#[test]
fn streaming_appends_make_one_document() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("s");
    let mut w = IndexedDatasetWriter::create(&prefix, DType::I32).unwrap();
    w.append(&[1, 2]).unwrap();
    w.append(&[]).unwrap();
    w.append(&[3]).unwrap();
    w.end_document().unwrap();
    w.append(&[100_000]).unwrap(); // left open: finish ends it
    w.finish().unwrap();
    let ds = IndexedDataset::open(&prefix).unwrap();
    assert_eq!(ds.document_u32(0).unwrap(), vec![1, 2, 3]);
    assert_eq!(ds.document_u32(1).unwrap(), vec![100_000]);
}

/// A PID that belonged to a process which has exited.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Issue 13: a writer's temporary files live in the `.escale-tmp` folder beside the dataset, so
/// what a killed writer left there is removed by the next writer in that folder.
#[test]
fn temporary_files_live_in_the_staging_area_and_a_dead_writers_are_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let area = dir.path().join(".escale-tmp");
    let dead = dead_pid();
    std::fs::create_dir_all(&area).unwrap();
    for leftover in [format!("old_train.bin.tmp-{dead}"), format!("old_train.idx.tmp-{dead}")] {
        std::fs::write(area.join(leftover), vec![0u8; 4096]).unwrap();
    }
    let mut w = IndexedDatasetWriter::create(dir.path().join("new"), DType::U16).unwrap();
    w.add_document(&[1, 2, 3]).unwrap();
    let mut beside: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    beside.sort();
    assert_eq!(beside, vec![".escale-tmp"], "nothing but the staging area beside the output while writing");
    let mut staged: Vec<_> = std::fs::read_dir(&area).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    staged.sort();
    let pid = std::process::id();
    assert_eq!(staged, vec![format!("new.bin.tmp-{pid}"), format!("new.idx.tmp-{pid}"), format!("new.ptr.tmp-{pid}")], "the dead writer's files are gone");
    w.finish().unwrap();
    let mut published: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    published.sort();
    assert_eq!(published, vec!["new.bin", "new.idx"], "the emptied staging area is removed");
}

#[test]
fn out_of_range_token_is_an_error_and_nothing_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("bad");
    let mut w = IndexedDatasetWriter::create(&prefix, DType::U16).unwrap();
    let err = w.add_document(&[1, 70_000]).unwrap_err();
    assert!(matches!(err, DataError::TokenOutOfRange { token: 70_000, .. }), "{err}");
    drop(w);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "temporary files removed");
    assert!(IndexedDatasetWriter::create(&prefix, DType::F32).is_err());
}

#[test]
fn prefix_with_extension_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("x");
    write_dataset(&prefix, DType::U16, &[vec![1]]).unwrap();
    assert_eq!(IndexedDataset::open(dir.path().join("x.idx")).unwrap().num_tokens(), 1);
    assert_eq!(IndexedDataset::open(dir.path().join("x.bin")).unwrap().num_tokens(), 1);
}

fn write_bytes(path: &Path, bytes: &[u8]) {
    std::fs::File::create(path).unwrap().write_all(bytes).unwrap();
}

fn open_err(prefix: &Path) -> String {
    let e = IndexedDataset::open(prefix).unwrap_err();
    e.to_string()
}

#[test]
fn bad_files_give_clear_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("d");
    write_dataset(&prefix, DType::U16, &docs().into_iter().map(|d| d.into_iter().map(|t| t % 60_000).collect()).collect::<Vec<_>>()).unwrap();
    let good = std::fs::read(idx_path(&prefix)).unwrap();
    let good_bin = std::fs::read(bin_path(&prefix)).unwrap();
    let idx_name = idx_path(&prefix).display().to_string();
    let bin_name = bin_path(&prefix).display().to_string();

    let mut bad = good.clone();
    bad[0] = b'X';
    write_bytes(&idx_path(&prefix), &bad);
    let e = open_err(&prefix);
    assert!(e.contains(&idx_name) && e.contains("bad magic"), "{e}");

    let mut bad = good.clone();
    bad[9] = 2;
    write_bytes(&idx_path(&prefix), &bad);
    let e = open_err(&prefix);
    assert!(e.contains(&idx_name) && e.contains("version 2"), "{e}");

    let mut bad = good.clone();
    bad[17] = 9;
    write_bytes(&idx_path(&prefix), &bad);
    let e = open_err(&prefix);
    assert!(e.contains(&idx_name) && e.contains("dtype code 9"), "{e}");

    write_bytes(&idx_path(&prefix), &good[..20]);
    let e = open_err(&prefix);
    assert!(e.contains(&idx_name) && e.contains("header"), "{e}");

    write_bytes(&idx_path(&prefix), &good[..good.len() - 4]);
    let e = open_err(&prefix);
    assert!(e.contains(&idx_name) && e.contains("truncated"), "{e}");

    write_bytes(&idx_path(&prefix), &good);
    write_bytes(&bin_path(&prefix), &good_bin[..good_bin.len() - 2]);
    let e = IndexedDataset::open(&prefix).unwrap_err();
    assert!(matches!(e, DataError::TruncatedData { .. }), "{e}");
    let e = e.to_string();
    assert!(e.contains(&bin_name) && e.contains("truncated"), "{e}");

    std::fs::remove_file(bin_path(&prefix)).unwrap();
    let e = open_err(&prefix);
    assert!(e.contains(&bin_name), "{e}");

    // Header intact but the document index does not end at the sequence count.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 8..].copy_from_slice(&3i64.to_le_bytes());
    write_bytes(&idx_path(&prefix), &bad);
    write_bytes(&bin_path(&prefix), &good_bin);
    let e = open_err(&prefix);
    assert!(e.contains(&idx_name) && e.contains("document index"), "{e}");
    assert_eq!(INDEX_HEADER_LEN, 34);
}

#[test]
fn float_dataset_opens_but_holds_no_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("f");
    let mut idx = Vec::new();
    idx.extend_from_slice(b"MMIDIDX\x00\x00");
    idx.extend_from_slice(&1u64.to_le_bytes());
    idx.push(7);
    idx.extend_from_slice(&1u64.to_le_bytes());
    idx.extend_from_slice(&2u64.to_le_bytes());
    idx.extend_from_slice(&2i32.to_le_bytes());
    idx.extend_from_slice(&0i64.to_le_bytes());
    idx.extend_from_slice(&0i64.to_le_bytes());
    idx.extend_from_slice(&1i64.to_le_bytes());
    write_bytes(&idx_path(&prefix), &idx);
    let mut bin = Vec::new();
    bin.extend_from_slice(&1.5f32.to_le_bytes());
    bin.extend_from_slice(&2.5f32.to_le_bytes());
    write_bytes(&bin_path(&prefix), &bin);
    let ds = IndexedDataset::open(&prefix).unwrap();
    assert_eq!(ds.dtype(), DType::F32);
    match ds.sequence(0) {
        escale_data::Tokens::F32(v) => assert_eq!(v, &[1.5, 2.5]),
        other => panic!("{other:?}"),
    }
    assert!(matches!(ds.document_u32(0), Err(DataError::NotTokenDtype { .. })));
}

#[test]
fn megatron_dtype_rule() {
    assert_eq!(DType::for_vocab_size(32_000), DType::U16);
    assert_eq!(DType::for_vocab_size(65_499), DType::U16);
    assert_eq!(DType::for_vocab_size(65_500), DType::I32);
    assert_eq!(DType::for_vocab_size(151_669), DType::I32);
    for d in DType::ALL {
        assert_eq!(DType::from_code(d.code()), Some(d));
        assert_eq!(d.name().parse::<DType>().unwrap(), d);
    }
    assert_eq!(DType::from_code(0), None);
    assert_eq!(DType::from_code(9), None);
}

#[test]
fn independent_python_reader_agrees() {
    let dir = tempfile::tempdir().unwrap();
    for (dtype, code) in [(DType::U16, 8), (DType::I32, 4), (DType::U8, 1), (DType::I64, 5)] {
        let docs: Vec<Vec<u32>> = docs().into_iter().map(|d| d.into_iter().map(|t| t % 250).collect()).collect();
        let prefix = dir.path().join(format!("py_{dtype}"));
        write_dataset(&prefix, dtype, &docs).unwrap();
        let Some(parsed) = common::python_read(&prefix) else { return };
        let v = parsed.expect("python reader accepts escale's files");
        assert_eq!(v["dtype_code"], code);
        assert_eq!(v["sequence_count"], docs.len());
        assert_eq!(v["document_count"], docs.len() + 1);
        let got: Vec<Vec<u32>> = serde_json::from_value(v["documents"].clone()).unwrap();
        assert_eq!(got, docs);
        let ptrs: Vec<u64> = serde_json::from_value(v["sequence_pointers"].clone()).unwrap();
        let mut expect = Vec::new();
        let mut p = 0;
        for d in &docs {
            expect.push(p);
            p += d.len() as u64 * dtype.size() as u64;
        }
        assert_eq!(ptrs, expect);
    }
    // And the Python reader rejects a bad magic too (sanity of the oracle itself).
    let prefix = dir.path().join("py_uint16");
    let mut idx = std::fs::read(idx_path(&prefix)).unwrap();
    idx[1] = b'?';
    write_bytes(&idx_path(&prefix), &idx);
    if let Some(r) = common::python_read(&prefix) {
        assert!(r.unwrap_err().contains("bad magic"));
    }
}

#[test]
fn reads_files_written_by_the_independent_python_writer() {
    let Some(py) = common::python3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let docs: Vec<Vec<u32>> = vec![vec![1, 2, 3], vec![], vec![40_000, 7]];
    for code in [8u8, 4] {
        let prefix = dir.path().join(format!("pyw{code}"));
        let mut child = std::process::Command::new(py)
            .arg(common::oracle_script())
            .arg("write")
            .arg(&prefix)
            .arg(code.to_string())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(serde_json::to_string(&docs).unwrap().as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
        let ds = IndexedDataset::open(&prefix).unwrap();
        assert_eq!(ds.dtype().code(), code);
        for (i, d) in docs.iter().enumerate() {
            assert_eq!(&ds.document_u32(i).unwrap(), d);
        }
        // Byte-identical to what escale writes for the same documents.
        let ours = dir.path().join(format!("ours{code}"));
        write_dataset(&ours, DType::from_code(code).unwrap(), &docs).unwrap();
        assert_eq!(std::fs::read(idx_path(&ours)).unwrap(), std::fs::read(idx_path(&prefix)).unwrap());
        assert_eq!(std::fs::read(bin_path(&ours)).unwrap(), std::fs::read(bin_path(&prefix)).unwrap());
    }
}

#[test]
fn rewriting_a_prefix_replaces_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("r");
    write_dataset(&prefix, DType::U16, &[vec![1, 2, 3], vec![4]]).unwrap();
    write_dataset(&prefix, DType::I32, &[vec![70_000]]).unwrap();
    let ds = IndexedDataset::open(&prefix).unwrap();
    assert_eq!(ds.dtype(), DType::I32);
    assert_eq!(ds.document_u32(0).unwrap(), vec![70_000]);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}
