//! A stop requested through `escale_util::stop` (SIGINT/SIGTERM in `escale run`) ends a growth
//! between two tensors: an error saying so, no output folder and no staging left. Its own test
//! binary, because the flag is process-wide.

mod scale_up_support;

use escale_formats::{DType, WriterOptions};
use escale_grow::scale_out::{upcycle, ScaleOutOptions};
use escale_grow::scale_up::{scale_up, ExecOptions, ScaleUpOptions};
use scale_up_support::{dims, make_tiny, tiny_config};

#[test]
fn a_requested_stop_ends_a_growth_with_nothing_published() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tiny(&src, tiny_config("llama", false, false), 1, DType::F32);
    escale_util::stop::flag().store(true, std::sync::atomic::Ordering::SeqCst);

    let out = tmp.path().join("up");
    let err = scale_up(&src, &out, &dims(32, 48, 8, 4), &ScaleUpOptions::default(), &ExecOptions::default(), None).unwrap_err();
    assert!(err.to_string().contains("interrupted") && err.to_string().contains("nothing was published"), "{err}");

    let out_moe = tmp.path().join("moe");
    let options = ScaleOutOptions { experts: 4, top_k: 2, ..ScaleOutOptions::default() };
    let err = upcycle(&src, &out_moe, &options, &WriterOptions::default(), &|_, _| {}).unwrap_err();
    assert!(err.to_string().contains("interrupted"), "{err}");

    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(left, vec!["src"], "no output and no staging area");
}
