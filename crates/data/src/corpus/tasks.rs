//! Built-in multiple-choice tasks about the corpus's world (`escale make-tasks`), in English and
//! Chinese, in two kinds:
//!
//! * **knowledge**: a fact the training text states word for word ("Belan Kotor was born in" ->
//!   " Kotoport."): only facts whose sentence occurs in the corpus made with the same options are
//!   asked, so a model trained on it has seen every answer.
//! * **generalisation**: combinations the text never states: the country a person lives in (the
//!   corpus says where they live and, elsewhere, which country that city is in) and sums of two
//!   numbers whose sentence is absent from the corpus.
//!
//! Distractors are values of the same kind from the same world (other cities, ages other people
//! have, other professions, other countries, nearby numbers with as many digits), each false for
//! the subject; the right answer's position is drawn at random. Four tasks, `world-knowledge-en`,
//! `world-knowledge-zh`, `world-generalisation-en` and `world-generalisation-zh`, with up to
//! `per_task` items each (fewer when a small corpus states fewer facts). The same options give the
//! same file.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::lexicon::{COUNTRY_SUFFIXES, PROFESSIONS};
use super::{corpus_text, CorpusOptions, World};
use crate::choice::{write_choice_items, ChoiceItem};
use crate::error::{DataError, Result};
use escale_util::rng::SplitMix64;

/// Options of [`make_tasks`]: the corpus the tasks are about, and how many items to draw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskOptions {
    /// Must equal the options the training corpus was made with (its `corpus.info` holds them).
    pub corpus: CorpusOptions,
    /// Items per task (at most).
    pub per_task: usize,
    /// Seed of the question draw (which facts, distractors and answer positions).
    pub seed: u64,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions { corpus: CorpusOptions::default(), per_task: 200, seed: 1 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuestionKind {
    Knowledge,
    Generalisation,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskLang {
    En,
    Zh,
}

/// What a question asks, with the ids it is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fact {
    Age { person: usize },
    Profession { person: usize },
    Birthplace { person: usize },
    Home { person: usize },
    Friend { person: usize },
    Capital { country: usize },
    CityCountry { city: usize },
    /// Generalisation: the country of the person's home city.
    HomeCountry { person: usize },
    /// Generalisation: `a + b`.
    Sum { a: i64, b: i64 },
}

/// One generated question: the JSONL item plus what it is about (for tests and reports).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorldQuestion {
    pub item: ChoiceItem,
    pub kind: QuestionKind,
    pub lang: TaskLang,
    pub fact: Fact,
    /// The value each choice names ("Kotoport", "34", "teacher"), in choice order.
    pub values: Vec<String>,
}

/// What [`make_tasks`] wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TasksSummary {
    pub path: std::path::PathBuf,
    pub options: TaskOptions,
    /// Items per task name.
    pub tasks: BTreeMap<String, usize>,
}

/// The task name of a kind and language ("world-knowledge-en").
pub fn task_name(kind: QuestionKind, lang: TaskLang) -> String {
    let k = match kind {
        QuestionKind::Knowledge => "knowledge",
        QuestionKind::Generalisation => "generalisation",
    };
    let l = match lang {
        TaskLang::En => "en",
        TaskLang::Zh => "zh",
    };
    format!("world-{k}-{l}")
}

/// A country's name: "Kotoria" / "科陶利亚".
pub fn country_name(w: &World, k: usize, lang: TaskLang) -> String {
    let c = &w.countries[k];
    match lang {
        TaskLang::En => c.name.en() + COUNTRY_SUFFIXES[c.suffix].0,
        TaskLang::Zh => c.name.zh() + COUNTRY_SUFFIXES[c.suffix].1,
    }
}

fn person(w: &World, id: usize, lang: TaskLang) -> String {
    match lang {
        TaskLang::En => w.person_en(id),
        TaskLang::Zh => w.person_zh(id),
    }
}

fn city(w: &World, c: usize, lang: TaskLang) -> String {
    match lang {
        TaskLang::En => w.city_en(c),
        TaskLang::Zh => w.city_zh(c),
    }
}

fn profession(p: usize, lang: TaskLang) -> String {
    match lang {
        TaskLang::En => PROFESSIONS[p].0.to_string(),
        TaskLang::Zh => PROFESSIONS[p].1.to_string(),
    }
}

fn with_article(word: &str) -> String {
    let a = if word.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    format!("{a} {word}")
}

/// The ways the corpus states a fact, as (context, continuation template with `{}` for the value);
/// the first one found in the corpus is asked.
fn phrasings(w: &World, fact: Fact, lang: TaskLang) -> Vec<(String, &'static str)> {
    use TaskLang::{En, Zh};
    match (fact, lang) {
        (Fact::Age { person: p }, En) => vec![(format!("{} is", person(w, p, En)), " {} years old.")],
        (Fact::Age { person: p }, Zh) => vec![(format!("{}今年", person(w, p, Zh)), "{}岁。")],
        (Fact::Profession { person: p }, En) => {
            let n = person(w, p, En);
            vec![(format!("{n} works as"), " {}."), (format!("{n} is"), " {}.")]
        }
        (Fact::Profession { person: p }, Zh) => {
            let n = person(w, p, Zh);
            vec![(format!("{n}是一名"), "{}。"), (format!("{n}的职业是"), "{}。")]
        }
        (Fact::Birthplace { person: p }, En) => vec![(format!("{} was born in", person(w, p, En)), " {}.")],
        (Fact::Birthplace { person: p }, Zh) => {
            let n = person(w, p, Zh);
            vec![(format!("{n}出生在"), "{}。"), (format!("{n}是在"), "{}出生的。")]
        }
        (Fact::Home { person: p }, En) => {
            let n = person(w, p, En);
            vec![(format!("{n} lives in"), " {}."), (format!("{n}'s home is in"), " {}.")]
        }
        (Fact::Home { person: p }, Zh) => {
            let n = person(w, p, Zh);
            vec![(format!("{n}住在"), "{}。"), (format!("{n}的家在"), "{}。")]
        }
        (Fact::Friend { person: p }, En) => vec![(format!("{}'s best friend is", person(w, p, En)), " {}.")],
        (Fact::Friend { person: p }, Zh) => vec![(format!("{}最好的朋友是", person(w, p, Zh)), "{}。")],
        (Fact::Capital { country }, En) => vec![(format!("The capital of {} is", country_name(w, country, En)), " {}.")],
        (Fact::Capital { country }, Zh) => vec![(format!("{}的首都是", country_name(w, country, Zh)), "{}。")],
        (Fact::CityCountry { city: c }, En) => {
            let n = city(w, c, En);
            vec![(format!("{n} is a city in"), " {}."), (format!("{n} is in"), " {}.")]
        }
        (Fact::CityCountry { city: c }, Zh) => {
            let n = city(w, c, Zh);
            vec![(format!("{n}是"), "{}的一座城市。"), (format!("{n}位于"), "{}。")]
        }
        (Fact::HomeCountry { person: p }, En) => vec![(format!("{} lives in a city in", person(w, p, En)), " {}.")],
        (Fact::HomeCountry { person: p }, Zh) => vec![(format!("{}住在", person(w, p, Zh)), "{}的一座城市里。")],
        (Fact::Sum { a, b }, En) => vec![(format!("{a} plus {b} equals"), " {}.")],
        (Fact::Sum { a, b }, Zh) => vec![(format!("{a}加{b}等于"), "{}。")],
    }
}

/// The right value of a fact and the pool its distractors come from (may contain the right value
/// and repeats: they are skipped).
fn values(w: &World, fact: Fact, lang: TaskLang, rng: &mut SplitMix64) -> (String, Vec<String>) {
    let people = w.people.len();
    let cities = |rng: &mut SplitMix64| -> Vec<String> { (0..12).map(|_| city(w, rng.below(w.cities.len()), lang)).collect() };
    let countries: Vec<String> = (0..w.countries.len()).map(|k| country_name(w, k, lang)).collect();
    match fact {
        Fact::Age { person: p } => {
            (w.people[p].age.to_string(), (0..40).map(|_| w.people[rng.below(people)].age.to_string()).collect())
        }
        Fact::Profession { person: p } => {
            let show = |k: usize| match lang {
                TaskLang::En => with_article(PROFESSIONS[k].0),
                TaskLang::Zh => profession(k, lang),
            };
            (show(w.people[p].profession), (0..12).map(|_| show(rng.below(PROFESSIONS.len()))).collect())
        }
        Fact::Birthplace { person: p } => (city(w, w.people[p].birthplace, lang), cities(rng)),
        Fact::Home { person: p } => (city(w, w.people[p].home, lang), cities(rng)),
        Fact::Friend { person: p } => {
            let pool = (0..12).map(|_| rng.below(people)).filter(|&q| q != p).map(|q| person(w, q, lang)).collect();
            (person(w, w.people[p].friend, lang), pool)
        }
        Fact::Capital { country } => {
            // Other cities of the same country first: the plausible wrong answers.
            let mut pool: Vec<String> =
                (0..w.cities.len()).filter(|&c| w.cities[c].country == country).map(|c| city(w, c, lang)).collect();
            rng.shuffle(&mut pool);
            pool.extend(cities(rng));
            (city(w, w.countries[country].capital, lang), pool)
        }
        Fact::CityCountry { city: c } => (country_name(w, w.cities[c].country, lang), countries),
        Fact::HomeCountry { person: p } => (country_name(w, w.cities[w.people[p].home].country, lang), countries),
        Fact::Sum { a, b } => {
            let c = a + b;
            let digits = |x: i64| x.to_string().len();
            let pool = [1, -1, 10, -10, 2, -2, 11, -11, 9, -9, 3, -3]
                .iter()
                .map(|d| c + d)
                .filter(|&x| x >= 0 && digits(x) == digits(c))
                .map(|x| x.to_string())
                .collect();
            (c.to_string(), pool)
        }
    }
}

/// Whether `statement` occurs in `text` starting at a word boundary (so "娜·贝洛今年" does not match
/// inside "卡娜·贝洛今年").
fn states(text: &str, statement: &str) -> bool {
    text.match_indices(statement).any(|(at, _)| {
        text[..at].chars().next_back().is_none_or(|c| c.is_whitespace() || c.is_ascii_punctuation() || "。：，？！、；“”（）".contains(c))
    })
}

/// Builds the question for `fact` with up to `choices` choices, or `None` if the world has no
/// distractor for it.
fn question(w: &World, fact: Fact, kind: QuestionKind, lang: TaskLang, context: String, template: &str, rng: &mut SplitMix64) -> Option<WorldQuestion> {
    let (right, pool) = values(w, fact, lang, rng);
    let mut vals = vec![right.clone()];
    for v in pool {
        if vals.len() == 4 {
            break;
        }
        if !vals.contains(&v) {
            vals.push(v);
        }
    }
    if vals.len() < 2 {
        return None;
    }
    let answer = rng.below(vals.len());
    vals.swap(0, answer);
    Some(WorldQuestion {
        item: ChoiceItem {
            task: Some(task_name(kind, lang)),
            context,
            choices: vals.iter().map(|v| template.replacen("{}", v, 1)).collect(),
            answer,
        },
        kind,
        lang,
        fact,
        values: vals,
    })
}

/// Knowledge questions the corpus `text` answers: drawn round-robin over the fact kinds, each kind
/// over its subjects in a seeded order, keeping facts the text states in one of their phrasings.
fn knowledge(w: &World, text: &str, lang: TaskLang, per_task: usize, rng: &mut SplitMix64) -> Vec<WorldQuestion> {
    let mut shuffled = |n: usize| {
        let mut v: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut v);
        v
    };
    let (people, cities, countries) = (w.people.len(), w.cities.len(), w.countries.len());
    let mut kinds: Vec<Box<dyn Iterator<Item = Fact>>> = vec![
        Box::new(shuffled(people).into_iter().map(|person| Fact::Age { person })),
        Box::new(shuffled(people).into_iter().map(|person| Fact::Profession { person })),
        Box::new(shuffled(people).into_iter().map(|person| Fact::Birthplace { person })),
        Box::new(shuffled(people).into_iter().map(|person| Fact::Home { person })),
        Box::new(shuffled(people).into_iter().map(|person| Fact::Friend { person })),
        Box::new(shuffled(countries).into_iter().map(|country| Fact::Capital { country })),
        Box::new(shuffled(cities).into_iter().map(|city| Fact::CityCountry { city })),
    ];
    let mut out = Vec::new();
    let mut live = vec![true; kinds.len()];
    while out.len() < per_task && live.iter().any(|&l| l) {
        for (k, facts) in kinds.iter_mut().enumerate() {
            if out.len() == per_task || !live[k] {
                continue;
            }
            // The next fact of this kind that the text states.
            let found = facts.by_ref().find_map(|fact| {
                let (right, _) = values(w, fact, lang, &mut SplitMix64::new(0));
                phrasings(w, fact, lang)
                    .into_iter()
                    .find(|(ctx, tpl)| states(text, &format!("{ctx}{}", tpl.replacen("{}", &right, 1))))
                    .map(|(ctx, tpl)| (fact, ctx, tpl))
            });
            match found {
                Some((fact, ctx, tpl)) => out.extend(question(w, fact, QuestionKind::Knowledge, lang, ctx, tpl, rng)),
                None => live[k] = false,
            }
        }
    }
    out
}

/// Generalisation questions: alternately a person's home country and a sum absent from `text`.
fn generalisation(w: &World, text: &str, lang: TaskLang, per_task: usize, rng: &mut SplitMix64) -> Vec<WorldQuestion> {
    let mut order: Vec<usize> = (0..w.people.len()).collect();
    rng.shuffle(&mut order);
    let mut people = order.into_iter();
    let mut out = Vec::new();
    let mut tries = 0;
    while out.len() < per_task && tries < per_task * 50 {
        tries += 1;
        let fact = if out.len() % 2 == 0 {
            match people.next() {
                Some(person) => Fact::HomeCountry { person },
                None => continue,
            }
        } else {
            Fact::Sum { a: rng.range(0, 49), b: rng.range(0, 49) }
        };
        let (right, _) = values(w, fact, lang, &mut SplitMix64::new(0));
        let (ctx, tpl) = phrasings(w, fact, lang).swap_remove(0);
        if text.contains(&format!("{ctx}{}", tpl.replacen("{}", &right, 1))) {
            continue; // stated somewhere: not held out
        }
        out.extend(question(w, fact, QuestionKind::Generalisation, lang, ctx, tpl, rng));
    }
    out
}

/// All four tasks' questions for `options` (the corpus is generated in memory to check which facts
/// it states). Order: knowledge en, knowledge zh, generalisation en, generalisation zh.
pub fn world_questions(options: &TaskOptions) -> Result<Vec<WorldQuestion>> {
    if options.per_task == 0 {
        return Err(DataError::Invalid("items per task must be at least 1".into()));
    }
    let (text, _) = corpus_text(&options.corpus)?;
    let people = options.corpus.people.unwrap_or_else(|| super::world::default_people(options.corpus.size_bytes));
    let world = World::generate(options.corpus.seed, people);
    let mut rng = SplitMix64::derive(options.seed, 0x5441_534B); // "TASK"
    let mut out = Vec::new();
    for lang in [TaskLang::En, TaskLang::Zh] {
        out.extend(knowledge(&world, &text, lang, options.per_task, &mut rng));
    }
    for lang in [TaskLang::En, TaskLang::Zh] {
        out.extend(generalisation(&world, &text, lang, options.per_task, &mut rng));
    }
    Ok(out)
}

/// Writes the tasks to `path` (JSONL, atomically) and returns how many items each task got.
pub fn make_tasks(path: &Path, options: &TaskOptions) -> Result<TasksSummary> {
    let questions = world_questions(options)?;
    let items: Vec<ChoiceItem> = questions.into_iter().map(|q| q.item).collect();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
    }
    write_choice_items(path, &items)?;
    let mut tasks = BTreeMap::new();
    for item in &items {
        *tasks.entry(item.task_or("tasks").to_string()).or_insert(0) += 1;
    }
    Ok(TasksSummary { path: path.to_path_buf(), options: options.clone(), tasks })
}
