//! The built-in world tasks (`escale make-tasks`): every answer is true in the world and every
//! distractor false (checked against the world's own fields, not against the generator's
//! templates), knowledge facts occur in the corpus text and held-out ones do not, and the file is
//! deterministic.

use escale_data::corpus::tasks::{country_name, world_questions, Fact, QuestionKind, TaskLang, WorldQuestion};
use escale_data::corpus::{corpus_text, lexicon::PROFESSIONS, make_tasks, CorpusOptions, TaskOptions, World};
use escale_data::read_choice_items;

fn options(seed: u64) -> TaskOptions {
    TaskOptions { corpus: CorpusOptions { size_bytes: 600_000, seed, people: Some(80), zh_fraction: 0.5 }, per_task: 60, seed: 5 }
}

/// The right value of a fact in `lang`, read straight from the world.
fn truth(w: &World, fact: Fact, lang: TaskLang) -> String {
    let person = |id: usize| if lang == TaskLang::En { w.person_en(id) } else { w.person_zh(id) };
    let city = |c: usize| if lang == TaskLang::En { w.city_en(c) } else { w.city_zh(c) };
    match fact {
        Fact::Age { person: p } => w.people[p].age.to_string(),
        Fact::Profession { person: p } => {
            let (en, zh) = PROFESSIONS[w.people[p].profession];
            if lang == TaskLang::En { en.to_string() } else { zh.to_string() }
        }
        Fact::Birthplace { person: p } => city(w.people[p].birthplace),
        Fact::Home { person: p } => city(w.people[p].home),
        Fact::Friend { person: p } => person(w.people[p].friend),
        Fact::Capital { country } => city(w.countries[country].capital),
        Fact::CityCountry { city: c } => country_name(w, w.cities[c].country, lang),
        Fact::HomeCountry { person: p } => country_name(w, w.cities[w.people[p].home].country, lang),
        Fact::Sum { a, b } => (a + b).to_string(),
    }
}

/// The value a choice names, with an English article dropped ("an engineer" -> "engineer").
fn bare(v: &str) -> &str {
    v.strip_prefix("an ").or_else(|| v.strip_prefix("a ")).unwrap_or(v)
}

/// Whether `s` occurs in `text` not glued to a preceding letter or digit ("5 plus 9 equals 24." is
/// inside the true "15 plus 9 equals 24.", but is not stated by it).
fn states(text: &str, s: &str) -> bool {
    text.match_indices(s).any(|(at, _)| text[..at].chars().next_back().is_none_or(|c| !c.is_alphanumeric()))
}

fn statement(q: &WorldQuestion, k: usize) -> String {
    format!("{}{}", q.item.context, q.item.choices[k])
}

#[test]
fn answers_are_true_distractors_false_and_knowledge_is_in_the_corpus() {
    let opts = options(3);
    let (text, summary) = corpus_text(&opts.corpus).unwrap();
    let world = World::generate(opts.corpus.seed, summary.people);
    let questions = world_questions(&opts).unwrap();
    let count = |kind, lang| questions.iter().filter(|q| q.kind == kind && q.lang == lang).count();
    for kind in [QuestionKind::Knowledge, QuestionKind::Generalisation] {
        for lang in [TaskLang::En, TaskLang::Zh] {
            assert!(count(kind, lang) >= 40, "{kind:?} {lang:?}: only {} questions", count(kind, lang));
        }
    }
    let mut kinds_seen = std::collections::BTreeSet::new();
    for q in &questions {
        let item = &q.item;
        assert!(item.problem().is_none(), "{item:?}");
        assert!((3..=4).contains(&item.choices.len()), "{item:?}");
        kinds_seen.insert(format!("{:?}", q.fact).split(' ').next().unwrap().to_string());
        let right = truth(&world, q.fact, q.lang);
        assert_eq!(bare(&q.values[item.answer]), right, "answer of {item:?}");
        for (k, v) in q.values.iter().enumerate() {
            assert!(item.choices[k].contains(v.as_str()), "choice {k} of {item:?} does not name {v}");
            if k != item.answer {
                assert_ne!(bare(v), right, "distractor {k} of {item:?} is true");
            }
        }
        let distinct: std::collections::HashSet<&String> = item.choices.iter().collect();
        assert_eq!(distinct.len(), item.choices.len(), "repeated choice in {item:?}");
        match q.kind {
            QuestionKind::Knowledge => assert!(text.contains(&statement(q, item.answer)), "not in the corpus: {}", statement(q, item.answer)),
            QuestionKind::Generalisation => {
                assert!(!text.contains(&statement(q, item.answer)), "held-out fact is in the corpus: {}", statement(q, item.answer))
            }
        }
        // No distractor is ever stated (the corpus only states true facts).
        for k in (0..item.choices.len()).filter(|&k| k != item.answer) {
            assert!(!states(&text, &statement(q, k)), "false statement in the corpus: {}", statement(q, k));
        }
    }
    // Every fact kind is asked, and the right answer's position is spread over the choices.
    assert_eq!(kinds_seen.len(), 9, "{kinds_seen:?}");
    let first = questions.iter().filter(|q| q.item.answer == 0).count() as f64 / questions.len() as f64;
    assert!((0.15..0.40).contains(&first), "answer at index 0 in {first:.2} of the items");
    // Sums use the two-number phrasing, held out; countries are never said of a person.
    assert!(questions.iter().any(|q| matches!(q.fact, Fact::Sum { .. }) && q.lang == TaskLang::Zh));
    assert!(!text.contains("lives in a city in") && !text.contains("的一座城市里"));
}

#[test]
fn make_tasks_writes_the_same_jsonl_for_the_same_options() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (dir.path().join("a.jsonl"), dir.path().join("sub/b.jsonl"), dir.path().join("c.jsonl"));
    let s = make_tasks(&a, &options(3)).unwrap();
    make_tasks(&b, &options(3)).unwrap();
    make_tasks(&c, &options(4)).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_ne!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
    let items = read_choice_items(&a).unwrap();
    let names: Vec<&String> = s.tasks.keys().collect();
    assert_eq!(names, ["world-generalisation-en", "world-generalisation-zh", "world-knowledge-en", "world-knowledge-zh"]);
    assert_eq!(items.len(), s.tasks.values().sum::<usize>());
    assert!(s.tasks.values().all(|&n| n <= 60));
}
