//! Multiple-choice task files (`escale eval --tasks`, `escale make-tasks`): JSONL, one item a line.
//!
//! ```text
//! {"task": "world-knowledge-en", "context": "Belan Kotor was born in", "choices": [" Kotoport.", " Belaport."], "answer": 1}
//! ```
//!
//! * `context` (string): the text the model reads first; may be empty.
//! * `choices` (list of at least 2 non-empty strings): the continuations, each scored as the text
//!   that follows `context` directly (put the separating space in the continuation, as above).
//! * `answer` (integer): the 0-based index of the right continuation.
//! * `task` (string, optional): the name results are grouped under; absent, the file's name
//!   without its extension.
//!
//! Other keys are ignored, so exports that carry ids or metadata load as they are.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use escale_util::publish;

/// One multiple-choice question.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChoiceItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    pub context: String,
    pub choices: Vec<String>,
    pub answer: usize,
}

impl ChoiceItem {
    /// The task this item counts towards (`task`, or `default` when the item names none).
    pub fn task_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.task.as_deref().unwrap_or(default)
    }

    /// Why the item cannot be scored, if it cannot.
    pub fn problem(&self) -> Option<String> {
        if self.choices.len() < 2 {
            return Some(format!("{} choice(s): at least 2 are needed", self.choices.len()));
        }
        if self.answer >= self.choices.len() {
            return Some(format!("answer {} is not an index into {} choices", self.answer, self.choices.len()));
        }
        if let Some(k) = self.choices.iter().position(|c| c.is_empty()) {
            return Some(format!("choice {k} is empty: a continuation needs at least one character"));
        }
        None
    }
}

/// Reads a task file; every item gets a task name (the file stem where it names none). Errors name
/// the file and the 1-based line.
pub fn read_choice_items(path: &Path) -> Result<Vec<ChoiceItem>> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "tasks".into());
    let mut items = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line_no = i as u64 + 1;
        let line = line.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => DataError::InvalidUtf8 { path: path.to_path_buf(), line: line_no },
            _ => DataError::io(path, e),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| DataError::BadRecord { path: path.to_path_buf(), line: line_no, message };
        let mut item: ChoiceItem = serde_json::from_str(&line).map_err(|e| {
            bad(format!("{e} (expected {{\"context\": str, \"choices\": [str, ...], \"answer\": int, \"task\": str?}})"))
        })?;
        if let Some(problem) = item.problem() {
            return Err(bad(problem));
        }
        item.task.get_or_insert_with(|| stem.clone());
        items.push(item);
    }
    if items.is_empty() {
        return Err(DataError::EmptyInput(format!("{}: no multiple-choice items", path.display())));
    }
    Ok(items)
}

/// Writes items as JSONL, atomically (temporary name, then rename).
pub fn write_choice_items(path: &Path, items: &[ChoiceItem]) -> Result<()> {
    publish::write_atomic_with(path, |w| {
        for item in items {
            serde_json::to_writer(&mut *w, item)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
    .map_err(|e| DataError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_default_task_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quiz.jsonl");
        let items = vec![
            ChoiceItem { task: Some("t".into()), context: "2 + 2 =".into(), choices: vec![" 4".into(), " 5".into()], answer: 0 },
            ChoiceItem { task: None, context: "天空是".into(), choices: vec!["蓝色的。".into(), "绿色的。".into()], answer: 0 },
        ];
        write_choice_items(&path, &items).unwrap();
        let back = read_choice_items(&path).unwrap();
        assert_eq!(back[0], items[0]);
        assert_eq!(back[1].task.as_deref(), Some("quiz"));
        assert_eq!(back[1].choices, items[1].choices);
    }

    #[test]
    fn bad_items_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.jsonl");
        let ok = r#"{"context": "a", "choices": [" b", " c"], "answer": 1, "id": 7}"#;
        for (line, want) in [
            (r#"{"context": "a", "choices": [" b", " c"], "answer": 2}"#, "answer 2 is not an index"),
            (r#"{"context": "a", "choices": [" b"], "answer": 0}"#, "at least 2"),
            (r#"{"context": "a", "choices": [" b", ""], "answer": 0}"#, "choice 1 is empty"),
            (r#"{"context": "a", "answer": 0}"#, "missing field `choices`"),
        ] {
            std::fs::write(&path, format!("{ok}\n\n{line}\n")).unwrap();
            let e = read_choice_items(&path).unwrap_err().to_string();
            assert!(e.contains("bad.jsonl:3") && e.contains(want), "{e}");
        }
        std::fs::write(&path, "\n").unwrap();
        assert!(read_choice_items(&path).unwrap_err().to_string().contains("no multiple-choice items"));
    }
}
