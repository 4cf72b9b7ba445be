//! The invented vocabulary shared by every generated evaluation set: syllables for names, and the
//! value lists of the planted facts (cities, jobs, colours, pets). Changing a list changes every
//! generated corpus (and invalidates models trained on one, e.g. `tests/fixtures/rag`).

use rand::{rngs::StdRng, Rng};

pub const ONSETS: &[&str] = &[
    "b", "d", "k", "l", "m", "n", "r", "s", "t", "v", "z", "br", "dr", "kl", "st", "th",
];
pub const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ei", "ou"];
pub const CODAS: &[&str] = &["", "", "n", "r", "s", "l", "th", "m"];
pub const CITIES: &[&str] = &[
    "Kestrel Bay",
    "Northmoor",
    "Ashford",
    "Valdor",
    "Port Ilen",
    "Greywater",
    "Brindle",
    "Solace",
    "Marrow Hill",
    "Eastwick",
    "Lumen",
    "Tarn",
];
pub const JOBS: &[&str] = &[
    "glassblower",
    "cartographer",
    "baker",
    "astronomer",
    "beekeeper",
    "carpenter",
    "librarian",
    "violinist",
    "ferry pilot",
    "potter",
    "clockmaker",
    "gardener",
];
pub const COLORS: &[&str] = &[
    "red", "blue", "green", "yellow", "violet", "orange", "silver", "black",
];
pub const PETS: &[&str] = &[
    "cat", "dog", "parrot", "tortoise", "goat", "ferret", "owl", "rabbit",
];
/// A uniformly drawn element of `xs`.
pub fn pick<'a>(rng: &mut StdRng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

/// An invented capitalised word of `syllables` onset+vowel pairs and a coda.
pub fn word(rng: &mut StdRng, syllables: usize) -> String {
    let mut w = String::new();
    for _ in 0..syllables {
        w.push_str(pick(rng, ONSETS));
        w.push_str(pick(rng, VOWELS));
    }
    w.push_str(pick(rng, CODAS));
    let mut c = w.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}
