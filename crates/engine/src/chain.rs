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
    pub fn config<C: serde::de::DeserializeOwned>(&self) -> Result<C, String> {
        toml::Value::Table(self.table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| format!("[{}]: {}", self.name, e.message()))
    }
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
        Self::parse(&text, known_kinds).map_err(err)
    }

    /// Parses a chain file's text.
    pub fn parse(text: &str, known_kinds: &[&str]) -> Result<Self, String> {
        let mut top: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let run: RunOptions = match top.remove("run") {
            Some(v) => v
                .try_into()
                .map_err(|e: toml::de::Error| format!("[run]: {}", e.message()))?,
            None => RunOptions::default(),
        };
        let chain: ChainTable = top
            .remove("chain")
            .ok_or("a chain file needs a [chain] table listing its stages")?
            .try_into()
            .map_err(|e: toml::de::Error| format!("[chain]: {}", e.message()))?;
        if chain.stages.is_empty() {
            return Err("[chain] stages is empty".into());
        }
        if let Some(k) = chain.kinds.keys().find(|k| !chain.stages.contains(k)) {
            return Err(format!("[chain] kinds names '{k}', which is not in stages"));
        }
        let mut members = Vec::with_capacity(chain.stages.len());
        for name in &chain.stages {
            let kind = chain.kinds.get(name).unwrap_or(name).clone();
            if !known_kinds.contains(&kind.as_str()) {
                return Err(format!(
                    "[chain] stage '{name}' is of kind '{kind}', which this binary does not know (known: {}); name its kind in [chain] kinds",
                    known_kinds.join(", ")
                ));
            }
            let table = match top.remove(name) {
                Some(toml::Value::Table(t)) => t,
                Some(_) => return Err(format!("'{name}' must be a table")),
                None => toml::Table::new(),
            };
            members.push(ChainMember {
                name: name.clone(),
                kind,
                table,
            });
        }
        if let Some(extra) = top.keys().next() {
            return Err(format!(
                "unknown table or key '{extra}' (not run, chain or a listed stage)"
            ));
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
        let err = |text: &str| ChainFile::parse(text, KINDS).unwrap_err();
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
        let e = file.members[0].config::<Cfg>().unwrap_err();
        assert!(e.contains("[pointing]") && e.contains("nsid"), "{e}");
    }
}
