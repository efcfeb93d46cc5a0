//! Issue 13's reproductions: `--force` never removes what escale did not write or what it reads,
//! output folders are locked against a second writer, and nothing is left behind.

use std::path::Path;
use std::process::{Command, Output};

use escale_util::lock::OutputLock;
use escale_util::output::{mark_output, OUTPUT_MARKER};

mod common;
use common::{copy_model, stories};

fn escale(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_escale")).args(args).output().expect("run escale")
}

fn p(s: &str) -> &Path {
    Path::new(s)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A copy of the model's weights and config (the source a user would grow).
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn scale_out(src: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![p("scale-out"), src, out, p("--experts"), p("2"), p("--quiet")];
    args.extend(extra.iter().map(|s| p(s)));
    escale(&args)
}

#[test]
fn force_onto_the_parent_of_the_source_removes_nothing() {
    let Some(stories) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let models = tmp.path().join("models");
    let src = models.join("src");
    copy_model(&stories, &src);
    std::fs::write(models.join("notes.txt"), "mine").unwrap();
    let before = names(&src);

    let o = scale_out(&src, &models, &["--force"]);
    assert!(!o.status.success(), "scale-out into the source's parent succeeded");
    assert!(stderr(&o).contains("escale did not write"), "{}", stderr(&o));

    // Even a folder escale marked as its own is never replaced while it holds the source.
    mark_output(&models).unwrap();
    let o = scale_out(&src, &models, &["--force"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("contains the source"), "{}", stderr(&o));
    assert_eq!(names(&src), before);
    assert_eq!(std::fs::read_to_string(models.join("notes.txt")).unwrap(), "mine");
    assert_eq!(names(&models), [OUTPUT_MARKER, "notes.txt", "src"]);
}

#[test]
fn force_onto_the_source_itself_removes_nothing() {
    let Some(stories) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let m = tmp.path().join("m");
    copy_model(&stories, &m);
    let grow = |m: &Path| escale(&[p("scale-up"), m, m, p("--hidden"), p("128"), p("--heads"), p("16"), p("--force"), p("--quiet")]);
    let o = grow(&m);
    assert!(!o.status.success() && stderr(&o).contains("escale did not write"), "{}", stderr(&o));
    mark_output(&m).unwrap();
    let o = grow(&m);
    assert!(!o.status.success() && stderr(&o).contains("is the source"), "{}", stderr(&o));
    assert!(escale_formats::Checkpoint::open(&m).is_ok());
    assert_eq!(names(tmp.path()), ["m"], "leftovers beside the source");
}

#[test]
fn force_replaces_an_escale_output_in_place_and_leaves_nothing_behind() {
    let Some(src) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    assert!(scale_out(&src, &real, &[]).status.success());
    assert!(real.join(OUTPUT_MARKER).is_file(), "escale outputs carry the marker");
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();

    let o = scale_out(&src, &link, &["--force", "--seed", "7"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link became a folder");
    let manifest = std::fs::read_to_string(real.join("escale_growth.json")).unwrap();
    assert!(manifest.contains("\"seed\": 7"), "{manifest}");
    assert_eq!(names(tmp.path()), ["link", "real"], "temporary or moved-aside copies left behind");

    // A folder escale did not write is refused even with --force, and kept whole.
    let mine = tmp.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("thesis.tex"), "years").unwrap();
    let o = scale_out(&src, &mine, &["--force"]);
    assert!(!o.status.success() && stderr(&o).contains("escale did not write"), "{}", stderr(&o));
    assert_eq!(names(&mine), ["thesis.tex"]);
}

#[test]
fn a_locked_output_is_refused_naming_the_holder_and_a_dead_ones_lock_is_taken_over() {
    let Some(src) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("moe");
    let held = OutputLock::acquire(&out).unwrap();
    let o = scale_out(&src, &out, &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains(&format!("PID {}", std::process::id())), "{}", stderr(&o));
    assert!(!out.exists());
    let lock_file = held.path().to_path_buf();
    drop(held);

    // A lock file left by a process that died (no flock held, a dead PID inside).
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    std::fs::create_dir_all(lock_file.parent().unwrap()).unwrap();
    std::fs::write(&lock_file, format!("{dead}\n")).unwrap();
    std::fs::create_dir_all(lock_file.parent().unwrap().join(format!("moe.tmp-{dead}"))).unwrap();
    let o = scale_out(&src, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(names(tmp.path()), ["moe"], "the dead writer's lock and staging folder were not cleaned");
}

#[test]
fn a_training_run_folder_is_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let _held = OutputLock::acquire(&run).unwrap();
    let o = escale(&[p("train"), p("no-model"), p("--data"), p("no-data"), p("--output"), &run, p("--steps"), p("1")]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains(&format!("PID {}", std::process::id())), "{}", stderr(&o));
    assert!(!run.exists(), "the refused run wrote into its folder");
}

#[test]
fn prepare_data_never_writes_over_its_input() {
    let Some(stories) = stories() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("x.bin");
    std::fs::write(&input, "Once upon a time there was a cat.\n").unwrap();
    let o = escale(&[p("prepare-data"), &input, p("--tokenizer"), &stories.join("tokenizer.json"), p("--output"), &tmp.path().join("x"), p("--quiet")]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is the source"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&input).unwrap(), "Once upon a time there was a cat.\n");
}
