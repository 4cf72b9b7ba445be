//! Mutators: byte-level (bit flips, interesting bytes and integers, truncation, insertion,
//! deletion, chunk duplication, splicing), JSON-aware (a node replaced by another type, extreme
//! numbers, empty strings, deep nesting, dropped keys, subtrees copied around, JSON nested in a
//! string), line-aware for jsonl, header-aware for safetensors, and dictionary insertion for
//! templates. All randomness comes from one seeded [`Rng`], so a run is reproducible.

use serde_json::{Map, Value};

/// SplitMix64: small, fast, and good enough to drive mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`0` when `n == 0`).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// How a slot's bytes are structured, which picks the structure-aware mutators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Json,
    Jsonl,
    Safetensors,
    Text,
    Binary,
}

impl Kind {
    /// The kind of a file, from its name.
    pub fn of(slot: &str) -> Kind {
        let ext = slot.rsplit('.').next().unwrap_or("");
        match ext {
            "json" => Kind::Json,
            "jsonl" | "ndjson" => Kind::Jsonl,
            "safetensors" => Kind::Safetensors,
            "txt" => Kind::Text,
            _ => Kind::Binary,
        }
    }
}

const BYTES: &[u8] = b"\x00\xff\x7f\x80\x01\"{}[],:0123456789-.eE\\\n\r \t";
const INTS: &[u64] = &[
    0,
    1,
    0x7f,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 31,
    1 << 32,
    1 << 40,
    1 << 60,
    u64::MAX,
    u64::MAX - 1,
    i64::MAX as u64,
];

/// One byte-level mutation of `data` in place; `other` is a second input for splicing.
pub fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    let n = data.len();
    match rng.below(10) {
        0 if n > 0 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(n);
                data[i] ^= 1 << rng.below(8);
            }
        }
        1 if n > 0 => {
            let i = rng.below(n);
            data[i] = *rng.pick(BYTES);
        }
        2 if n > 0 => {
            // An interesting integer, little- or big-endian, 1 to 8 bytes wide.
            let v = *rng.pick(INTS);
            let w = *rng.pick(&[1usize, 2, 4, 8]);
            let b = if rng.one_in(2) {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            };
            let i = rng.below(n);
            let w = w.min(n - i);
            data[i..i + w].copy_from_slice(&b[..w]);
        }
        3 => data.truncate(rng.below(n + 1)),
        4 => {
            let at = rng.below(n + 1);
            let len = 1 + rng.below(16);
            let ins: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.one_in(2) {
                        *rng.pick(BYTES)
                    } else {
                        rng.next_u64() as u8
                    }
                })
                .collect();
            data.splice(at..at, ins);
        }
        5 if n > 0 => {
            let at = rng.below(n);
            let len = 1 + rng.below((n - at).min(64));
            data.drain(at..at + len);
        }
        6 if n > 0 => {
            // Duplicate a chunk somewhere else (sometimes many times).
            let at = rng.below(n);
            let len = 1 + rng.below((n - at).min(256));
            let chunk = data[at..at + len].to_vec();
            let times = if rng.one_in(8) { 1 + rng.below(64) } else { 1 };
            let to = rng.below(n + 1);
            for _ in 0..times {
                data.splice(to..to, chunk.iter().copied());
            }
        }
        7 if !other.is_empty() => {
            // Splice: a prefix of this input and a suffix of the other.
            let cut = rng.below(n + 1);
            let from = rng.below(other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        8 if n > 1 => {
            // Swap two ranges' first bytes (local reordering).
            let (i, j) = (rng.below(n), rng.below(n));
            data.swap(i, j);
        }
        _ => {
            let at = rng.below(n + 1);
            data.insert(at, rng.next_u64() as u8);
        }
    }
}

/// Placeholder strings replaced by raw JSON text after serialising (numbers serde cannot hold).
const RAW: &str = "\u{1}RAW:";
const RAW_TEXT: &[&str] = &[
    "1e999",
    "-1e999",
    "18446744073709551616",
    "-9223372036854775809",
    "1e-400",
    "-0",
    "NaN",
    "Infinity",
    "00",
    "1.",
    "0x10",
    "\"\\ud800\"",
];

/// Interesting replacement values for any JSON node.
fn interesting(rng: &mut Rng, words: &[String]) -> Value {
    use serde_json::json;
    match rng.below(24) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(false),
        3 => json!(0),
        4 => json!(-1),
        5 => json!(1),
        6 => json!(u32::MAX),
        7 => json!(1u64 << 53),
        8 => json!(u64::MAX),
        9 => json!(i64::MIN),
        10 => json!(1e308),
        11 => json!(-1e308),
        12 => json!(0.5),
        13 => json!(""),
        14 => json!([]),
        15 => json!({}),
        16 => json!("\u{0}\u{fffd}🙂{{ }}{}"),
        17 => json!("a".repeat(1 << (4 + rng.below(14)))),
        18 => json!(1u64 << (20 + rng.below(44))),
        19 => Value::String(format!("{RAW}{}", rng.pick(RAW_TEXT))),
        20 => {
            let max = if rng.one_in(4) { 200 } else { 60 };
            nested(1 + rng.below(max))
        }
        _ if !words.is_empty() => Value::String(rng.pick(words).clone()),
        _ => json!([null, 0, ""]),
    }
}

/// `[[[...]]]` or `{"a":{"a":...}}`, `depth` levels.
fn nested(depth: usize) -> Value {
    let mut v = Value::Null;
    for i in 0..depth {
        v = if i % 2 == 0 {
            Value::Array(vec![v])
        } else {
            let mut m = Map::new();
            m.insert("a".into(), v);
            Value::Object(m)
        };
    }
    v
}

/// Every node of `v` as a path of indices (object entries in iteration order).
fn paths(v: &Value, at: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    if out.len() > 20_000 {
        return;
    }
    out.push(at.clone());
    let children: Box<dyn Iterator<Item = &Value>> = match v {
        Value::Array(a) => Box::new(a.iter()),
        Value::Object(o) => Box::new(o.values()),
        _ => return,
    };
    for (i, c) in children.enumerate() {
        at.push(i);
        paths(c, at, out);
        at.pop();
    }
}

fn node<'a>(v: &'a Value, path: &[usize]) -> &'a Value {
    match path.split_first() {
        None => v,
        Some((&i, rest)) => match v {
            Value::Array(a) => node(&a[i], rest),
            Value::Object(o) => node(o.values().nth(i).unwrap(), rest),
            _ => unreachable!("paths only descend into containers"),
        },
    }
}

fn node_mut<'a>(v: &'a mut Value, path: &[usize]) -> &'a mut Value {
    match path.split_first() {
        None => v,
        Some((&i, rest)) => match v {
            Value::Array(a) => node_mut(&mut a[i], rest),
            Value::Object(o) => node_mut(o.values_mut().nth(i).unwrap(), rest),
            _ => unreachable!("paths only descend into containers"),
        },
    }
}

/// Keys and short strings of a document: values that fit where other values were.
pub fn words_of(v: &Value, out: &mut Vec<String>) {
    if out.len() > 2000 {
        return;
    }
    match v {
        Value::String(s) if s.len() <= 64 => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|c| words_of(c, out)),
        Value::Object(o) => {
            for (k, c) in o {
                out.push(k.clone());
                words_of(c, out);
            }
        }
        _ => {}
    }
}

/// Mutates one node of `root`. `words` are strings to put in; `dict` snippets go into strings.
fn mutate_node(rng: &mut Rng, root: &mut Value, words: &[String], dict: &[&str]) {
    let mut all = Vec::new();
    paths(root, &mut Vec::new(), &mut all);
    let path = rng.pick(&all).clone();
    // A copy of another subtree (structural splice), taken before borrowing the target.
    let donor = node(root, rng.pick::<Vec<usize>>(&all)).clone();
    let node = node_mut(root, &path);
    match (rng.below(6), &mut *node) {
        (0, _) => *node = interesting(rng, words),
        (1, _) => *node = donor,
        (2, Value::Number(n)) => {
            let x = n.as_f64().unwrap_or(0.0);
            *node = match rng.below(6) {
                0 => serde_json::json!((x as i64).wrapping_add(1)),
                1 => serde_json::json!((x as i64).wrapping_sub(1)),
                2 => serde_json::json!(-x),
                3 => serde_json::json!(x * 1e6),
                4 => serde_json::json!((x as u64).wrapping_mul(1 << 20)),
                _ => serde_json::json!(x / 3.0),
            }
        }
        (2, Value::String(s)) => mutate_string(rng, s, dict),
        (2, Value::Object(o)) if !o.is_empty() => {
            let k = o.keys().nth(rng.below(o.len())).unwrap().clone();
            o.remove(&k);
        }
        (2, Value::Array(a)) if !a.is_empty() => {
            let i = rng.below(a.len());
            match rng.below(4) {
                0 => {
                    a.remove(i);
                }
                1 => {
                    let c = a[i].clone();
                    let times = if rng.one_in(4) { 1 + rng.below(200) } else { 1 };
                    a.extend(std::iter::repeat_n(c, times));
                }
                2 => {
                    let j = rng.below(a.len());
                    a.swap(i, j);
                }
                _ => a.clear(),
            }
        }
        (3, Value::Object(o)) => {
            let key = if words.is_empty() || rng.one_in(4) {
                "x".to_string()
            } else {
                rng.pick(words).clone()
            };
            o.insert(key, interesting(rng, words));
        }
        (4, Value::String(s)) => {
            // JSON nested in a string (safetensors metadata, index payloads): mutate inside.
            if let Ok(mut inner) = serde_json::from_str::<Value>(s) {
                if inner.is_object() || inner.is_array() {
                    mutate_node(rng, &mut inner, words, dict);
                    *s = serialize(rng, &inner);
                    return;
                }
            }
            mutate_string(rng, s, dict);
        }
        _ => *node = interesting(rng, words),
    }
}

/// A string mutation: empty, a dictionary snippet, byte mutations (kept UTF-8), repetition.
fn mutate_string(rng: &mut Rng, s: &mut String, dict: &[&str]) {
    match rng.below(5) {
        0 => s.clear(),
        1 if !dict.is_empty() => {
            let mut at = rng.below(s.len() + 1);
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            let snippet = *rng.pick(dict);
            s.insert_str(at, snippet);
        }
        2 => {
            let mut b = s.clone().into_bytes();
            let n = b.clone();
            for _ in 0..1 + rng.below(3) {
                mutate_bytes(rng, &mut b, &n);
            }
            *s = String::from_utf8_lossy(&b).into_owned();
        }
        3 => {
            let t = s.clone();
            for _ in 0..1 + rng.below(8) {
                s.push_str(&t);
            }
        }
        _ => {
            let c = *rng.pick(&["\u{0}", "\u{fffd}", "🙂", "\\", "\"", "\n", "é"]);
            s.push_str(c)
        }
    }
}

/// Compact or pretty JSON, with [`RAW`] placeholders replaced by their raw text.
fn serialize(rng: &mut Rng, v: &Value) -> String {
    let text = if rng.one_in(2) {
        serde_json::to_string(v).unwrap()
    } else {
        serde_json::to_string_pretty(v).unwrap()
    };
    if !text.contains("\\u0001RAW:") {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("\"\\u0001RAW:") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "\"\\u0001RAW:".len()..];
        let end = raw_end(after);
        out.push_str(&after[..end].replace("\\\"", "\"").replace("\\\\", "\\"));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Where the serialised placeholder string ends (its closing quote, skipping escapes).
fn raw_end(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    b.len().saturating_sub(1)
}

/// JSON-aware mutation: parse, mutate 1–3 nodes, serialise. `None` if `data` is not JSON.
pub fn mutate_json(rng: &mut Rng, data: &[u8], dict: &[&str]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(data).ok()?;
    let mut words = Vec::new();
    words_of(&v, &mut words);
    words.extend(dict.iter().map(|s| s.to_string()));
    for _ in 0..1 + rng.below(3) {
        // Half the time inside a JSON document held in a string (the index payload, the
        // `layers` metadata of factor files), which a uniform node choice would rarely reach.
        let mut all = Vec::new();
        paths(&v, &mut Vec::new(), &mut all);
        let inner: Vec<&Vec<usize>> = all
            .iter()
            .filter(|p| matches!(node(&v, p), Value::String(s) if s.starts_with(['{', '['])))
            .collect();
        match inner.is_empty() || rng.one_in(2) {
            true => mutate_node(rng, &mut v, &words, dict),
            false => {
                let path = (*rng.pick(&inner)).clone();
                let node = node_mut(&mut v, &path);
                if let Value::String(s) = node {
                    if let Ok(mut doc) = serde_json::from_str::<Value>(s) {
                        mutate_node(rng, &mut doc, &words, dict);
                        *s = serialize(rng, &doc);
                    }
                }
            }
        }
    }
    Some(serialize(rng, &v).into_bytes())
}

/// jsonl-aware mutation: one line JSON-mutated, or lines dropped, duplicated, blanked, swapped.
pub fn mutate_jsonl(rng: &mut Rng, data: &[u8], dict: &[&str]) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = data.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    let i = rng.below(lines.len());
    match rng.below(6) {
        0 | 1 => {
            if let Some(m) = mutate_json(rng, &lines[i], dict) {
                lines[i] = m.into_iter().filter(|&b| b != b'\n').collect();
            }
        }
        2 => {
            lines.remove(i);
        }
        3 => {
            let l = lines[i].clone();
            lines.insert(rng.below(lines.len() + 1), l);
        }
        4 => {
            lines[i] = rng
                .pick(&[&b""[..], b"\r", b"   ", b"{}", b"[]", b"null"])
                .to_vec()
        }
        _ => {
            let j = rng.below(lines.len());
            lines.swap(i, j);
        }
    }
    let sep: &[u8] = if rng.one_in(8) { b"\r\n" } else { b"\n" };
    lines.join(sep)
}

/// safetensors-aware mutation: the JSON header is mutated and the length prefix rewritten
/// (usually to the new length, sometimes off by a little or a lot); the data is kept.
pub fn mutate_safetensors(rng: &mut Rng, data: &[u8], dict: &[&str]) -> Option<Vec<u8>> {
    let n = u64::from_le_bytes(data.get(..8)?.try_into().ok()?) as usize;
    let header = data.get(8..8usize.checked_add(n)?)?;
    let body = &data[8 + n..];
    let new = mutate_json(rng, header, dict)?;
    let len = match rng.below(12) {
        0 => new.len() as u64 + 1,
        1 => (new.len() as u64).wrapping_sub(1),
        2 => *rng.pick(INTS),
        _ => new.len() as u64,
    };
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(&new);
    let cut = if rng.one_in(6) {
        rng.below(body.len() + 1)
    } else {
        body.len()
    };
    out.extend_from_slice(&body[..cut]);
    Some(out)
}

/// One mutated input from `base` (of `kind`), with `other` for splicing and `dict` for strings:
/// a structure-aware mutation three times in four, then 0–3 byte-level ones.
pub fn mutate(rng: &mut Rng, kind: Kind, base: &[u8], other: &[u8], dict: &[&str]) -> Vec<u8> {
    let structured = match (!rng.one_in(4), kind) {
        (false, _) => None,
        (true, Kind::Json) => mutate_json(rng, base, dict),
        (true, Kind::Jsonl) => Some(mutate_jsonl(rng, base, dict)),
        (true, Kind::Safetensors) => mutate_safetensors(rng, base, dict),
        (true, Kind::Text) if !dict.is_empty() => {
            let mut b = base.to_vec();
            let at = rng.below(b.len() + 1);
            b.splice(at..at, rng.pick(dict).bytes());
            Some(b)
        }
        _ => None,
    };
    let byte_ops = match structured {
        Some(_) => {
            let max = if rng.one_in(4) { 3 } else { 1 };
            rng.below(max)
        }
        None => 1 + rng.below(3),
    };
    let mut out = structured.unwrap_or_else(|| base.to_vec());
    for _ in 0..byte_ops {
        mutate_bytes(rng, &mut out, other);
    }
    out
}
