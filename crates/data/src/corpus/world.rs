//! The seeded world the corpus talks about: people, cities, countries and rivers, with attributes
//! and relations. Everything is drawn from [`SplitMix64`] with integer or exactly-rounded float
//! arithmetic only (no `ln`/`powf`), so a seed gives the same world on every platform.

use std::collections::HashSet;

use super::lexicon::*;
use escale_util::rng::SplitMix64;

/// A name as syllable indices into `OPEN_SYLLABLES ++ CLOSED_SYLLABLES`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Name(pub Vec<u16>);

fn syllable(i: u16) -> (&'static str, &'static str) {
    let i = i as usize;
    if i < OPEN_SYLLABLES.len() {
        OPEN_SYLLABLES[i]
    } else {
        CLOSED_SYLLABLES[i - OPEN_SYLLABLES.len()]
    }
}

impl Name {
    fn random(rng: &mut SplitMix64, allow_closed_end: bool) -> Name {
        let first = rng.below(OPEN_SYLLABLES.len()) as u16;
        let n_end = if allow_closed_end { OPEN_SYLLABLES.len() + CLOSED_SYLLABLES.len() } else { OPEN_SYLLABLES.len() };
        // No bare vowel after the first syllable ("Kaa").
        let second = rng.below(n_end - 1) as u16 + 1;
        Name(vec![first, second])
    }

    /// "Belan".
    pub fn en(&self) -> String {
        let mut s: String = self.0.iter().map(|&i| syllable(i).0).collect();
        if let Some(f) = s.get(0..1) {
            let up = f.to_ascii_uppercase();
            s.replace_range(0..1, &up);
        }
        s
    }

    /// "贝兰".
    pub fn zh(&self) -> String {
        self.0.iter().map(|&i| syllable(i).1).collect()
    }
}

#[derive(Clone, Debug)]
pub struct Pet {
    pub animal: usize,
    pub name: Name,
}

#[derive(Clone, Debug)]
pub struct Person {
    pub given: Name,
    pub family: Name,
    pub female: bool,
    pub age: u32,
    pub profession: usize,
    pub home: usize,
    pub birthplace: usize,
    pub color: usize,
    pub food: usize,
    pub hobby: usize,
    pub pet: Option<Pet>,
    pub friend: usize,
    pub sibling: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct City {
    pub name: Name,
    pub suffix: usize,
    pub country: usize,
    pub river: usize,
    /// Inhabitants in thousands.
    pub population_k: u32,
    pub product: usize,
    pub weather: usize,
    pub founded: u32,
    pub mayor: usize,
    /// People whose home is here, in id order.
    pub residents: Vec<usize>,
}

#[derive(Clone, Debug)]
pub struct Country {
    pub name: Name,
    pub suffix: usize,
    pub capital: usize,
}

#[derive(Clone, Debug)]
pub struct River {
    pub name: Name,
}

/// The whole world plus popularity tables (people and cities are mentioned with Zipf-like
/// frequencies, so small models learn the famous entities and larger ones the long tail too).
#[derive(Clone, Debug)]
pub struct World {
    pub people: Vec<Person>,
    pub cities: Vec<City>,
    pub countries: Vec<Country>,
    pub rivers: Vec<River>,
    person_cdf: Vec<f64>,
    city_cdf: Vec<f64>,
}

/// Cumulative weights 1/(rank + offset) over a random ranking.
fn zipf_cdf(n: usize, offset: f64, rng: &mut SplitMix64) -> Vec<f64> {
    let mut ranks: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut ranks);
    let mut w = vec![0.0; n];
    for (rank, &i) in ranks.iter().enumerate() {
        w[i] = 1.0 / (rank as f64 + offset);
    }
    let mut acc = 0.0;
    w.iter()
        .map(|x| {
            acc += x;
            acc
        })
        .collect()
}

fn sample_cdf(cdf: &[f64], rng: &mut SplitMix64) -> usize {
    let total = *cdf.last().expect("non-empty");
    let x = rng.unit() * total;
    cdf.partition_point(|&c| c <= x).min(cdf.len() - 1)
}

/// Default number of people for a corpus of `bytes` (about one person per 10 kB, so that each
/// person's facts recur a few dozen times).
pub fn default_people(bytes: u64) -> usize {
    (bytes / 10_000).clamp(100, 20_000) as usize
}

impl World {
    pub fn generate(seed: u64, n_people: usize) -> World {
        let mut rng = SplitMix64::derive(seed, 0x57_4F_52_4C_44); // "WORLD"
        let n_people = n_people.max(8);
        let n_cities = (n_people / 12).clamp(6, 800);
        let n_countries = (n_cities / 10).clamp(3, 40);
        let n_rivers = (n_cities / 4).clamp(3, 200);

        let mut used: HashSet<String> = HashSet::new();
        let mut unique_name = |rng: &mut SplitMix64, closed: bool, extra: &str| loop {
            let n = Name::random(rng, closed);
            if used.insert(format!("{}{extra}", n.en())) {
                return n;
            }
        };

        let countries: Vec<Country> = (0..n_countries)
            .map(|_| {
                let suffix = rng.below(COUNTRY_SUFFIXES.len());
                Country { name: unique_name(&mut rng, false, COUNTRY_SUFFIXES[suffix].0), suffix, capital: 0 }
            })
            .collect();
        let rivers: Vec<River> = (0..n_rivers).map(|_| River { name: unique_name(&mut rng, false, " River") }).collect();
        let mut cities: Vec<City> = (0..n_cities)
            .map(|i| {
                let suffix = rng.below(CITY_SUFFIXES.len());
                City {
                    name: unique_name(&mut rng, false, CITY_SUFFIXES[suffix].0),
                    suffix,
                    // Every country gets cities: the first ones round-robin, then at random.
                    country: if i < n_countries { i } else { rng.below(n_countries) },
                    river: rng.below(n_rivers),
                    population_k: [5, 20, 80, 300, 1500][rng.below(5)] + rng.below(200) as u32 * 5,
                    product: rng.below(PRODUCTS.len()),
                    weather: rng.below(WEATHER.len()),
                    founded: 700 + rng.below(1250) as u32,
                    mayor: 0,
                    residents: Vec::new(),
                }
            })
            .collect();
        let mut countries = countries;
        for (k, country) in countries.iter_mut().enumerate() {
            let mine: Vec<usize> = (0..n_cities).filter(|&c| cities[c].country == k).collect();
            country.capital = mine[rng.below(mine.len())];
        }

        let mut full_names: HashSet<(Name, Name)> = HashSet::new();
        let mut people: Vec<Person> = Vec::with_capacity(n_people);
        for i in 0..n_people {
            let (given, family) = loop {
                let g = Name::random(&mut rng, true);
                let f = Name::random(&mut rng, true);
                if full_names.insert((g.clone(), f.clone())) {
                    break (g, f);
                }
            };
            let home = rng.below(n_cities);
            let pet = if rng.chance(0.6) {
                let name = if rng.chance(0.4) {
                    let s = rng.below(OPEN_SYLLABLES.len()) as u16;
                    Name(vec![s, s])
                } else {
                    Name::random(&mut rng, false)
                };
                Some(Pet { animal: rng.below(ANIMALS.len()), name })
            } else {
                None
            };
            people.push(Person {
                given,
                family,
                female: rng.chance(0.5),
                age: 18 + rng.below(63) as u32,
                profession: rng.below(PROFESSIONS.len()),
                home,
                birthplace: if rng.chance(0.5) { home } else { rng.below(n_cities) },
                color: rng.below(COLORS.len()),
                food: rng.below(FOODS.len()),
                hobby: rng.below(HOBBIES.len()),
                pet,
                friend: (i + 1 + rng.below(n_people - 1)) % n_people,
                sibling: None,
            });
            cities[home].residents.push(i);
        }
        // Siblings: disjoint pairs among a third of the people, sharing the family name and
        // birthplace, with different ages (so "older/younger" is defined).
        let mut order: Vec<usize> = (0..n_people).collect();
        rng.shuffle(&mut order);
        let paired = (n_people / 3) & !1;
        for pair in order[..paired].chunks(2) {
            let (a, b) = (pair[0], pair[1]);
            people[b].family = people[a].family.clone();
            if !full_names.insert((people[b].given.clone(), people[b].family.clone())) {
                continue; // the new full name would clash: leave them unrelated
            }
            people[b].birthplace = people[a].birthplace;
            if people[a].age == people[b].age {
                people[b].age += 1 + rng.below(5) as u32;
            }
            people[a].sibling = Some(b);
            people[b].sibling = Some(a);
        }
        for city in cities.iter_mut() {
            city.mayor = if city.residents.is_empty() {
                rng.below(n_people)
            } else {
                city.residents[rng.below(city.residents.len())]
            };
        }
        let person_cdf = zipf_cdf(n_people, 20.0, &mut rng);
        let city_cdf = zipf_cdf(n_cities, 5.0, &mut rng);
        World { people, cities, countries, rivers, person_cdf, city_cdf }
    }

    /// A person, famous ones more often.
    pub fn pick_person(&self, rng: &mut SplitMix64) -> usize {
        sample_cdf(&self.person_cdf, rng)
    }

    /// A city, big names more often.
    pub fn pick_city(&self, rng: &mut SplitMix64) -> usize {
        sample_cdf(&self.city_cdf, rng)
    }

    /// "Belan Kotor".
    pub fn person_en(&self, id: usize) -> String {
        let p = &self.people[id];
        format!("{} {}", p.given.en(), p.family.en())
    }

    /// "贝兰·科陶".
    pub fn person_zh(&self, id: usize) -> String {
        let p = &self.people[id];
        format!("{}·{}", p.given.zh(), p.family.zh())
    }

    /// "Belaport".
    pub fn city_en(&self, c: usize) -> String {
        let city = &self.cities[c];
        city.name.en() + CITY_SUFFIXES[city.suffix].0
    }

    /// "贝拉港".
    pub fn city_zh(&self, c: usize) -> String {
        let city = &self.cities[c];
        city.name.zh() + CITY_SUFFIXES[city.suffix].1
    }

    /// Number of distinct facts in the world (attributes and relations), a measure of how much
    /// there is to memorise.
    pub fn fact_count(&self) -> usize {
        let person: usize = self.people.iter().map(|p| 9 + p.pet.is_some() as usize + p.sibling.is_some() as usize).sum();
        person + self.cities.len() * 7 + self.countries.len() + self.rivers.len()
    }
}
