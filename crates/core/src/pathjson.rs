//! Paths in JSON (and TOML) without loss: Linux paths are bytes, JSON strings are text.
//! A path that is valid UTF-8 is written as a plain string, as before; any other path
//! is written as a [`JsonPath`] object, `{"path": "bad\u{fffd}name.db", "path_hex":
//! "…"}`: readable text, and its bytes exactly. Both forms are read back, so a set spec
//! naming `bad\xffname.db` round-trips instead of failing to serialize. Use with
//! `#[serde(with = "shadowcopy_core::pathjson")]` on a `PathBuf`, `pathjson::vec` on a
//! `Vec<PathBuf>` and `pathjson::option` on an `Option<PathBuf>`; manifests and
//! components flatten a [`JsonPath`] into their objects (`crate::model`).

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A path in JSON, without loss: `path` is the path as text (a byte that is not UTF-8
/// shown as U+FFFD); when that is not exactly the path, `path_hex` holds the path's bytes
/// in hex, and is what a reader uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonPath {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
}

impl From<&Path> for JsonPath {
    fn from(p: &Path) -> Self {
        match p.to_str() {
            Some(s) => JsonPath {
                path: s.to_string(),
                path_hex: None,
            },
            None => {
                use std::fmt::Write;
                let bytes = p.as_os_str().as_bytes();
                let mut hex = String::with_capacity(bytes.len() * 2);
                for b in bytes {
                    let _ = write!(hex, "{b:02x}");
                }
                JsonPath {
                    path: p.to_string_lossy().into_owned(),
                    path_hex: Some(hex),
                }
            }
        }
    }
}

impl TryFrom<JsonPath> for PathBuf {
    type Error = String;

    fn try_from(j: JsonPath) -> Result<PathBuf, String> {
        let Some(hex) = j.path_hex else {
            return Ok(PathBuf::from(j.path));
        };
        let digits = hex.as_bytes();
        if digits.len() % 2 != 0 {
            return Err(format!("path_hex {hex:?} has an odd number of digits"));
        }
        let bytes = digits
            .chunks(2)
            .map(|pair| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|d| u8::from_str_radix(d, 16).ok())
                    .ok_or_else(|| format!("path_hex {hex:?} is not hexadecimal"))
            })
            .collect::<Result<Vec<u8>, String>>()?;
        Ok(PathBuf::from(OsString::from_vec(bytes)))
    }
}

/// The written form of one path: a string when it is UTF-8, else a [`JsonPath`].
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Repr<'a> {
    Text(std::borrow::Cow<'a, str>),
    Lossless(JsonPath),
}

impl<'a> Repr<'a> {
    fn of(p: &'a Path) -> Repr<'a> {
        match p.to_str() {
            Some(text) => Repr::Text(text.into()),
            None => Repr::Lossless(JsonPath::from(p)),
        }
    }

    fn into_path(self) -> Result<PathBuf, String> {
        match self {
            Repr::Text(text) => Ok(PathBuf::from(text.into_owned())),
            Repr::Lossless(j) => j.try_into(),
        }
    }
}

pub fn serialize<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    Repr::of(p).serialize(s)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    Repr::deserialize(d)?
        .into_path()
        .map_err(serde::de::Error::custom)
}

/// `Vec<PathBuf>`.
pub mod vec {
    use super::*;

    pub fn serialize<S: Serializer>(paths: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(paths.iter().map(|p| Repr::of(p)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
        Vec::<Repr>::deserialize(d)?
            .into_iter()
            .map(|r| r.into_path().map_err(serde::de::Error::custom))
            .collect()
    }
}

/// `Option<PathBuf>`.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        p.as_deref().map(Repr::of).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        Option::<Repr>::deserialize(d)?
            .map(|r| r.into_path().map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Holder {
        #[serde(with = "super")]
        one: PathBuf,
        #[serde(with = "super::vec")]
        many: Vec<PathBuf>,
        #[serde(with = "super::option", default)]
        maybe: Option<PathBuf>,
    }

    #[test]
    fn text_paths_stay_strings_and_byte_paths_round_trip() {
        let odd = PathBuf::from(OsString::from_vec(b"/srv/bad\xffname.db".to_vec()));
        let h = Holder {
            one: PathBuf::from("/srv/app.db"),
            many: vec![odd.clone(), PathBuf::from("/srv/x")],
            maybe: Some(odd),
        };
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.contains(r#""one":"/srv/app.db""#), "{json}");
        assert!(
            json.contains(r#""path_hex":"2f7372762f626164ff6e616d652e6462""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Holder>(&json).unwrap(), h);
        let old: Holder = serde_json::from_str(r#"{"one":"/a","many":[]}"#).unwrap();
        assert_eq!(old.maybe, None);
    }
}
