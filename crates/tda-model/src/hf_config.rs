//! What every family's `config.json` parser shares: serde errors that name the field, token ids
//! that may be a number or a list, and the RoPE settings in both transformers spellings.
//!
//! Each family file declares a `#[derive(Deserialize)]` struct with the family's own field names
//! (unknown fields are ignored: HF configs carry many) and converts it into a
//! [`crate::ModelConfig`]. Errors are plain one-line messages; [`crate::ModelConfig::from_file`]
//! prefixes the path.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Deserializes a family config from the parsed `config.json` object. A missing required field
/// reads `missing field `hidden_size``; a value of the wrong type names its field:
/// `field "hidden_size": invalid type: string "x", expected usize`.
pub fn parse<T: DeserializeOwned>(obj: &Map<String, Value>) -> Result<T, String> {
    let err = match T::deserialize(&Value::Object(obj.clone())) {
        Ok(v) => return Ok(v),
        Err(e) => e.to_string(),
    };
    if err.starts_with("missing field") {
        return Err(err);
    }
    // serde reports a type error without the field's name. Find it: the error comes from the
    // first bad value while the map is visited (missing-field checks come after), so dropping any
    // other key leaves the message as it is, and dropping the culprit changes it.
    for key in obj.keys() {
        let mut rest = obj.clone();
        rest.remove(key);
        match T::deserialize(&Value::Object(rest)) {
            Err(e) if e.to_string() == err => {}
            _ => return Err(format!("field \"{key}\": {err}")),
        }
    }
    Err(err)
}

/// `bos_token_id` / `eos_token_id`: one id, a list (the first is used), or null.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

/// The first id, if any.
pub fn first_id(ids: &Option<TokenIds>) -> Option<u32> {
    match ids.as_ref()? {
        TokenIds::One(i) => Some(*i),
        TokenIds::Many(v) => v.first().copied(),
    }
}

/// transformers 4.x `rope_scaling` or 5.x `rope_parameters`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RopeParameters {
    pub rope_type: Option<String>,
    /// The 4.x spelling of `rope_type`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub rope_theta: Option<f64>,
}

/// The RoPE base: top-level `rope_theta` (4.x) or `rope_parameters.rope_theta` (5.x), default
/// 10 000. Only the default (unscaled) RoPE is implemented; any scaling is an error.
pub fn rope_theta(
    rope_theta: Option<f64>,
    rope_scaling: &Option<RopeParameters>,
    rope_parameters: &Option<RopeParameters>,
) -> Result<f64, String> {
    for p in [rope_scaling, rope_parameters].into_iter().flatten() {
        let kind = p
            .rope_type
            .as_deref()
            .or(p.kind.as_deref())
            .unwrap_or("default");
        if kind != "default" {
            return Err(format!("rope scaling \"{kind}\" is not supported yet"));
        }
    }
    Ok(rope_theta
        .or_else(|| rope_parameters.as_ref().and_then(|p| p.rope_theta))
        .unwrap_or(10_000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Cfg {
        hidden_size: usize,
        vocab_size: usize,
        rms_norm_eps: Option<f64>,
    }

    fn obj(s: &str) -> Map<String, Value> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse::<Cfg>(&obj(r#"{"vocab_size": 3, "other": 1}"#)).unwrap_err();
        assert!(
            e.contains("missing field") && e.contains("hidden_size"),
            "{e}"
        );
        let e = parse::<Cfg>(&obj(r#"{"hidden_size": "x", "vocab_size": 3}"#)).unwrap_err();
        assert!(e.starts_with("field \"hidden_size\": invalid type"), "{e}");
        let e = parse::<Cfg>(&obj(r#"{"rms_norm_eps": true, "hidden_size": 2}"#)).unwrap_err();
        assert!(e.starts_with("field \"rms_norm_eps\""), "{e}");
        assert!(parse::<Cfg>(&obj(r#"{"hidden_size": 2, "vocab_size": 3, "x": []}"#)).is_ok());
    }
}
