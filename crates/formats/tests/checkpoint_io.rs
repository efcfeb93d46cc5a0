//! Reader/writer behaviour on synthetic checkpoints: round trips, sharding, atomicity, and every
//! kind of bad input the foundation issue lists, each naming the file and tensor at fault.

use std::path::{Path, PathBuf};

use escale_formats::writer::{rewrite_checkpoint, TensorSpec};
use escale_formats::{expected_params, hf_name, Checkpoint, CheckpointWriter, DType, FormatError, ModelConfig, WriterOptions};
use serde_json::json;

fn tiny_config(tied: bool) -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32, "hidden_size": 16,
        "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": tied, "rope_scaling": {"rope_type": "linear", "factor": 2.0},
        "torch_dtype": "bfloat16", "custom_field": {"kept": true}
    })
}

/// Deterministic pseudo-random values (no RNG crate needed for fixtures).
fn values(seed: usize, n: usize) -> Vec<f32> {
    (0..n).map(|i| (((i * 7919 + seed * 104729) % 1000) as f32 - 500.0) / 997.0).collect()
}

/// Writes a synthetic model with our writer; returns its folder.
fn make_model(dir: &Path, tied: bool, dtype: DType, max_shard_bytes: u64) -> PathBuf {
    let cfg = ModelConfig::from_json(tiny_config(tied), Path::new("config.json")).unwrap();
    let params = expected_params(&cfg);
    let specs: Vec<TensorSpec> =
        params.iter().map(|(p, s)| TensorSpec::new(hf_name(cfg.model_type, *p), dtype, s.clone())).collect();
    let out = dir.join(format!("model-{tied}-{dtype}-{max_shard_bytes}"));
    let writer = CheckpointWriter::create(&out, specs.clone(), &WriterOptions { max_shard_bytes, force: false }).unwrap();
    // Reverse order on purpose: tensors may arrive in any order.
    for (i, spec) in specs.iter().enumerate().rev() {
        let n: usize = spec.shape.iter().product();
        writer.write_f32(&spec.name, &values(i, n)).unwrap();
    }
    writer.finish(&cfg, None).unwrap()
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn write_read_round_trip_single_and_sharded() {
    let tmp = tempfile::tempdir().unwrap();
    for (tied, dtype) in [(true, DType::F32), (false, DType::BF16), (false, DType::F16)] {
        let single = make_model(tmp.path(), tied, dtype, u64::MAX);
        let sharded = make_model(tmp.path(), tied, dtype, 2_000);
        assert!(single.join("model.safetensors").exists());
        assert!(!single.join("model.safetensors.index.json").exists());
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(sharded.join("model.safetensors.index.json")).unwrap()).unwrap();
        let a = Checkpoint::open(&single).unwrap();
        let b = Checkpoint::open(&sharded).unwrap();
        let n_shards = b.shard_paths().count();
        assert!(n_shards > 2, "expected several shards, got {n_shards}");
        assert!(sharded.join(format!("model-00001-of-{n_shards:05}.safetensors")).exists());
        let total: usize = a.tensors().iter().map(|t| t.byte_len()).sum();
        assert_eq!(index["metadata"]["total_size"], total);
        assert_eq!(a.tensors().len(), b.tensors().len());
        for t in a.tensors() {
            assert_eq!(a.bytes(&t.name).unwrap(), b.bytes(&t.name).unwrap(), "{}", t.name);
        }
        assert_eq!(a.config.to_json(), tiny_config(tied));
        assert_eq!(a.info("lm_head.weight").is_none(), tied);
        assert_eq!(a.name_of(escale_formats::Param::LmHead), if tied { "model.embed_tokens.weight" } else { "lm_head.weight" });
        assert!(leftovers(tmp.path()).is_empty(), "{:?}", leftovers(tmp.path()));
    }
}

#[test]
fn output_is_deterministic_and_rewrite_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_model(tmp.path(), false, DType::BF16, u64::MAX);
    let ckpt = Checkpoint::open(&src).unwrap();
    let a = rewrite_checkpoint(&ckpt, &tmp.path().join("a"), &WriterOptions { max_shard_bytes: 3_000, force: false }).unwrap();
    let b = rewrite_checkpoint(&ckpt, &tmp.path().join("b"), &WriterOptions { max_shard_bytes: 3_000, force: false }).unwrap();
    let files = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        v.sort();
        v
    };
    assert_eq!(files(&a), files(&b));
    for f in files(&a) {
        assert_eq!(std::fs::read(a.join(&f)).unwrap(), std::fs::read(b.join(&f)).unwrap(), "{f:?}");
    }
    let back = rewrite_checkpoint(&Checkpoint::open(&a).unwrap(), &tmp.path().join("c"), &WriterOptions::default()).unwrap();
    assert_eq!(std::fs::read(back.join("model.safetensors")).unwrap(), std::fs::read(src.join("model.safetensors")).unwrap());
}

#[test]
fn existing_output_is_refused_unless_forced_and_never_half_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_model(tmp.path(), true, DType::F32, u64::MAX);
    let ckpt = Checkpoint::open(&src).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("precious.txt"), "keep me").unwrap();
    let err = rewrite_checkpoint(&ckpt, &out, &WriterOptions::default()).unwrap_err();
    assert!(matches!(err, FormatError::OutputExists { .. }), "{err}");
    assert!(err.to_string().contains("out") && err.to_string().contains("--force"));
    assert_eq!(std::fs::read_to_string(out.join("precious.txt")).unwrap(), "keep me");

    // Forced, it is replaced only as an escale output (it carries escale's mark); the refusal of
    // a folder escale did not write is tested in output_safety.rs.
    escale_util::output::mark_output(&out).unwrap();
    // An unfinished writer leaves the old output alone and removes its temporary folder.
    let specs = vec![TensorSpec::new("model.embed_tokens.weight", DType::F32, vec![32, 16])];
    let w = CheckpointWriter::create(&out, specs, &WriterOptions { force: true, ..Default::default() }).unwrap();
    drop(w);
    assert_eq!(std::fs::read_to_string(out.join("precious.txt")).unwrap(), "keep me");
    assert!(leftovers(tmp.path()).is_empty());

    rewrite_checkpoint(&ckpt, &out, &WriterOptions { force: true, ..Default::default() }).unwrap();
    assert!(!out.join("precious.txt").exists());
    Checkpoint::open(&out).unwrap();
    assert!(leftovers(tmp.path()).is_empty());
}

#[test]
fn finish_refuses_an_incomplete_output() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ModelConfig::from_json(tiny_config(true), Path::new("config.json")).unwrap();
    let specs = vec![
        TensorSpec::new("a", DType::F32, vec![2]),
        TensorSpec::new("b", DType::F32, vec![3]),
    ];
    let out = tmp.path().join("out");
    let w = CheckpointWriter::create(&out, specs, &WriterOptions::default()).unwrap();
    w.write_f32("a", &[1.0, 2.0]).unwrap();
    let err = w.write_f32("b", &[1.0]).unwrap_err().to_string();
    assert!(err.contains("`b`") && err.contains("needs 12"), "{err}");
    let err = w.write_f32("a", &[1.0, 2.0]).unwrap_err().to_string();
    assert!(err.contains("written twice"), "{err}");
    let err = w.finish(&cfg, None).unwrap_err().to_string();
    assert!(err.contains("`b`") && err.contains("never written"), "{err}");
    assert!(!out.exists());
    assert!(leftovers(tmp.path()).is_empty());
}

/// Rewrites one shard's header with `edit` applied to the parsed JSON (keeping the data).
fn edit_header(file: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(file, out).unwrap();
}

fn open_err(dir: &Path) -> String {
    Checkpoint::open(dir).unwrap_err().to_string()
}

#[test]
fn bad_inputs_name_the_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let fresh = |name: &str| {
        let d = make_model(tmp.path(), true, DType::F32, u64::MAX);
        let to = tmp.path().join(name);
        std::fs::rename(&d, &to).unwrap();
        to
    };

    // Truncated safetensors file.
    let d = fresh("truncated");
    let f = d.join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len - 100).unwrap();
    let err = open_err(&d);
    assert!(err.contains("truncated/model.safetensors") && err.contains("truncated file"), "{err}");

    // Offsets out of range.
    let d = fresh("out_of_range");
    edit_header(&d.join("model.safetensors"), |h| {
        h["model.norm.weight"]["data_offsets"][1] = json!(10_000_000);
    });
    let err = open_err(&d);
    assert!(err.contains("out_of_range/model.safetensors") && err.contains("model.norm.weight"), "{err}");

    // Overlapping offsets.
    let d = fresh("overlap");
    edit_header(&d.join("model.safetensors"), |h| {
        let first = h["model.layers.0.self_attn.q_proj.weight"]["data_offsets"].clone();
        h["model.layers.0.self_attn.k_proj.weight"]["data_offsets"] = first;
    });
    let err = open_err(&d);
    assert!(err.contains("overlap/model.safetensors") && err.contains("k_proj"), "{err}");

    // Unsupported dtype.
    let d = fresh("dtype");
    edit_header(&d.join("model.safetensors"), |h| {
        h["model.norm.weight"]["dtype"] = json!("I32");
    });
    let err = open_err(&d);
    assert!(err.contains("dtype/model.safetensors") && err.contains("model.norm.weight") && err.contains("I32"), "{err}");

    // Shape that disagrees with config.json.
    let d = fresh("shape");
    let mut cfg = tiny_config(true);
    cfg["intermediate_size"] = json!(20);
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    let err = open_err(&d);
    assert!(err.contains("shape/model.safetensors") && err.contains("gate_proj") && err.contains("config.json"), "{err}");

    // Invalid JSON config.
    let d = fresh("badjson");
    std::fs::write(d.join("config.json"), "{\"model_type\": \"llama\",").unwrap();
    let err = open_err(&d);
    assert!(err.contains("badjson/config.json") && err.contains("invalid JSON"), "{err}");

    // Shard listed in the index but missing.
    let src = make_model(tmp.path(), false, DType::F32, 2_000);
    let d = tmp.path().join("missing_shard");
    std::fs::rename(&src, &d).unwrap();
    std::fs::remove_file(d.join("model-00002-of-00006.safetensors")).unwrap_or_else(|_| {
        let second = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().contains("model-00002"))
            .unwrap();
        std::fs::remove_file(second).unwrap();
    });
    let err = open_err(&d);
    assert!(err.contains("model.safetensors.index.json") && err.contains("model-00002-of-"), "{err}");

    // No weights at all.
    let d = tmp.path().join("empty");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(d.join("config.json"), tiny_config(true).to_string()).unwrap();
    assert!(open_err(&d).contains("no model.safetensors"));
}

#[test]
fn write_part_assembles_a_tensor_from_pieces_in_any_order() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = make_model(tmp.path(), true, DType::BF16, u64::MAX);
    let cfg = ModelConfig::from_json(tiny_config(true), Path::new("config.json")).unwrap();
    let specs: Vec<TensorSpec> =
        expected_params(&cfg).iter().map(|(p, s)| TensorSpec::new(hf_name(cfg.model_type, *p), DType::BF16, s.clone())).collect();
    let out = tmp.path().join("pieces");
    let writer = CheckpointWriter::create(&out, specs.clone(), &WriterOptions::default()).unwrap();
    for (i, spec) in specs.iter().enumerate() {
        let mut bytes = Vec::new();
        escale_formats::dtype::encode_from_f32(DType::BF16, &values(i, spec.shape.iter().product()), &mut bytes);
        let mid = (bytes.len() / 2) as u64;
        writer.write_part(&spec.name, mid, &bytes[mid as usize..]).unwrap();
        writer.write_part(&spec.name, 0, &bytes[..mid as usize]).unwrap();
    }
    let first = &specs[0].name;
    let err = writer.write_part(first, 0, &[0, 0]).unwrap_err().to_string();
    assert!(err.contains(first.as_str()) && err.contains("written twice"), "{err}");
    let err = writer.write_part(first, specs[0].byte_len(), &[0, 0]).unwrap_err().to_string();
    assert!(err.contains("overruns"), "{err}");
    writer.finish(&cfg, None).unwrap();
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), std::fs::read(whole.join("model.safetensors")).unwrap());
}

#[test]
fn unfinished_pieces_fail_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ModelConfig::from_json(tiny_config(true), Path::new("config.json")).unwrap();
    let specs: Vec<TensorSpec> =
        expected_params(&cfg).iter().map(|(p, s)| TensorSpec::new(hf_name(cfg.model_type, *p), DType::F32, s.clone())).collect();
    let out = tmp.path().join("partial");
    let writer = CheckpointWriter::create(&out, specs.clone(), &WriterOptions::default()).unwrap();
    for spec in &specs {
        let n: usize = spec.shape.iter().product();
        writer.write_part(&spec.name, 0, &vec![0u8; (n * 4).saturating_sub(4)]).unwrap();
    }
    let err = writer.finish(&cfg, None).unwrap_err().to_string();
    assert!(err.contains("never written"), "{err}");
    assert!(!out.exists());
}
