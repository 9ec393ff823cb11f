//! Database passwords: kept in memory for the run that needs them and never written
//! anywhere else. A connection URL given with a password (`mysql://u:pw@host/`,
//! `postgresql://u:pw@/db`, `?password=pw`, libpq's `password=pw`) becomes a
//! [`SecretUrl`]: its text without the password, which is what is displayed, logged,
//! put in writer names and error messages and serialized into the set spec that the
//! catalog records, and the password apart, which only the connection sees. A copy made
//! with a password in its URL is recorded without it; the databases' own ways of giving
//! a password without a URL (a password file, `~/.pgpass`, environment variables) are
//! read by the writers when they connect.

use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A password. Its `Debug` shows `***`; there is no `Display` and no `Serialize`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The password itself, for the connection only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The first line of a password file (a trailing line break is not part of it).
    pub fn read_file(path: &Path) -> std::io::Result<Secret> {
        let text = std::fs::read_to_string(path)?;
        let line = text.lines().next().unwrap_or("");
        Ok(Secret(line.to_string()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How one kind of connection string carries a password.
pub trait UrlSyntax {
    /// `url` without its password, and the password (decoded), if it had one.
    fn split(url: &str) -> (String, Option<String>);
}

/// A connection URL whose password is kept apart: shown, compared and serialized
/// without it (see the module doc).
pub struct SecretUrl<S> {
    text: String,
    password: Option<Secret>,
    syntax: PhantomData<fn() -> S>,
}

impl<S: UrlSyntax> SecretUrl<S> {
    pub fn new(url: &str) -> SecretUrl<S> {
        let (text, password) = S::split(url);
        SecretUrl {
            text,
            password: password.map(Secret),
            syntax: PhantomData,
        }
    }
}

impl<S> SecretUrl<S> {
    /// The URL without its password.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The password the URL was given with (this run only: it is never recorded).
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }
}

impl<S> Clone for SecretUrl<S> {
    fn clone(&self) -> Self {
        SecretUrl {
            text: self.text.clone(),
            password: self.password.clone(),
            syntax: PhantomData,
        }
    }
}

/// Two URLs are the same connection whatever password they were given with.
impl<S> PartialEq for SecretUrl<S> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<S> Eq for SecretUrl<S> {}

impl<S> fmt::Display for SecretUrl<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<S> fmt::Debug for SecretUrl<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.password {
            Some(_) => write!(f, "{:?} (password: ***)", self.text),
            None => write!(f, "{:?}", self.text),
        }
    }
}

impl<S> Serialize for SecretUrl<S> {
    fn serialize<Ser: Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de, S: UrlSyntax> Deserialize<'de> for SecretUrl<S> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(SecretUrl::new(&String::deserialize(d)?))
    }
}

/// `scheme://user:password@host/...?password=...`: the password of the user info and
/// `password` query parameters are taken out; everything else stays as written. With
/// `plus_is_space`, a `+` in a query value is a space (form encoding, as the `url` crate
/// decodes queries).
pub fn split_url(url: &str, plus_is_space: bool) -> (String, Option<String>) {
    let Some(scheme_end) = url.find("://") else {
        return (url.to_string(), None);
    };
    let start = scheme_end + 3;
    let mut authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    // libpq-style parsers (tokio-postgres) take everything up to the first '@' as
    // user:password, even past a '/', '?' or '#' that is not percent-encoded: such a
    // password is found the same way, so that it is never kept in the text.
    if let Some(at) = url[start..].find('@').map(|i| start + i) {
        if at > authority_end {
            authority_end = url[at + 1..]
                .find(['/', '?'])
                .map_or(url.len(), |i| at + 1 + i);
        }
    }
    let authority = &url[start..authority_end];
    let mut password = None;
    let mut text = url[..start].to_string();
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    password = Some(percent_decode(&userinfo[colon + 1..], false));
                    text.push_str(&userinfo[..colon]);
                    text.push_str(&authority[at..]);
                }
                None => text.push_str(authority),
            }
        }
        None => text.push_str(authority),
    }
    let rest = &url[authority_end..];
    let (before_fragment, fragment) = match rest.find('#') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match before_fragment.find('?') {
        Some(q) => {
            text.push_str(&before_fragment[..q]);
            let mut kept = Vec::new();
            for pair in before_fragment[q + 1..].split('&') {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                if percent_decode(key, plus_is_space) == "password" {
                    password = Some(percent_decode(value, plus_is_space));
                } else {
                    kept.push(pair);
                }
            }
            if !kept.is_empty() {
                text.push('?');
                text.push_str(&kept.join("&"));
            }
        }
        None => text.push_str(before_fragment),
    }
    text.push_str(fragment);
    (text, password)
}

/// `%XX` escapes decoded (invalid ones kept as written); bytes that are not UTF-8 are
/// replaced, as the database clients do.
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let hex = |c: u8| (c as char).to_digit(16);
        if b == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if b == b'+' && plus_is_space { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_and_query_passwords_are_taken_out() {
        let cases = [
            (
                "mysql://adv:S3cretPw@127.0.0.1:33999/",
                "mysql://adv@127.0.0.1:33999/",
                Some("S3cretPw"),
            ),
            (
                "postgresql://u:p%40ss%3Aw@/db?host=/run/pg&port=5432",
                "postgresql://u@/db?host=/run/pg&port=5432",
                Some("p@ss:w"),
            ),
            (
                "postgresql:///db?host=/tmp&password=x%20y&user=u",
                "postgresql:///db?host=/tmp&user=u",
                Some("x y"),
            ),
            ("mysql://h/?password=pw", "mysql://h/", Some("pw")),
            (
                "mysql://root@localhost/?socket=/run/mysqld/mysqld.sock",
                "mysql://root@localhost/?socket=/run/mysqld/mysqld.sock",
                None,
            ),
            ("/run/mysqld/mysqld.sock", "/run/mysqld/mysqld.sock", None),
            ("mysql://a:b@c@h:1/d#f", "mysql://a@h:1/d#f", Some("b@c")),
            (
                "postgresql://u:p#w@/db?host=/run/postgresql",
                "postgresql://u@/db?host=/run/postgresql",
                Some("p#w"),
            ),
            (
                "postgresql://u:a/b?c@/db?host=/tmp",
                "postgresql://u@/db?host=/tmp",
                Some("a/b?c"),
            ),
        ];
        for (url, text, password) in cases {
            let (t, p) = split_url(url, false);
            assert_eq!(t, text, "{url}");
            assert_eq!(p.as_deref(), password, "{url}");
        }
    }

    struct Plain;
    impl UrlSyntax for Plain {
        fn split(url: &str) -> (String, Option<String>) {
            split_url(url, false)
        }
    }

    #[test]
    fn a_secret_url_shows_and_serializes_without_its_password() {
        let u: SecretUrl<Plain> = SecretUrl::new("mysql://adv:S3cretPw@h/");
        assert_eq!(u.to_string(), "mysql://adv@h/");
        assert!(!format!("{u:?}").contains("S3cretPw"));
        assert_eq!(serde_json::to_string(&u).unwrap(), r#""mysql://adv@h/""#);
        assert_eq!(u.password().map(Secret::expose), Some("S3cretPw"));
        assert_eq!(u, SecretUrl::new("mysql://adv@h/"));
        assert!(!format!("{:?}", u.password()).contains("S3cretPw"));
    }
}
