//! Documents about the world, in English or Chinese: profiles, city articles, stories, question and
//! answer drills, parallel sentences, arithmetic and lists. Every template is written here.

use super::lexicon::*;
use super::world::{Person, World};
use escale_util::rng::SplitMix64;

/// Language of a document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    En,
    Zh,
    /// Parallel English/Chinese sentences.
    Bilingual,
}

/// One generated document (a paragraph with no blank line inside).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    pub text: String,
    pub lang: Lang,
    pub kind: &'static str,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum L {
    En,
    Zh,
}

fn cap(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// "A, B and C" / "A、B和C".
fn join_list(items: &[String], l: L) -> String {
    match items.len() {
        0 => String::new(),
        1 => items[0].clone(),
        n => match l {
            L::En => format!("{} and {}", items[..n - 1].join(", "), items[n - 1]),
            L::Zh => format!("{}和{}", items[..n - 1].join("、"), items[n - 1]),
        },
    }
}

fn join_sentences(s: &[String], l: L) -> String {
    match l {
        L::En => s.join(" "),
        L::Zh => s.concat(),
    }
}

/// "125,000".
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Population in Chinese: "12.5万", "8千".
fn population_zh(k: u32) -> String {
    if k < 10 {
        format!("{k}千")
    } else if k.is_multiple_of(10) {
        format!("{}万", k / 10)
    } else {
        format!("{}.{}万", k / 10, k % 10)
    }
}

/// Renders facts and documents about a world.
pub struct Renderer<'w> {
    pub w: &'w World,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PersonFact {
    Profession,
    Age,
    Home,
    Birth,
    Color,
    Food,
    Hobby,
    Pet,
    Friend,
    Sibling,
}

const PERSON_FACTS: [PersonFact; 10] = [
    PersonFact::Profession,
    PersonFact::Age,
    PersonFact::Home,
    PersonFact::Birth,
    PersonFact::Color,
    PersonFact::Food,
    PersonFact::Hobby,
    PersonFact::Pet,
    PersonFact::Friend,
    PersonFact::Sibling,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CityFact {
    Country,
    River,
    Population,
    Product,
    Weather,
    Founded,
    Mayor,
}

const CITY_FACTS: [CityFact; 7] = [
    CityFact::Country,
    CityFact::River,
    CityFact::Population,
    CityFact::Product,
    CityFact::Weather,
    CityFact::Founded,
    CityFact::Mayor,
];

impl<'w> Renderer<'w> {
    fn p(&self, id: usize) -> &'w Person {
        &self.w.people[id]
    }

    fn full(&self, id: usize, l: L) -> String {
        match l {
            L::En => self.w.person_en(id),
            L::Zh => self.w.person_zh(id),
        }
    }

    fn first(&self, id: usize, l: L) -> String {
        let p = self.p(id);
        match l {
            L::En => p.given.en(),
            L::Zh => p.given.zh(),
        }
    }

    fn city(&self, c: usize, l: L) -> String {
        match l {
            L::En => self.w.city_en(c),
            L::Zh => self.w.city_zh(c),
        }
    }

    fn country(&self, k: usize, l: L) -> String {
        let c = &self.w.countries[k];
        match l {
            L::En => c.name.en() + COUNTRY_SUFFIXES[c.suffix].0,
            L::Zh => c.name.zh() + COUNTRY_SUFFIXES[c.suffix].1,
        }
    }

    /// "the Belo River" / "贝洛河".
    fn river(&self, r: usize, l: L) -> String {
        let n = &self.w.rivers[r].name;
        match l {
            L::En => format!("the {} River", n.en()),
            L::Zh => format!("{}河", n.zh()),
        }
    }

    fn he(&self, id: usize, l: L) -> &'static str {
        match (l, self.p(id).female) {
            (L::En, true) => "she",
            (L::En, false) => "he",
            (L::Zh, true) => "她",
            (L::Zh, false) => "他",
        }
    }

    fn his(&self, id: usize, l: L) -> &'static str {
        match (l, self.p(id).female) {
            (L::En, true) => "her",
            (L::En, false) => "his",
            (L::Zh, true) => "她的",
            (L::Zh, false) => "他的",
        }
    }

    fn him(&self, id: usize, l: L) -> &'static str {
        match (l, self.p(id).female) {
            (L::En, true) => "her",
            (L::En, false) => "him",
            (L::Zh, true) => "她",
            (L::Zh, false) => "他",
        }
    }

    /// "they" / "他们" or "她们" for two people.
    fn they(&self, a: usize, b: usize, l: L) -> &'static str {
        match l {
            L::En => "they",
            L::Zh if self.p(a).female && self.p(b).female => "她们",
            L::Zh => "他们",
        }
    }

    /// How `sib` relates to `id`: ("older sister", "姐姐").
    fn sibling_word(&self, id: usize, sib: usize) -> (&'static str, &'static str) {
        let (p, s) = (self.p(id), self.p(sib));
        match (s.female, s.age > p.age) {
            (true, true) => ("older sister", "姐姐"),
            (true, false) => ("younger sister", "妹妹"),
            (false, true) => ("older brother", "哥哥"),
            (false, false) => ("younger brother", "弟弟"),
        }
    }

    /// One sentence stating a fact about person `id`; the subject is the full name or, when
    /// `pronoun`, he/she. `None` when the fact does not apply (no sibling).
    fn person_fact(&self, rng: &mut SplitMix64, id: usize, fact: PersonFact, pronoun: bool, l: L) -> Option<String> {
        let p = self.p(id);
        let s = if pronoun { cap(self.he(id, l)) } else { self.full(id, l) };
        let v = rng.below(2);
        let t = match l {
            L::En => {
                let poss = if pronoun { cap(self.his(id, l)) } else { format!("{}'s", self.full(id, l)) };
                match fact {
                    PersonFact::Profession => {
                        let prof = PROFESSIONS[p.profession].0;
                        if v == 0 {
                            format!("{s} is {} {prof}.", article(prof))
                        } else {
                            format!("{s} works as {} {prof}.", article(prof))
                        }
                    }
                    PersonFact::Age => format!("{s} is {} years old.", p.age),
                    PersonFact::Home => {
                        let c = self.city(p.home, l);
                        if v == 0 {
                            format!("{s} lives in {c}.")
                        } else {
                            format!("{poss} home is in {c}.")
                        }
                    }
                    PersonFact::Birth => format!("{s} was born in {}.", self.city(p.birthplace, l)),
                    PersonFact::Color => {
                        let c = COLORS[p.color].0;
                        if v == 0 {
                            format!("{poss} favorite color is {c}.")
                        } else {
                            format!("{s} likes the color {c} best.")
                        }
                    }
                    PersonFact::Food => {
                        let f = FOODS[p.food].0;
                        if v == 0 {
                            format!("{s} loves to eat {f}.")
                        } else {
                            format!("{poss} favorite food is {f}.")
                        }
                    }
                    PersonFact::Hobby => {
                        let h = HOBBIES[p.hobby].0;
                        if v == 0 {
                            format!("{s} enjoys {h}.")
                        } else {
                            format!("In {} free time, {} likes {h}.", self.his(id, l), if pronoun { self.he(id, l).to_string() } else { s.clone() })
                        }
                    }
                    PersonFact::Pet => match &p.pet {
                        Some(pet) => {
                            let a = ANIMALS[pet.animal].0;
                            if v == 0 {
                                format!("{s} has {} {a} named {}.", article(a), pet.name.en())
                            } else {
                                format!("{poss} {a} is called {}.", pet.name.en())
                            }
                        }
                        None => format!("{s} does not have a pet."),
                    },
                    PersonFact::Friend => format!("{poss} best friend is {}.", self.full(p.friend, l)),
                    PersonFact::Sibling => {
                        let sib = p.sibling?;
                        let word = self.sibling_word(id, sib).0;
                        if v == 0 {
                            format!("{} is {} {word}.", self.full(sib, l), self.his(id, l))
                        } else {
                            format!("{s} and {} are siblings.", self.full(sib, l))
                        }
                    }
                }
            }
            L::Zh => match fact {
                PersonFact::Profession => {
                    let prof = PROFESSIONS[p.profession].1;
                    if v == 0 {
                        format!("{s}是一名{prof}。")
                    } else {
                        format!("{s}的职业是{prof}。")
                    }
                }
                PersonFact::Age => format!("{s}今年{}岁。", p.age),
                PersonFact::Home => {
                    let c = self.city(p.home, l);
                    if v == 0 {
                        format!("{s}住在{c}。")
                    } else {
                        format!("{s}的家在{c}。")
                    }
                }
                PersonFact::Birth => {
                    let c = self.city(p.birthplace, l);
                    if v == 0 {
                        format!("{s}出生在{c}。")
                    } else {
                        format!("{s}是在{c}出生的。")
                    }
                }
                PersonFact::Color => {
                    let c = COLORS[p.color].1;
                    if v == 0 {
                        format!("{s}最喜欢的颜色是{c}。")
                    } else {
                        format!("{s}最喜欢{c}。")
                    }
                }
                PersonFact::Food => {
                    let f = FOODS[p.food].1;
                    if v == 0 {
                        format!("{s}最爱吃{f}。")
                    } else {
                        format!("{s}最喜欢的食物是{f}。")
                    }
                }
                PersonFact::Hobby => {
                    let h = HOBBIES[p.hobby].1;
                    if v == 0 {
                        format!("{s}空闲的时候喜欢{h}。")
                    } else {
                        format!("{s}的爱好是{h}。")
                    }
                }
                PersonFact::Pet => match &p.pet {
                    Some(pet) => {
                        let (_, a, m) = ANIMALS[pet.animal];
                        if v == 0 {
                            format!("{s}养了一{m}{a}，名叫{}。", pet.name.zh())
                        } else {
                            format!("{s}有一{m}{a}，它叫{}。", pet.name.zh())
                        }
                    }
                    None => format!("{s}没有养宠物。"),
                },
                PersonFact::Friend => format!("{s}最好的朋友是{}。", self.full(p.friend, l)),
                PersonFact::Sibling => {
                    let sib = p.sibling?;
                    let word = self.sibling_word(id, sib).1;
                    if v == 0 {
                        format!("{}是{s}的{word}。", self.full(sib, l))
                    } else {
                        format!("{s}和{}是兄弟姐妹。", self.full(sib, l))
                    }
                }
            },
        };
        Some(t)
    }

    fn city_fact(&self, rng: &mut SplitMix64, c: usize, fact: CityFact, l: L) -> String {
        let city = &self.w.cities[c];
        let n = self.city(c, l);
        let v = rng.below(2);
        match l {
            L::En => match fact {
                CityFact::Country => {
                    let k = self.country(city.country, l);
                    if v == 0 {
                        format!("{n} is a city in {k}.")
                    } else {
                        format!("{n} is in {k}.")
                    }
                }
                CityFact::River => {
                    let r = self.river(city.river, l);
                    if v == 0 {
                        format!("{n} lies on {r}.")
                    } else {
                        format!("{} flows through {n}.", cap(&r))
                    }
                }
                CityFact::Population => {
                    let pop = thousands(city.population_k as u64 * 1000);
                    if v == 0 {
                        format!("About {pop} people live in {n}.")
                    } else {
                        format!("{n} has about {pop} inhabitants.")
                    }
                }
                CityFact::Product => {
                    let pr = PRODUCTS[city.product].0;
                    if v == 0 {
                        format!("{n} is famous for its {pr}.")
                    } else {
                        format!("{n} is known for its {pr}.")
                    }
                }
                CityFact::Weather => {
                    let w = WEATHER[city.weather].0;
                    if v == 0 {
                        format!("The weather in {n} is often {w}.")
                    } else {
                        format!("It is often {w} in {n}.")
                    }
                }
                CityFact::Founded => format!("{n} was founded in {}.", city.founded),
                CityFact::Mayor => {
                    let m = self.full(city.mayor, l);
                    if v == 0 {
                        format!("The mayor of {n} is {m}.")
                    } else {
                        format!("{m} is the mayor of {n}.")
                    }
                }
            },
            L::Zh => match fact {
                CityFact::Country => {
                    let k = self.country(city.country, l);
                    if v == 0 {
                        format!("{n}是{k}的一座城市。")
                    } else {
                        format!("{n}位于{k}。")
                    }
                }
                CityFact::River => {
                    let r = self.river(city.river, l);
                    if v == 0 {
                        format!("{n}坐落在{r}边。")
                    } else {
                        format!("{r}流经{n}。")
                    }
                }
                CityFact::Population => {
                    let pop = population_zh(city.population_k);
                    if v == 0 {
                        format!("{n}大约有{pop}人。")
                    } else {
                        format!("大约{pop}人生活在{n}。")
                    }
                }
                CityFact::Product => {
                    let pr = PRODUCTS[city.product].1;
                    if v == 0 {
                        format!("{n}以{pr}闻名。")
                    } else {
                        format!("{n}的{pr}很有名。")
                    }
                }
                CityFact::Weather => format!("{n}常常{}。", WEATHER[city.weather].1),
                CityFact::Founded => format!("{n}建于{}年。", city.founded),
                CityFact::Mayor => {
                    let m = self.full(city.mayor, l);
                    if v == 0 {
                        format!("{n}的市长是{m}。")
                    } else {
                        format!("{m}是{n}的市长。")
                    }
                }
            },
        }
    }

    fn capital_fact(&self, k: usize, l: L) -> String {
        let c = self.city(self.w.countries[k].capital, l);
        let n = self.country(k, l);
        match l {
            L::En => format!("The capital of {n} is {c}."),
            L::Zh => format!("{n}的首都是{c}。"),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Documents.

    /// A short biography: profession first, then a random selection of other facts.
    fn profile(&self, rng: &mut SplitMix64, l: L) -> String {
        let id = self.w.pick_person(rng);
        let mut facts: Vec<PersonFact> = PERSON_FACTS[1..].to_vec();
        rng.shuffle(&mut facts);
        let n = 3 + rng.below(6);
        let mut out = vec![self.person_fact(rng, id, PersonFact::Profession, false, l).expect("always applies")];
        for &f in facts.iter().take(n) {
            let pronoun = rng.chance(0.6);
            if let Some(s) = self.person_fact(rng, id, f, pronoun, l) {
                out.push(s);
            }
        }
        join_sentences(&out, l)
    }

    /// An encyclopedia-style paragraph about a city.
    fn city_article(&self, rng: &mut SplitMix64, l: L) -> String {
        let c = self.w.pick_city(rng);
        let city = &self.w.cities[c];
        let mut facts: Vec<CityFact> = CITY_FACTS[1..].to_vec();
        rng.shuffle(&mut facts);
        let mut out = vec![self.city_fact(rng, c, CityFact::Country, l)];
        if self.w.countries[city.country].capital == c {
            let k = self.country(city.country, l);
            let n = self.city(c, l);
            out.push(match l {
                L::En => format!("It is the capital of {k}."),
                L::Zh => format!("{n}是{k}的首都。"),
            });
        }
        for &f in facts.iter().take(3 + rng.below(4)) {
            out.push(self.city_fact(rng, c, f, l));
        }
        if !city.residents.is_empty() && rng.chance(0.7) {
            let mut who: Vec<usize> = city.residents.clone();
            rng.shuffle(&mut who);
            who.truncate(2 + rng.below(4));
            who.sort_unstable();
            let names: Vec<String> = who.iter().map(|&p| self.full(p, l)).collect();
            let n = self.city(c, l);
            out.push(match l {
                L::En => format!("People who live in {n} include {}.", join_list(&names, l)),
                L::Zh => format!("住在{n}的人有{}等。", join_list(&names, l)),
            });
        }
        join_sentences(&out, l)
    }

    /// A little story: a visit to the best friend, consistent with both people's facts.
    fn story(&self, rng: &mut SplitMix64, l: L) -> String {
        let pid = self.w.pick_person(rng);
        let p = self.p(pid);
        let fid = p.friend;
        let f = self.p(fid);
        let (pf, ff) = (self.full(pid, l), self.full(fid, l));
        let (ps, fs) = (self.first(pid, l), self.first(fid, l));
        let home = self.city(p.home, l);
        let fhome = self.city(f.home, l);
        let travel = p.home != f.home;
        let mut out = Vec::new();
        let opening = rng.below(3);
        out.push(match (l, opening) {
            (L::En, 0) => format!("One {}, {pf} left {} home in {home}.", DAY_PARTS[rng.below(2)].0, self.his(pid, l)),
            (L::En, 1) => {
                let prof = PROFESSIONS[p.profession].0;
                format!("{pf} was a {}-year-old {prof} from {home}.", p.age)
            }
            (L::En, _) => format!(
                "It was a {} day in {home}, and {pf} wanted to see a friend.",
                WEATHER[self.w.cities[p.home].weather].0
            ),
            (L::Zh, 0) => format!("一天{}，{pf}从{home}的家里出发了。", DAY_PARTS[rng.below(2)].1),
            (L::Zh, 1) => format!("{pf}是{home}的一名{}，今年{}岁。", PROFESSIONS[p.profession].1, p.age),
            (L::Zh, _) => format!("那天{home}{}，{pf}想去看望朋友。", WEATHER[self.w.cities[p.home].weather].1),
        });
        out.push(match (l, travel) {
            (L::En, true) => format!("{ps} traveled from {home} to {fhome} to visit {} best friend, {ff}.", self.his(pid, l)),
            (L::En, false) => format!("{ps} walked across {home} to visit {} best friend, {ff}.", self.his(pid, l)),
            (L::Zh, true) => format!("{ps}从{home}来到{fhome}，看望{}最好的朋友{ff}。", self.he(pid, l)),
            (L::Zh, false) => format!("{ps}穿过{home}，去看望{}最好的朋友{ff}。", self.he(pid, l)),
        });
        let mut events: Vec<u8> = vec![0, 1, 2, 3, 4, 5, 6];
        rng.shuffle(&mut events);
        events.truncate(2 + rng.below(4));
        events.sort_unstable();
        for e in events {
            let s = match e {
                0 => Some(match l {
                    L::En => {
                        let prof = PROFESSIONS[f.profession].0;
                        format!("{fs} is {} {prof}, and {} had just come back from work.", article(prof), self.he(fid, l))
                    }
                    L::Zh => format!("{fs}是一名{}，刚刚下班回家。", PROFESSIONS[f.profession].1),
                }),
                1 => match (&f.pet, &p.pet) {
                    (Some(pet), _) => Some(match l {
                        L::En => format!("{fs}'s {}, {}, ran to the door to greet {ps}.", ANIMALS[pet.animal].0, pet.name.en()),
                        L::Zh => format!("{fs}的{}{}跑到门口迎接{ps}。", ANIMALS[pet.animal].1, pet.name.zh()),
                    }),
                    (None, Some(pet)) => Some(match l {
                        L::En => format!("{ps} had brought {} {}, {}, along.", self.his(pid, l), ANIMALS[pet.animal].0, pet.name.en()),
                        L::Zh => format!("{ps}带着{}{}{}一起来了。", self.his(pid, l), ANIMALS[pet.animal].1, pet.name.zh()),
                    }),
                    (None, None) => None,
                },
                2 => Some(match l {
                    L::En => {
                        let food = FOODS[p.food].0;
                        format!("They ate {food} together, because {ps}'s favorite food is {food}.")
                    }
                    L::Zh => {
                        let food = FOODS[p.food].1;
                        format!("{}一起吃了{food}，因为{ps}最爱吃{food}。", self.they(pid, fid, l))
                    }
                }),
                3 => Some(match l {
                    L::En => format!(
                        "After lunch, {fs} spent some time {}, as {} often does.",
                        HOBBIES[f.hobby].0,
                        self.he(fid, l)
                    ),
                    L::Zh => format!("午饭后，{fs}像往常一样去{}了。", HOBBIES[f.hobby].1),
                }),
                4 => {
                    let (g_en, g_zh, m) = GIFTS[rng.below(GIFTS.len())];
                    Some(match l {
                        L::En => {
                            let c = COLORS[f.color].0;
                            format!("Before leaving, {ps} gave {fs} {} {c} {g_en}, because {c} is {fs}'s favorite color.", article(c))
                        }
                        L::Zh => {
                            let c = COLORS[f.color].1;
                            format!("临走前，{ps}送给{fs}一{m}{c}的{g_zh}，因为{fs}最喜欢{c}。")
                        }
                    })
                }
                5 => p.sibling.map(|sib| {
                    let (w_en, w_zh) = self.sibling_word(pid, sib);
                    let sh = self.city(self.p(sib).home, l);
                    match l {
                        L::En => format!(
                            "{ps} also told {fs} about {} {w_en}, {}, who lives in {sh}.",
                            self.his(pid, l),
                            self.full(sib, l)
                        ),
                        L::Zh => format!("{ps}还跟{fs}聊起了{}{w_zh}{}，{}住在{sh}。", self.his(pid, l), self.full(sib, l), self.he(sib, l)),
                    }
                }),
                _ => travel.then(|| {
                    let pr = &PRODUCTS[self.w.cities[f.home].product];
                    match l {
                        L::En => format!("{fhome} is famous for its {}, so {ps} bought some to take home.", pr.0),
                        L::Zh => format!("{fhome}以{}闻名，所以{ps}买了一些带回家。", pr.1),
                    }
                }),
            };
            out.extend(s);
        }
        out.push(match (l, rng.below(2)) {
            (L::En, 0) => format!("In the evening, {ps} went back to {home}."),
            (L::En, _) => "It was a happy day for both of them.".to_string(),
            (L::Zh, 0) => format!("傍晚，{ps}回到了{home}。"),
            (L::Zh, _) => format!("这一天{}都很开心。", self.they(pid, fid, l)),
        });
        join_sentences(&out, l)
    }

    /// One question and its answer about a random entity.
    fn question(&self, rng: &mut SplitMix64, l: L) -> (String, String) {
        let r = rng.below(20);
        if r < 14 {
            let id = self.w.pick_person(rng);
            let p = self.p(id);
            let n = self.full(id, l);
            let fact = PERSON_FACTS[rng.below(PERSON_FACTS.len())];
            match (l, fact) {
                (L::En, PersonFact::Profession) => {
                    let prof = PROFESSIONS[p.profession].0;
                    (format!("What does {n} do for a living?"), format!("{n} is {} {prof}.", article(prof)))
                }
                (L::Zh, PersonFact::Profession) => (format!("{n}是做什么工作的？"), format!("{n}是一名{}。", PROFESSIONS[p.profession].1)),
                (L::En, PersonFact::Age) => (format!("How old is {n}?"), format!("{} years old.", p.age)),
                (L::Zh, PersonFact::Age) => (format!("{n}今年多大？"), format!("{}岁。", p.age)),
                (L::En, PersonFact::Home) => (format!("Where does {n} live?"), format!("In {}.", self.city(p.home, l))),
                (L::Zh, PersonFact::Home) => (format!("{n}住在哪里？"), format!("{}。", self.city(p.home, l))),
                (L::En, PersonFact::Birth) => (format!("Where was {n} born?"), format!("In {}.", self.city(p.birthplace, l))),
                (L::Zh, PersonFact::Birth) => (format!("{n}出生在哪里？"), format!("{}。", self.city(p.birthplace, l))),
                (L::En, PersonFact::Color) => (format!("What is {n}'s favorite color?"), format!("{}.", cap(COLORS[p.color].0))),
                (L::Zh, PersonFact::Color) => (format!("{n}最喜欢什么颜色？"), format!("{}。", COLORS[p.color].1)),
                (L::En, PersonFact::Food) => (format!("What does {n} love to eat?"), format!("{}.", cap(FOODS[p.food].0))),
                (L::Zh, PersonFact::Food) => (format!("{n}最爱吃什么？"), format!("{}。", FOODS[p.food].1)),
                (L::En, PersonFact::Hobby) => (format!("What does {n} enjoy doing?"), format!("{}.", cap(HOBBIES[p.hobby].0))),
                (L::Zh, PersonFact::Hobby) => (format!("{n}的爱好是什么？"), format!("{}。", HOBBIES[p.hobby].1)),
                (L::En, PersonFact::Pet) => (
                    format!("Does {n} have a pet?"),
                    match &p.pet {
                        Some(pet) => {
                            let a = ANIMALS[pet.animal].0;
                            format!("Yes, {} {a} named {}.", article(a), pet.name.en())
                        }
                        None => "No.".to_string(),
                    },
                ),
                (L::Zh, PersonFact::Pet) => (
                    format!("{n}养宠物吗？"),
                    match &p.pet {
                        Some(pet) => {
                            let (_, a, m) = ANIMALS[pet.animal];
                            format!("养了，是一{m}叫{}的{a}。", pet.name.zh())
                        }
                        None => "没有。".to_string(),
                    },
                ),
                (L::En, PersonFact::Friend) => (format!("Who is {n}'s best friend?"), format!("{}.", self.full(p.friend, l))),
                (L::Zh, PersonFact::Friend) => (format!("{n}最好的朋友是谁？"), format!("{}。", self.full(p.friend, l))),
                (_, PersonFact::Sibling) => match p.sibling {
                    Some(sib) => {
                        let (w_en, w_zh) = self.sibling_word(id, sib);
                        match l {
                            L::En => (
                                format!("Does {n} have a brother or a sister?"),
                                format!("Yes, {} {w_en}, {}.", self.his(id, l), self.full(sib, l)),
                            ),
                            L::Zh => (format!("{n}有兄弟姐妹吗？"), format!("有，{}是{}的{w_zh}。", self.full(sib, l), self.he(id, l))),
                        }
                    }
                    None => match l {
                        L::En => (format!("Does {n} have a brother or a sister?"), "No.".to_string()),
                        L::Zh => (format!("{n}有兄弟姐妹吗？"), "没有。".to_string()),
                    },
                },
            }
        } else if r < 19 {
            let c = self.w.pick_city(rng);
            let city = &self.w.cities[c];
            let n = self.city(c, l);
            match (l, CITY_FACTS[rng.below(CITY_FACTS.len())]) {
                (L::En, CityFact::Country) => (format!("Which country is {n} in?"), format!("{}.", self.country(city.country, l))),
                (L::Zh, CityFact::Country) => (format!("{n}在哪个国家？"), format!("{}。", self.country(city.country, l))),
                (L::En, CityFact::River) => (format!("Which river flows through {n}?"), format!("{}.", cap(&self.river(city.river, l)))),
                (L::Zh, CityFact::River) => (format!("哪条河流经{n}？"), format!("{}。", self.river(city.river, l))),
                (L::En, CityFact::Population) => {
                    (format!("How many people live in {n}?"), format!("About {}.", thousands(city.population_k as u64 * 1000)))
                }
                (L::Zh, CityFact::Population) => (format!("{n}有多少人口？"), format!("大约{}。", population_zh(city.population_k))),
                (L::En, CityFact::Product) => (format!("What is {n} famous for?"), format!("Its {}.", PRODUCTS[city.product].0)),
                (L::Zh, CityFact::Product) => (format!("{n}以什么闻名？"), format!("{}。", PRODUCTS[city.product].1)),
                (L::En, CityFact::Weather) => (format!("What is the weather like in {n}?"), format!("It is often {}.", WEATHER[city.weather].0)),
                (L::Zh, CityFact::Weather) => (format!("{n}的天气怎么样？"), format!("常常{}。", WEATHER[city.weather].1)),
                (L::En, CityFact::Founded) => (format!("When was {n} founded?"), format!("In {}.", city.founded)),
                (L::Zh, CityFact::Founded) => (format!("{n}建于哪一年？"), format!("{}年。", city.founded)),
                (L::En, CityFact::Mayor) => (format!("Who is the mayor of {n}?"), format!("{}.", self.full(city.mayor, l))),
                (L::Zh, CityFact::Mayor) => (format!("{n}的市长是谁？"), format!("{}。", self.full(city.mayor, l))),
            }
        } else {
            let k = rng.below(self.w.countries.len());
            let n = self.country(k, l);
            let c = self.city(self.w.countries[k].capital, l);
            match l {
                L::En => (format!("What is the capital of {n}?"), format!("{c}.")),
                L::Zh => (format!("{n}的首都是哪座城市？"), format!("{c}。")),
            }
        }
    }

    fn qa(&self, rng: &mut SplitMix64, l: L) -> String {
        let n = 3 + rng.below(5);
        let lines: Vec<String> = (0..n)
            .map(|_| {
                let (q, a) = self.question(rng, l);
                match l {
                    L::En => format!("Q: {q}\nA: {a}"),
                    L::Zh => format!("问：{q}\n答：{a}"),
                }
            })
            .collect();
        lines.join("\n")
    }

    /// A random fact sentence in both languages (same fact, same template variant when possible).
    fn fact_pair(&self, rng: &mut SplitMix64) -> (String, String) {
        let seed = rng.next_u64();
        if rng.chance(0.7) {
            let id = self.w.pick_person(rng);
            let mut fact = PERSON_FACTS[rng.below(PERSON_FACTS.len())];
            if self.p(id).sibling.is_none() && fact == PersonFact::Sibling {
                fact = PersonFact::Home;
            }
            let en = self.person_fact(&mut SplitMix64::new(seed), id, fact, false, L::En).expect("applies");
            let zh = self.person_fact(&mut SplitMix64::new(seed), id, fact, false, L::Zh).expect("applies");
            (en, zh)
        } else if rng.chance(0.9) {
            let c = self.w.pick_city(rng);
            let fact = CITY_FACTS[rng.below(CITY_FACTS.len())];
            (self.city_fact(&mut SplitMix64::new(seed), c, fact, L::En), self.city_fact(&mut SplitMix64::new(seed), c, fact, L::Zh))
        } else {
            let k = rng.below(self.w.countries.len());
            (self.capital_fact(k, L::En), self.capital_fact(k, L::Zh))
        }
    }

    /// Parallel sentences: "English: ...\n中文：...".
    fn translation(&self, rng: &mut SplitMix64) -> String {
        let n = 2 + rng.below(4);
        let lines: Vec<String> = (0..n)
            .map(|_| {
                let (en, zh) = self.fact_pair(rng);
                if rng.chance(0.5) {
                    format!("English: {en}\n中文：{zh}")
                } else {
                    format!("中文：{zh}\nEnglish: {en}")
                }
            })
            .collect();
        lines.join("\n")
    }

    fn arithmetic(&self, rng: &mut SplitMix64, l: L) -> String {
        match rng.below(3) {
            0 => {
                // Equations, language-neutral apart from the heading.
                let n = 4 + rng.below(6);
                let mut lines = vec![match l {
                    L::En => "Arithmetic practice:".to_string(),
                    L::Zh => "算术练习：".to_string(),
                }];
                for _ in 0..n {
                    lines.push(equation(rng));
                }
                lines.join("\n")
            }
            1 => {
                let n = 3 + rng.below(4);
                let s: Vec<String> = (0..n).map(|_| verbal_equation(rng, l)).collect();
                join_sentences(&s, l)
            }
            _ => {
                let n = 1 + rng.below(3);
                let s: Vec<String> = (0..n).map(|_| self.word_problem(rng, l)).collect();
                join_sentences(&s, l)
            }
        }
    }

    fn word_problem(&self, rng: &mut SplitMix64, l: L) -> String {
        let pid = self.w.pick_person(rng);
        let p = self.p(pid);
        let fid = p.friend;
        let (pf, ps, ff) = (self.full(pid, l), self.first(pid, l), self.full(fid, l));
        let (sing, plur, noun, m) = COUNTABLES[rng.below(COUNTABLES.len())];
        let things = |k: i64| if k == 1 { format!("1 {sing}") } else { format!("{k} {plur}") };
        match rng.below(5) {
            0 => {
                let (a, b) = (rng.range(1, 20), rng.range(1, 20));
                match l {
                    L::En => format!(
                        "{pf} has {}. {ff} gives {} {b} more. How many {plur} does {ps} have now? {ps} has {}.",
                        things(a),
                        self.him(pid, l),
                        things(a + b)
                    ),
                    L::Zh => format!(
                        "{pf}有{a}{m}{noun}。{ff}又给了{}{b}{m}。{ps}现在有几{m}{noun}？{ps}现在有{}{m}{noun}。",
                        self.him(pid, l),
                        a + b
                    ),
                }
            }
            1 => {
                let a = rng.range(2, 30);
                let b = rng.range(1, a);
                match l {
                    L::En => format!("{pf} had {} and gave {b} to {ff}. Now {ps} has {} left.", things(a), things(a - b)),
                    L::Zh => format!("{pf}有{a}{m}{noun}，送给{ff}{b}{m}。现在{ps}还剩{}{m}{noun}。", a - b),
                }
            }
            2 => {
                let (a, b) = (rng.range(2, 9), rng.range(2, 9));
                match l {
                    L::En => format!(
                        "{pf} has {a} boxes with {} in each box, so {ps} has {} in total.",
                        things(b),
                        things(a * b)
                    ),
                    L::Zh => format!("{pf}有{a}个盒子，每个盒子里有{b}{m}{noun}，所以{ps}一共有{}{m}{noun}。", a * b),
                }
            }
            3 => {
                let y = rng.range(1, 20);
                let age = p.age as i64;
                match l {
                    L::En => format!("{pf} is {age} years old. In {y} years, {} will be {}.", self.he(pid, l), age + y),
                    L::Zh => format!("{pf}今年{age}岁，{y}年后{}就{}岁了。", self.he(pid, l), age + y),
                }
            }
            _ => {
                let f = self.p(fid);
                let fs = self.first(fid, l);
                let (pa, fa) = (p.age, f.age);
                match l {
                    L::En => {
                        let tail = match pa.cmp(&fa) {
                            std::cmp::Ordering::Greater => format!("{ps} is older, by {} years.", pa - fa),
                            std::cmp::Ordering::Less => format!("{fs} is older, by {} years.", fa - pa),
                            std::cmp::Ordering::Equal => "They are the same age.".to_string(),
                        };
                        format!("{pf} is {pa} and {ff} is {fa}. {tail}")
                    }
                    L::Zh => {
                        let tail = match pa.cmp(&fa) {
                            std::cmp::Ordering::Greater => format!("{ps}比{fs}大{}岁。", pa - fa),
                            std::cmp::Ordering::Less => format!("{fs}比{ps}大{}岁。", fa - pa),
                            std::cmp::Ordering::Equal => format!("{}一样大。", self.they(pid, fid, l)),
                        };
                        format!("{pf}今年{pa}岁，{ff}今年{fa}岁。{tail}")
                    }
                }
            }
        }
    }

    fn lists(&self, rng: &mut SplitMix64, l: L) -> String {
        let sep = |v: &[String]| match l {
            L::En => v.join(", "),
            L::Zh => v.join("、"),
        };
        match rng.below(7) {
            0 => {
                let (s, k, n) = (rng.range(0, 50), rng.range(1, 10), rng.range(5, 10));
                let v: Vec<String> = (0..n).map(|i| (s + i * k).to_string()).collect();
                match l {
                    L::En => format!("Count by {k} starting from {s}: {}.", sep(&v)),
                    L::Zh => format!("从{s}开始，每次加{k}：{}。", sep(&v)),
                }
            }
            1 => {
                let n = rng.range(5, 20);
                let v: Vec<String> = (1..=n).rev().map(|i| i.to_string()).collect();
                match l {
                    L::En => format!("Counting down from {n}: {}.", sep(&v)),
                    L::Zh => format!("从{n}倒数：{}。", sep(&v)),
                }
            }
            2 => {
                let k = rng.range(4, 8);
                let mut nums: Vec<i64> = (0..k).map(|_| rng.range(0, 99)).collect();
                let shown: Vec<String> = nums.iter().map(|x| x.to_string()).collect();
                nums.sort_unstable();
                let sorted: Vec<String> = nums.iter().map(|x| x.to_string()).collect();
                let (lo, hi) = (nums[0], nums[nums.len() - 1]);
                match l {
                    L::En => format!(
                        "Numbers: {}. From smallest to largest: {}. The smallest is {lo} and the largest is {hi}.",
                        sep(&shown),
                        sep(&sorted)
                    ),
                    L::Zh => format!("数字：{}。从小到大排列：{}。最小的是{lo}，最大的是{hi}。", sep(&shown), sep(&sorted)),
                }
            }
            3 => {
                let c = self.w.pick_city(rng);
                let n = self.city(c, l);
                let res = &self.w.cities[c].residents;
                if res.is_empty() {
                    return self.city_fact(rng, c, CityFact::Country, l);
                }
                let names: Vec<String> = res.iter().take(12).map(|&p| self.full(p, l)).collect();
                match l {
                    L::En => format!("People who live in {n}: {}.", sep(&names)),
                    L::Zh => format!("住在{n}的人：{}。", sep(&names)),
                }
            }
            4 => {
                let start = rng.below(7);
                let i = rng.below(7);
                let days: Vec<String> = (0..7)
                    .map(|k| {
                        let d = WEEKDAYS[(start + k) % 7];
                        match l {
                            L::En => d.0.to_string(),
                            L::Zh => d.1.to_string(),
                        }
                    })
                    .collect();
                let (d, next) = (WEEKDAYS[i], WEEKDAYS[(i + 1) % 7]);
                match l {
                    L::En => format!("Seven days starting from {}: {}. After {} comes {}.", days[0], sep(&days), d.0, next.0),
                    L::Zh => format!("从{}开始的七天：{}。{}之后是{}。", days[0], sep(&days), d.1, next.1),
                }
            }
            5 => {
                let i = rng.below(12);
                let k = rng.range(3, 6) as usize;
                let ms: Vec<String> = (0..k)
                    .map(|j| {
                        let m = MONTHS[(i + j) % 12];
                        match l {
                            L::En => m.0.to_string(),
                            L::Zh => m.1.to_string(),
                        }
                    })
                    .collect();
                match l {
                    L::En => format!("Months in order: {}. {} has {} after it.", sep(&ms), ms[0], ms[1]),
                    L::Zh => format!("按顺序的月份：{}。{}之后是{}。", sep(&ms), ms[0], ms[1]),
                }
            }
            _ => {
                let k = rng.range(3, 6);
                let s: Vec<String> = (0..k)
                    .map(|_| {
                        let n = rng.below(21);
                        match l {
                            L::En => format!("{n} is written \"{}\".", NUMBER_WORDS_EN[n]),
                            L::Zh => format!("{n}写作“{}”。", NUMBER_WORDS_ZH[n]),
                        }
                    })
                    .collect();
                join_sentences(&s, l)
            }
        }
    }

    /// The next document: its kind by fixed weights, its language English or Chinese with
    /// probability `1 - zh_fraction` / `zh_fraction` (parallel-sentence documents are bilingual).
    pub fn document(&self, rng: &mut SplitMix64, zh_fraction: f64) -> Document {
        let kind = rng.below(100);
        let l = if rng.chance(zh_fraction) { L::Zh } else { L::En };
        let lang = match l {
            L::En => Lang::En,
            L::Zh => Lang::Zh,
        };
        let (text, kind, lang) = match kind {
            0..=17 => (self.profile(rng, l), "profile", lang),
            18..=39 => (self.story(rng, l), "story", lang),
            40..=53 => (self.qa(rng, l), "qa", lang),
            54..=63 => (self.city_article(rng, l), "city", lang),
            64..=71 => (self.translation(rng), "translation", Lang::Bilingual),
            72..=85 => (self.arithmetic(rng, l), "arithmetic", lang),
            _ => (self.lists(rng, l), "list", lang),
        };
        Document { text, lang, kind }
    }
}

/// "23 + 45 = 68" and friends, with small numbers.
fn equation(rng: &mut SplitMix64) -> String {
    match rng.below(4) {
        0 => {
            let (a, b) = (rng.range(0, 99), rng.range(0, 99));
            format!("{a} + {b} = {}", a + b)
        }
        1 => {
            let a = rng.range(0, 99);
            let b = rng.range(0, a);
            format!("{a} - {b} = {}", a - b)
        }
        2 => {
            let (a, b) = (rng.range(1, 12), rng.range(1, 12));
            format!("{a} × {b} = {}", a * b)
        }
        _ => {
            let (a, b) = (rng.range(1, 12), rng.range(1, 12));
            format!("{} ÷ {b} = {a}", a * b)
        }
    }
}

fn verbal_equation(rng: &mut SplitMix64, l: L) -> String {
    match (rng.below(4), l) {
        (0, _) => {
            let (a, b) = (rng.range(0, 50), rng.range(0, 50));
            match l {
                L::En => format!("{a} plus {b} equals {}.", a + b),
                L::Zh => format!("{a}加{b}等于{}。", a + b),
            }
        }
        (1, _) => {
            let a = rng.range(0, 50);
            let b = rng.range(0, a);
            match l {
                L::En => format!("{a} minus {b} equals {}.", a - b),
                L::Zh => format!("{a}减{b}等于{}。", a - b),
            }
        }
        (2, _) => {
            let (a, b) = (rng.range(1, 10), rng.range(1, 10));
            match l {
                L::En => format!("{a} times {b} is {}.", a * b),
                L::Zh => format!("{a}乘以{b}等于{}。", a * b),
            }
        }
        _ => {
            let (a, b) = (rng.range(1, 10), rng.range(1, 10));
            match l {
                L::En => format!("{} divided by {b} is {a}.", a * b),
                L::Zh => format!("{}除以{b}等于{a}。", a * b),
            }
        }
    }
}
