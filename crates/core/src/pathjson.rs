//! Paths in JSON (and TOML) without loss: Linux paths are bytes, JSON strings are text.
//! A path that is valid UTF-8 is written as a plain string, as before; any other path
//! is written as `{"bytes": [98, 97, 100, 255]}`, its bytes exactly. Both forms are
//! read back, so a set spec naming `bad\xffname.db` round-trips instead of failing to
//! serialize. Use with `#[serde(with = "shadowcopy_core::pathjson")]` on a `PathBuf`,
//! `pathjson::vec` on a `Vec<PathBuf>` and `pathjson::option` on an `Option<PathBuf>`.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The written form of one path.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Repr<'a> {
    Text(std::borrow::Cow<'a, str>),
    Bytes { bytes: Vec<u8> },
}

impl<'a> Repr<'a> {
    fn of(p: &'a Path) -> Repr<'a> {
        match p.to_str() {
            Some(text) => Repr::Text(text.into()),
            None => Repr::Bytes {
                bytes: p.as_os_str().as_bytes().to_vec(),
            },
        }
    }

    fn into_path(self) -> PathBuf {
        match self {
            Repr::Text(text) => PathBuf::from(text.into_owned()),
            Repr::Bytes { bytes } => PathBuf::from(OsString::from_vec(bytes)),
        }
    }
}

pub fn serialize<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    Repr::of(p).serialize(s)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    Ok(Repr::deserialize(d)?.into_path())
}

/// `Vec<PathBuf>`.
pub mod vec {
    use super::*;

    pub fn serialize<S: Serializer>(paths: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(paths.iter().map(|p| Repr::of(p)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
        Ok(Vec::<Repr>::deserialize(d)?
            .into_iter()
            .map(Repr::into_path)
            .collect())
    }
}

/// `Option<PathBuf>`.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(p: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        p.as_deref().map(Repr::of).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        Ok(Option::<Repr>::deserialize(d)?.map(Repr::into_path))
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
        assert!(json.contains(r#"{"bytes":[47,115,114,118"#), "{json}");
        assert_eq!(serde_json::from_str::<Holder>(&json).unwrap(), h);
        let old: Holder = serde_json::from_str(r#"{"one":"/a","many":[]}"#).unwrap();
        assert_eq!(old.maybe, None);
    }
}
