//! `shadowcopy-writers`: the built-in writers and their registry. A writer kind is one
//! module (its options type, its writer, and [`WriterKind`] and [`KindInfo`] for the
//! options: everything the engine asks of it) and one line of the registry below, plus
//! its run of the writer conformance suite (`tests/writers/conformance.rs`). The
//! PostgreSQL and MariaDB writers live in their own crates; [`postgres`] and [`mariadb`]
//! describe those kinds here.

pub mod exec;
pub mod fsfreeze;
pub mod kind;
pub mod mariadb;
pub mod postgres;
pub mod proc_scan;
pub mod sqlite;
pub mod watchdog;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shadowcopy_core::Writer;

pub use kind::{KindEntry, KindInfo, KindRole, Normalize, WriterKind};

/// What a writer may know of the set it serves (hooks pass it to their scripts).
#[derive(Clone, Debug, Default)]
pub struct SetContext {
    pub set_name: String,
    pub data_paths: Vec<PathBuf>,
}

/// A duration written the way people write them: `10s`, `500ms`, `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {s:?} ({e}); write it like \"10s\" or \"500ms\""
                ))
            })
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// The registry: `VARIANT(OPTIONS) = "kind" [| "alias" ...]`, one line per kind. It makes
/// [`WriterSpec`] (declared in this order, which is the order serde lists the kinds in
/// when it meets an unknown one), [`KINDS`] and the dispatch to [`WriterKind`].
macro_rules! writer_kinds {
    ($($variant:ident($options:ty) = $name:literal $(| $alias:literal)*,)*) => {
        /// A writer as configured: `{ kind = "sqlite", path = "/srv/app.db" }`.
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(tag = "kind")]
        pub enum WriterSpec {
            $(
                #[serde(rename = $name $(, alias = $alias)*)]
                $variant($options),
            )*
        }

        /// The writer kinds this build knows, with one line on what each is for:
        /// databases first, then hooks, then file systems.
        pub const KINDS: &[KindEntry] = &kind::by_role([$(KindEntry::of::<$options>($name),)*]);

        impl WriterSpec {
            /// The kind's name, as the config file spells it.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(WriterSpec::$variant(_) => $name,)*
                }
            }

            /// What the kind is for.
            pub fn role(&self) -> KindRole {
                match self {
                    $(WriterSpec::$variant(_) => <$options as KindInfo>::ROLE,)*
                }
            }

            /// The options, to ask what every kind answers.
            pub fn options(&self) -> &dyn WriterKind {
                match self {
                    $(WriterSpec::$variant(o) => o,)*
                }
            }

            pub fn options_mut(&mut self) -> &mut dyn WriterKind {
                match self {
                    $(WriterSpec::$variant(o) => o,)*
                }
            }
        }
    };
}

writer_kinds! {
    Sqlite(sqlite::SqliteOptions) = "sqlite",
    Fsfreeze(fsfreeze::FsfreezeOptions) = "fsfreeze",
    Exec(exec::ExecOptions) = "exec",
    Postgres(shadowcopy_postgres::PostgresOptions) = "postgres",
    Mariadb(shadowcopy_mariadb::MariaDbOptions) = "mariadb" | "mysql",
}

/// The writer `spec` configures, for a set with `context`.
pub fn build(spec: &WriterSpec, context: &SetContext) -> Box<dyn Writer> {
    spec.options().build(context)
}

impl WriterSpec {
    /// Holds data of its own (all but hooks): a set of hooks alone copies nothing.
    pub fn holds_data(&self) -> bool {
        self.role() != KindRole::Hook
    }

    /// Freezes the file systems of its paths.
    pub fn freezes_file_systems(&self) -> bool {
        self.role() == KindRole::FileSystems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// One spec of each kind, every option set (passwords in URLs are never recorded).
    fn one_of_each() -> Vec<WriterSpec> {
        vec![
            WriterSpec::Sqlite(sqlite::SqliteOptions {
                path: "/srv/app.db".into(),
            }),
            WriterSpec::Postgres(shadowcopy_postgres::PostgresOptions {
                password_file: Some("/etc/pg.pw".into()),
                archive: Some("/srv/wal".into()),
                ..shadowcopy_postgres::PostgresOptions::new(
                    "postgresql://adv:S3cret@/postgres?host=/run/postgresql&port=5432",
                )
            }),
            WriterSpec::Mariadb(shadowcopy_mariadb::MariaDbOptions {
                password_file: Some("/etc/my.pw".into()),
                purge_binlogs: false,
                atomic_snapshot: true,
                ..shadowcopy_mariadb::MariaDbOptions::new(
                    "mysql://root:S3cret@localhost/?socket=/run/mysqld/mysqld.sock",
                )
            }),
            WriterSpec::Exec(exec::ExecOptions {
                script: "/usr/local/bin/hook".into(),
                timeout: Some(HumanDuration(Duration::from_millis(1500))),
                events: Some(vec!["freeze".into(), "thaw".into()]),
            }),
            WriterSpec::Fsfreeze(fsfreeze::FsfreezeOptions {
                paths: vec!["/srv".into(), Path::new("/var/lib/app").into()],
            }),
        ]
    }

    /// The JSON of [`one_of_each`] as copies record it, taken from the code before the
    /// kinds described themselves: it must never change (the catalog holds it).
    const JSON: [&str; 5] = [
        r#"{"kind":"sqlite","path":"/srv/app.db"}"#,
        r#"{"kind":"postgres","url":"postgresql://adv@/postgres?host=/run/postgresql&port=5432","password_file":"/etc/pg.pw","archive":"/srv/wal"}"#,
        r#"{"kind":"mariadb","url":"mysql://root@localhost/?socket=/run/mysqld/mysqld.sock","password_file":"/etc/my.pw","purge_binlogs":false}"#,
        r#"{"kind":"exec","script":"/usr/local/bin/hook","timeout":"1s 500ms","events":["freeze","thaw"]}"#,
        r#"{"kind":"fsfreeze","paths":["/srv","/var/lib/app"]}"#,
    ];

    /// The same as the config file spells it.
    const TOML: [&str; 5] = [
        "kind = \"sqlite\"\npath = \"/srv/app.db\"\n",
        "kind = \"postgres\"\nurl = \"postgresql://adv@/postgres?host=/run/postgresql&port=5432\"\npassword_file = \"/etc/pg.pw\"\narchive = \"/srv/wal\"\n",
        "kind = \"mariadb\"\nurl = \"mysql://root@localhost/?socket=/run/mysqld/mysqld.sock\"\npassword_file = \"/etc/my.pw\"\npurge_binlogs = false\n",
        "kind = \"exec\"\nscript = \"/usr/local/bin/hook\"\ntimeout = \"1s 500ms\"\nevents = [\"freeze\", \"thaw\"]\n",
        "kind = \"fsfreeze\"\npaths = [\"/srv\", \"/var/lib/app\"]\n",
    ];

    #[test]
    fn specs_keep_their_json_and_toml() {
        let specs = one_of_each();
        assert_eq!(specs.len(), KINDS.len(), "one spec of each kind here");
        for ((spec, json), toml) in specs.iter().zip(JSON).zip(TOML) {
            assert_eq!(serde_json::to_string(spec).unwrap(), json);
            let back: WriterSpec = serde_json::from_str(json).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), json);
            assert_eq!(back.kind(), spec.kind());
            assert_eq!(toml::to_string(spec).unwrap(), toml);
            let back: WriterSpec = toml::from_str(toml).unwrap();
            assert_eq!(toml::to_string(&back).unwrap(), toml);
        }
        let mysql: WriterSpec =
            serde_json::from_str(&JSON[2].replace(r#""mariadb""#, r#""mysql""#)).unwrap();
        assert_eq!(serde_json::to_string(&mysql).unwrap(), JSON[2]);
        let unknown = serde_json::from_str::<WriterSpec>(r#"{"kind":"oracle"}"#).unwrap_err();
        assert!(
            unknown.to_string().starts_with(
                "unknown variant `oracle`, expected one of `sqlite`, `fsfreeze`, `exec`, `postgres`, `mariadb`, `mysql`"
            ),
            "{unknown}"
        );
    }

    #[test]
    fn kinds_are_listed_databases_first() {
        let names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
        assert_eq!(names, ["sqlite", "postgres", "mariadb", "exec", "fsfreeze"]);
        for (spec, entry) in one_of_each().iter().zip(KINDS) {
            assert_eq!(spec.kind(), entry.name);
            assert_eq!(spec.role(), entry.role);
        }
    }

    #[test]
    fn kinds_answer_for_themselves() {
        let specs = one_of_each();
        let holds: Vec<bool> = specs.iter().map(WriterSpec::holds_data).collect();
        assert_eq!(holds, [true, true, true, false, true]);
        let freezes: Vec<bool> = specs.iter().map(WriterSpec::freezes_file_systems).collect();
        assert_eq!(freezes, [false, false, false, false, true]);
        for mut spec in specs {
            spec.options_mut().forget_credentials();
            assert!(!serde_json::to_string(&spec)
                .unwrap()
                .contains("password_file"));
        }
        let hook = exec::ExecOptions {
            script: "/hook".into(),
            timeout: Some(HumanDuration(Duration::from_secs(25 * 3600))),
            events: None,
        };
        assert_eq!(
            hook.check().unwrap_err(),
            "the timeout 1day 1h of the hook /hook is out of range: give between 1ms and 24h (timeout in the config file)"
        );
    }
}
