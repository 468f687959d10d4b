//! Service spec files for `shoal deploy -f`: JSON or YAML (chosen by the file's
//! extension) read into an [`ServiceSpecDoc`], with a size limit checked before
//! reading and errors that name the file and the offending field.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::api::ServiceSpecDoc;

/// The largest spec file read; a service spec is a few kilobytes.
pub const MAX_SPEC_FILE_BYTES: u64 = 1 << 20;

/// Why a spec file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecFileError {
    #[error("spec file {}: {detail}", path.display())]
    Read { path: PathBuf, detail: String },
    #[error("spec file {} is larger than {MAX_SPEC_FILE_BYTES} bytes; a service spec is a few kilobytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("spec file {} has no .json, .yaml or .yml extension; rename it so its format is clear", path.display())]
    Extension { path: PathBuf },
    #[error("spec file {} is not valid UTF-8 text", path.display())]
    NotText { path: PathBuf },
    #[error("spec file {}: {detail}", path.display())]
    Parse { path: PathBuf, detail: String },
}

/// The two formats a spec file may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecFormat {
    Json,
    Yaml,
}

impl SpecFormat {
    /// `.json` is JSON; `.yaml` and `.yml` are YAML (any case).
    pub fn of(path: &Path) -> Option<SpecFormat> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "json" => Some(SpecFormat::Json),
            "yaml" | "yml" => Some(SpecFormat::Yaml),
            _ => None,
        }
    }
}

/// Parses a spec from text. Unknown fields are errors naming the field; the spec
/// is not validated here (see [`ServiceSpecDoc::validate`]).
pub fn parse_spec(text: &str, format: SpecFormat) -> Result<ServiceSpecDoc, String> {
    match format {
        SpecFormat::Json => serde_json::from_str(text).map_err(|error| error.to_string()),
        SpecFormat::Yaml => {
            // The default options carry budgets against alias bombs and deep
            // nesting; the source snippet is left out to keep errors one line.
            let mut options = serde_saphyr::Options::default();
            options.with_snippet = false;
            serde_saphyr::from_str_with_options(text, options).map_err(|error| error.to_string())
        }
    }
}

/// Reads and parses the spec file at `path`.
pub fn load_spec(path: &Path) -> Result<ServiceSpecDoc, SpecFileError> {
    let format = SpecFormat::of(path).ok_or_else(|| SpecFileError::Extension {
        path: path.to_owned(),
    })?;
    let read_error = |error: std::io::Error| SpecFileError::Read {
        path: path.to_owned(),
        detail: match error.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => error.to_string(),
        },
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    // Read one byte past the limit to tell "exactly at the limit" from "over it"
    // without trusting the file's reported length (it may be a pipe).
    file.take(MAX_SPEC_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_SPEC_FILE_BYTES {
        return Err(SpecFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| SpecFileError::NotText {
        path: path.to_owned(),
    })?;
    parse_spec(&text, format).map_err(|detail| SpecFileError::Parse {
        path: path.to_owned(),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PortDoc;
    use std::collections::BTreeMap;

    const YAML: &str = "\
name: web
image: nginx:1.27
replicas: 3
ports:
  - published: 8080
    target: 80
  - { published: 5353, target: 53, protocol: udp }
env:
  MODE: prod
memory: 256m
cpus: 0.5
constraints: [\"node.labels.zone==eu\"]
restart_condition: on-failure
restart_delay: 1s
command: [\"httpd\", \"-f\"]
";

    fn expected() -> ServiceSpecDoc {
        ServiceSpecDoc {
            name: "web".into(),
            image: "nginx:1.27".into(),
            replicas: Some(3),
            ports: vec![
                PortDoc {
                    published: 8080,
                    target: 80,
                    protocol: None,
                    ..PortDoc::default()
                },
                PortDoc {
                    published: 5353,
                    target: 53,
                    protocol: Some("udp".into()),
                    ..PortDoc::default()
                },
            ],
            env: BTreeMap::from([("MODE".into(), "prod".into())]),
            memory: Some("256m".into()),
            cpus: Some(0.5),
            constraints: vec!["node.labels.zone==eu".into()],
            restart_condition: Some("on-failure".into()),
            restart_delay: Some("1s".into()),
            command: vec!["httpd".into(), "-f".into()],
            ..ServiceSpecDoc::default()
        }
    }

    #[test]
    fn yaml_and_json_read_the_same_spec() {
        assert_eq!(parse_spec(YAML, SpecFormat::Yaml), Ok(expected()));
        let json = serde_json::to_string(&expected()).unwrap();
        assert_eq!(parse_spec(&json, SpecFormat::Json), Ok(expected()));
        let sparse = r#"{"name":"web","image":"nginx:1.27","replicas":3}"#;
        let spec = parse_spec(sparse, SpecFormat::Json).unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.mode, None);
    }

    #[test]
    fn unknown_fields_are_named() {
        let cases = [
            (
                "name: web\nimage: x\nreplica: 3\n",
                SpecFormat::Yaml,
                "replica",
            ),
            (
                r#"{"name":"web","image":"x","memroy":"1g"}"#,
                SpecFormat::Json,
                "memroy",
            ),
            (
                "name: web\nports:\n  - {published: 1, target: 2, proto: tcp}\n",
                SpecFormat::Yaml,
                "proto",
            ),
        ];
        for (text, format, field) in cases {
            let error = parse_spec(text, format).unwrap_err();
            assert!(
                error.contains(&format!("unknown field `{field}`")),
                "{text:?}: {error}"
            );
        }
    }

    #[test]
    fn wrong_types_are_errors() {
        let error = parse_spec("name: web\nreplicas: three\n", SpecFormat::Yaml).unwrap_err();
        assert!(error.contains("line 2, column 11"), "{error}");
        let error = parse_spec(r#"{"replicas":"3"}"#, SpecFormat::Json).unwrap_err();
        assert!(error.contains("invalid type"), "{error}");
    }

    #[test]
    fn files_by_extension_with_limits() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = dir.path().join("web.YML");
        std::fs::write(&yaml, YAML).unwrap();
        assert_eq!(load_spec(&yaml).unwrap(), expected());

        let toml = dir.path().join("web.toml");
        std::fs::write(&toml, "name = 'web'").unwrap();
        let error = load_spec(&toml).unwrap_err().to_string();
        assert!(
            error.contains("no .json, .yaml or .yml extension"),
            "{error}"
        );

        let missing = dir.path().join("nope.json");
        let error = load_spec(&missing).unwrap_err().to_string();
        assert!(error.ends_with("nope.json: no such file"), "{error}");

        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; MAX_SPEC_FILE_BYTES as usize + 1]).unwrap();
        let error = load_spec(&big).unwrap_err();
        assert!(matches!(error, SpecFileError::TooLarge { .. }), "{error}");

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"name":"web","colour":"red"}"#).unwrap();
        let error = load_spec(&bad).unwrap_err().to_string();
        assert!(
            error.contains("bad.json: unknown field `colour`"),
            "{error}"
        );
    }
}
