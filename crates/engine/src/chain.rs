//! Chain configuration files: several stages in one job (`skypipe-run --config chain.toml`).
//!
//! ```toml
//! [run]                      # the engine's options, as in every stage's file
//! dir = "runs/cmb"
//!
//! [chain]
//! stages = ["pointing", "calibrate", "mapmake"]   # instance names, in plan order
//! # kinds = { calibrate2 = "calibrate" }          # instances named other than their stage
//!
//! [pointing]                 # each instance's own table, exactly as in its stage's file,
//! nside = 256                # so a stage resumed alone or in the chain has one fingerprint
//! [calibrate]
//! [mapmake]
//! ```
//! Every top-level table must be `run`, `chain` or a listed instance: unknown ones are refused.

use crate::launch::ConfigError;
use crate::options::RunOptions;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The `[chain]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainTable {
    /// Instance names, in order.
    stages: Vec<String>,
    /// Stage kind of instances whose name is not a stage name.
    #[serde(default)]
    kinds: BTreeMap<String, String>,
}

/// One stage of a chain file: its instance name, its stage kind and its own table.
#[derive(Debug, Clone)]
pub struct ChainMember {
    /// Instance name (ledger name).
    pub name: String,
    /// Stage kind (`pointing`, `calibrate`, ...).
    pub kind: String,
    /// The instance's table (empty when absent: the stage's defaults).
    pub table: toml::Table,
}

impl ChainMember {
    /// The instance's table as the stage's configuration type; unknown keys are refused
    /// when the type says so, naming the instance.
    pub fn config<C: serde::de::DeserializeOwned>(&self) -> Result<C, ChainError> {
        toml::Value::Table(self.table.clone())
            .try_into()
            .map_err(|source| ChainError::Table {
                table: self.name.clone(),
                source,
            })
    }

    /// Builds the instance's stage with `new` from its table ([`ChainMember::config`]); a
    /// stage that refuses its configuration fails naming the instance.
    pub fn build<C, S, E>(&self, new: impl FnOnce(C) -> Result<S, E>) -> Result<S, ChainError>
    where
        C: serde::de::DeserializeOwned,
        E: std::error::Error + Send + Sync + 'static,
    {
        new(self.config()?).map_err(|e| ChainError::Stage {
            instance: self.name.clone(),
            source: Box::new(e),
        })
    }
}

/// A chain file or chain member the binary refuses.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The file is not TOML.
    #[error("{0}")]
    Toml(#[source] toml::de::Error),
    /// A table does not have the keys or types its owner expects.
    #[error("[{table}]: {}", .source.message())]
    Table {
        /// The table (`run`, `chain` or an instance name).
        table: String,
        /// The deserializer's error.
        #[source]
        source: toml::de::Error,
    },
    /// There is no `[chain]` table.
    #[error("a chain file needs a [chain] table listing its stages")]
    NoChain,
    /// `[chain] stages` is empty.
    #[error("[chain] stages is empty")]
    NoStages,
    /// `[chain] kinds` names an instance not in `stages`.
    #[error("[chain] kinds names '{0}', which is not in stages")]
    KindOfUnlisted(String),
    /// An instance's kind is not one the binary can build.
    #[error(
        "[chain] stage '{name}' is of kind '{kind}', which this binary does not know (known: {}); name its kind in [chain] kinds",
        .known.join(", ")
    )]
    UnknownKind {
        /// The instance name.
        name: String,
        /// Its stage kind.
        kind: String,
        /// The kinds the binary knows.
        known: Vec<String>,
    },
    /// An instance's entry is a value, not a table.
    #[error("'{0}' must be a table")]
    NotATable(String),
    /// A top-level table or key that is not `run`, `chain` or an instance.
    #[error("unknown table or key '{0}' (not run, chain or a listed stage)")]
    Unknown(String),
    /// An instance's stage refused its configuration.
    #[error("[{instance}]: {source}")]
    Stage {
        /// The instance name.
        instance: String,
        /// The stage's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A parsed chain file.
#[derive(Debug, Clone)]
pub struct ChainFile {
    /// The `[run]` table.
    pub run: RunOptions,
    /// The stages, in order.
    pub members: Vec<ChainMember>,
}

impl ChainFile {
    /// Reads and checks a chain file; `known_kinds` are the stage kinds the binary can build.
    pub fn load(path: &Path, known_kinds: &[&str]) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(format!("cannot read the configuration: {e}")))?;
        Self::parse(&text, known_kinds).map_err(|e| err(e.to_string()))
    }

    /// Parses a chain file's text.
    pub fn parse(text: &str, known_kinds: &[&str]) -> Result<Self, ChainError> {
        let mut top: toml::Table = toml::from_str(text).map_err(ChainError::Toml)?;
        let table = |name: &'static str| {
            move |source: toml::de::Error| ChainError::Table {
                table: name.to_string(),
                source,
            }
        };
        let run: RunOptions = match top.remove("run") {
            Some(v) => v.try_into().map_err(table("run"))?,
            None => RunOptions::default(),
        };
        let chain: ChainTable = top
            .remove("chain")
            .ok_or(ChainError::NoChain)?
            .try_into()
            .map_err(table("chain"))?;
        if chain.stages.is_empty() {
            return Err(ChainError::NoStages);
        }
        if let Some(k) = chain.kinds.keys().find(|k| !chain.stages.contains(k)) {
            return Err(ChainError::KindOfUnlisted(k.clone()));
        }
        let mut members = Vec::with_capacity(chain.stages.len());
        for name in &chain.stages {
            let kind = chain.kinds.get(name).unwrap_or(name).clone();
            if !known_kinds.contains(&kind.as_str()) {
                return Err(ChainError::UnknownKind {
                    name: name.clone(),
                    kind,
                    known: known_kinds.iter().map(|k| k.to_string()).collect(),
                });
            }
            let table = match top.remove(name) {
                Some(toml::Value::Table(t)) => t,
                Some(_) => return Err(ChainError::NotATable(name.clone())),
                None => toml::Table::new(),
            };
            members.push(ChainMember {
                name: name.clone(),
                kind,
                table,
            });
        }
        if let Some(extra) = top.keys().next() {
            return Err(ChainError::Unknown(extra.clone()));
        }
        Ok(Self { run, members })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: &[&str] = &["pointing", "calibrate", "mapmake"];

    #[test]
    fn instances_keep_their_own_tables_and_kinds() {
        let file = ChainFile::parse(
            r#"
            [run]
            dir = "runs/x"
            [chain]
            stages = ["pointing", "calibrate", "calibrate2"]
            kinds = { calibrate2 = "calibrate" }
            [pointing]
            nside = 64
            [calibrate2]
            gains = "fit"
            "#,
            KINDS,
        )
        .unwrap();
        assert_eq!(file.run.dir.as_deref(), Some(Path::new("runs/x")));
        let kinds: Vec<(&str, &str)> = file
            .members
            .iter()
            .map(|m| (m.name.as_str(), m.kind.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("pointing", "pointing"),
                ("calibrate", "calibrate"),
                ("calibrate2", "calibrate")
            ]
        );
        assert_eq!(file.members[0].table["nside"].as_integer(), Some(64));
        assert!(file.members[1].table.is_empty());
    }

    #[test]
    fn unknown_tables_kinds_and_keys_are_refused() {
        let err = |text: &str| ChainFile::parse(text, KINDS).unwrap_err().to_string();
        assert!(err("[run]\n").contains("[chain]"));
        assert!(err("[chain]\nstages = [\"coadd\"]\n").contains("kind 'coadd'"));
        assert!(err("[chain]\nstages = [\"pointing\"]\n[mapmake]\n").contains("'mapmake'"));
        assert!(err("[chain]\nstages = [\"pointing\"]\nfoo = 1\n").contains("foo"));
        assert!(err("[chain]\nstages = []\n").contains("empty"));
        assert!(err("[run]\nbogus = 1\n[chain]\nstages = [\"pointing\"]\n").contains("bogus"));
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Cfg {
            nside: u32,
        }
        let good = ChainFile::parse(
            "[chain]\nstages = [\"pointing\"]\n[pointing]\nnside = 3\n",
            KINDS,
        )
        .unwrap();
        assert_eq!(good.members[0].config::<Cfg>().unwrap().nside, 3);
        let file = ChainFile::parse(
            "[chain]\nstages = [\"pointing\"]\n[pointing]\nnsid = 3\n",
            KINDS,
        )
        .unwrap();
        let e = file.members[0].config::<Cfg>().unwrap_err().to_string();
        assert!(e.contains("[pointing]") && e.contains("nsid"), "{e}");
        let e = good.members[0]
            .build(|c: Cfg| format!("{}x", c.nside).parse::<u32>())
            .unwrap_err();
        assert_eq!(e.to_string(), "[pointing]: invalid digit found in string");
    }
}
