//! Compose files for `shoal stack deploy -c FILE`: the Compose specification's
//! service keys that map onto shoal, read into [`ServiceSpecDoc`]s.
//!
//! Reading is three steps, each with the YAML position at hand:
//! 1. the text becomes a tree of [`Node`]s (serde-saphyr, with budgets against
//!    deep nesting, alias bombs and huge scalars);
//! 2. `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`,
//!    `${VAR?error}`, `$VAR` and `$$` in string values are interpolated from
//!    the environment and the `.env` file beside the Compose file (the
//!    environment wins), as Compose does;
//! 3. every service is checked key by key: a supported key becomes a spec
//!    field, a Compose key shoal does not support yields one warning naming the
//!    service and key (its meaning is never changed silently), and anything
//!    else is an error: `compose.yml:12:7: services.web.deploy.replicas:
//!    expected a non-negative integer, found "three"`.
//!
//! Nothing here talks to the cluster; the caller deploys what it returns.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::api::{PortDoc, ServiceSpecDoc};
use crate::units;

/// The largest Compose file (or env file) read.
pub const MAX_COMPOSE_FILE_BYTES: u64 = 1 << 20;
/// Deepest nesting of mappings and sequences accepted (a Compose file needs
/// about 8); reading recurses per level, so this also bounds the stack used.
pub const MAX_DEPTH: usize = 32;
/// Most aliases (`*name`) a file may use.
pub const MAX_ALIASES: usize = 1_000;
/// Most YAML nodes in a file.
pub const MAX_NODES: usize = 200_000;
/// Most services one stack may hold.
pub const MAX_SERVICES: usize = 1_000;

/// A YAML value with the position of every node in it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// A value and where it is in the file.
pub type Node = Spanned<Value>;

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Node>()? {
            let value = map.next_value::<Node>()?;
            entries.push((key, value));
        }
        Ok(Value::Map(entries))
    }
}

/// Why a Compose file cannot be used: where, which key, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComposeError {
    #[error("{file}:{line}:{column}: {path}: {message}")]
    At {
        file: String,
        line: u64,
        column: u64,
        /// The key path, e.g. `services.web.deploy.replicas`.
        path: String,
        message: String,
    },
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

/// A Compose file read for a stack: its services as specs (named
/// `STACK_SERVICE` by the caller), and one warning per key shoal ignores.
#[derive(Debug, Clone, PartialEq)]
pub struct ComposeStack {
    /// By the service's name in the file.
    pub services: BTreeMap<String, ServiceSpecDoc>,
    pub warnings: Vec<String>,
}

/// Reads `path` and the `.env` file beside it (when there is one), with
/// `environment` (the process's, normally) taking precedence over `.env`.
pub fn load_compose(
    path: &Path,
    environment: &BTreeMap<String, String>,
) -> Result<ComposeStack, ComposeError> {
    let file = path.display().to_string();
    let text = read_limited(path)?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dotenv_path = dir.join(".env");
    let mut variables = BTreeMap::new();
    if dotenv_path.is_file() {
        let dotenv = read_limited(&dotenv_path)?;
        variables = parse_env_file(&dotenv, &dotenv_path.display().to_string())?;
    }
    variables.extend(environment.iter().map(|(k, v)| (k.clone(), v.clone())));
    parse_compose(&text, &file, &variables, &dir)
}

fn read_limited(path: &Path) -> Result<String, ComposeError> {
    use std::io::Read;
    let fail = |message: String| ComposeError::File {
        file: path.display().to_string(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| {
        fail(match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => e.to_string(),
        })
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_COMPOSE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_COMPOSE_FILE_BYTES {
        return Err(fail(format!(
            "larger than {MAX_COMPOSE_FILE_BYTES} bytes; split the stack into several files"
        )));
    }
    String::from_utf8(bytes).map_err(|_| fail("not valid UTF-8 text".to_owned()))
}

/// Parses `KEY=VALUE` lines (a `.env` or `env_file`): blank lines and `#`
/// comments are skipped, `export ` is allowed before a key, and a value in
/// single or double quotes loses them.
pub fn parse_env_file(text: &str, file: &str) -> Result<BTreeMap<String, String>, ComposeError> {
    let mut variables = BTreeMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(ComposeError::At {
                file: file.to_owned(),
                line: index as u64 + 1,
                column: 1,
                path: "env".to_owned(),
                message: format!("{line:?} is not KEY=VALUE"),
            });
        };
        let key = key.trim();
        if key.is_empty() || key.chars().any(char::is_whitespace) {
            return Err(ComposeError::At {
                file: file.to_owned(),
                line: index as u64 + 1,
                column: 1,
                path: "env".to_owned(),
                message: format!("{key:?} is not a variable name"),
            });
        }
        let value = value.trim();
        let unquoted = [('"', '"'), ('\'', '\'')]
            .iter()
            .find_map(|(open, close)| {
                value
                    .strip_prefix(*open)
                    .and_then(|v| v.strip_suffix(*close))
            })
            .unwrap_or(value);
        variables.insert(key.to_owned(), unquoted.to_owned());
    }
    Ok(variables)
}

/// Parses a Compose file's text; `dir` is where `env_file` paths are relative to.
pub fn parse_compose(
    text: &str,
    file: &str,
    variables: &BTreeMap<String, String>,
    dir: &Path,
) -> Result<ComposeStack, ComposeError> {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_aliases = MAX_ALIASES;
    budget.max_nodes = MAX_NODES;
    budget.max_documents = 1;
    budget.max_total_scalar_bytes = MAX_COMPOSE_FILE_BYTES as usize * 4;
    options.budget = Some(budget);
    let root: Node = serde_saphyr::from_str_with_options(text, options).map_err(|error| {
        let (line, column) = error
            .location()
            .map_or((1, 1), |l| (l.line().max(1), l.column().max(1)));
        let message = error.to_string();
        let message = if message.contains("budget breached") {
            format!(
                "the file is too large once aliases are expanded, or nested too deeply \
                 (at most {MAX_NODES} nodes, {MAX_ALIASES} aliases, {MAX_DEPTH} levels)"
            )
        } else {
            message
        };
        // The library's message may carry its own position; keep one.
        let message = message
            .split_once(" at line ")
            .map_or(message.as_str(), |(head, _)| head)
            .to_owned();
        ComposeError::At {
            file: file.to_owned(),
            line,
            column,
            path: "(file)".to_owned(),
            message: format!("invalid YAML: {message}"),
        }
    })?;
    let mut reader = Reader {
        file,
        variables,
        dir,
        warnings: Vec::new(),
    };
    let services = reader.top_level(&root)?;
    Ok(ComposeStack {
        services,
        warnings: reader.warnings,
    })
}

/// Top-level keys: `services` is read, `version` and `name` are accepted (the
/// stack name comes from the command line), the rest are warned about.
const TOP_UNSUPPORTED: [&str; 5] = ["networks", "volumes", "secrets", "configs", "include"];

/// Service keys of the Compose specification shoal does not support (yet).
const SERVICE_UNSUPPORTED: [&str; 58] = [
    "annotations",
    "attach",
    "blkio_config",
    "build",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "group_add",
    "hostname",
    "init",
    "ipc",
    "isolation",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "network_mode",
    "networks",
    "oom_kill_disable",
    "pid",
    "platform",
    "privileged",
    "profiles",
    "pull_policy",
    "read_only",
    "restart",
    "secrets",
    "security_opt",
    "sysctls",
    "tmpfs",
    "user",
    "volumes",
];

/// More unsupported service keys (kept apart to keep each list readable).
const SERVICE_UNSUPPORTED_MORE: [&str; 9] = [
    "working_dir",
    "ulimits",
    "userns_mode",
    "uts",
    "volumes_from",
    "shm_size",
    "stdin_open",
    "tty",
    "storage_opt",
];

const DEPLOY_UNSUPPORTED: [&str; 1] = ["endpoint_mode"];
const PLACEMENT_UNSUPPORTED: [&str; 1] = ["preferences"];

struct Reader<'a> {
    file: &'a str,
    variables: &'a BTreeMap<String, String>,
    dir: &'a Path,
    warnings: Vec<String>,
}

/// A key path being read, e.g. `services.web.deploy`.
#[derive(Clone)]
struct Path2(String);

impl Path2 {
    fn join(&self, key: &str) -> Path2 {
        if self.0.is_empty() {
            Path2(key.to_owned())
        } else {
            Path2(format!("{}.{key}", self.0))
        }
    }
    fn index(&self, i: usize) -> Path2 {
        Path2(format!("{}[{i}]", self.0))
    }
}

impl fmt::Display for Path2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a value is shown in an error: strings quoted, others as written.
fn shown(value: &Value) -> String {
    match value {
        Value::Null => "nothing".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Str(s) => format!("{s:?}"),
        Value::Seq(_) => "a list".to_owned(),
        Value::Map(_) => "a mapping".to_owned(),
    }
}

impl<'a> Reader<'a> {
    fn error(&self, node: &Node, path: &Path2, message: impl Into<String>) -> ComposeError {
        ComposeError::At {
            file: self.file.to_owned(),
            line: node.referenced.line().max(1),
            column: node.referenced.column().max(1),
            path: path.to_string(),
            message: message.into(),
        }
    }

    /// The node of `key` in the mapping `map` (the mapping itself if absent),
    /// so an error about a key points at the key.
    fn key_of<'n>(&self, map: &'n Node, key: &str) -> &'n Node {
        let Value::Map(entries) = &map.value else {
            return map;
        };
        entries
            .iter()
            .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == key))
            .map_or(map, |(k, _)| k)
    }

    fn expected(&self, node: &Node, path: &Path2, what: &str) -> ComposeError {
        self.error(
            node,
            path,
            format!("expected {what}, found {}", shown(&node.value)),
        )
    }

    fn warn(&mut self, message: String) {
        self.warnings.push(message);
    }

    /// The entries of a mapping, keys as strings.
    fn map<'n>(
        &self,
        node: &'n Node,
        path: &Path2,
    ) -> Result<Vec<(String, &'n Node)>, ComposeError> {
        let Value::Map(entries) = &node.value else {
            return Err(self.expected(node, path, "a mapping"));
        };
        entries
            .iter()
            .map(|(key, value)| match &key.value {
                Value::Str(k) => Ok((k.clone(), value)),
                Value::Int(i) => Ok((i.to_string(), value)),
                _ => Err(self.expected(key, path, "a string key")),
            })
            .collect()
    }

    /// A scalar as text after interpolation; numbers and booleans as written.
    fn text(&self, node: &Node, path: &Path2) -> Result<String, ComposeError> {
        match &node.value {
            Value::Str(s) => {
                interpolate(s, self.variables).map_err(|message| self.error(node, path, message))
            }
            Value::Int(i) => Ok(i.to_string()),
            Value::Float(f) => Ok(f.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(self.expected(node, path, "a string")),
        }
    }

    /// One of `allowed`, or an error listing them.
    fn choice(&self, node: &Node, path: &Path2, allowed: &[&str]) -> Result<String, ComposeError> {
        let text = self.text(node, path)?;
        if allowed.contains(&text.as_str()) {
            Ok(text)
        } else {
            Err(self.error(
                node,
                path,
                format!("{text:?} is not allowed; allowed: {}", allowed.join(", ")),
            ))
        }
    }

    fn string(&self, node: &Node, path: &Path2) -> Result<String, ComposeError> {
        match &node.value {
            Value::Str(_) => self.text(node, path),
            _ => Err(self.expected(node, path, "a string")),
        }
    }

    fn non_negative(&self, node: &Node, path: &Path2) -> Result<u64, ComposeError> {
        let text = self.text(node, path)?;
        text.trim().parse::<u64>().map_err(|_| {
            let found = match &node.value {
                Value::Str(_) => format!("{text:?}"),
                other => shown(other),
            };
            self.error(
                node,
                path,
                format!("expected a non-negative integer, found {found}"),
            )
        })
    }

    fn number(&self, node: &Node, path: &Path2) -> Result<f64, ComposeError> {
        let text = self.text(node, path)?;
        text.trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .ok_or_else(|| self.error(node, path, format!("expected a number, found {text:?}")))
    }

    fn boolean(&self, node: &Node, path: &Path2) -> Result<bool, ComposeError> {
        match self.text(node, path)?.as_str() {
            "true" | "True" | "TRUE" => Ok(true),
            "false" | "False" | "FALSE" => Ok(false),
            other => Err(self.error(
                node,
                path,
                format!("expected true or false, found {other:?}"),
            )),
        }
    }

    /// A Compose duration (`1m30s`, `500ms`, `2.5s`), as shoal writes it.
    fn duration(&self, node: &Node, path: &Path2) -> Result<String, ComposeError> {
        let text = self.text(node, path)?;
        parse_go_duration(&text)
            .map(units::format_duration)
            .map_err(|why| self.error(node, path, why))
    }

    fn memory(&self, node: &Node, path: &Path2) -> Result<String, ComposeError> {
        let text = self.text(node, path)?;
        units::parse_memory(&text)
            .map(|bytes| bytes.to_string())
            .map_err(|why| self.error(node, path, why))
    }

    /// A string list, or a single string split like a shell would.
    fn command(&self, node: &Node, path: &Path2) -> Result<Vec<String>, ComposeError> {
        match &node.value {
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| self.text(item, &path.index(i)))
                .collect(),
            Value::Str(_) => {
                let text = self.text(node, path)?;
                shlex::split(&text)
                    .ok_or_else(|| self.error(node, path, "unbalanced quotes in the command"))
            }
            _ => Err(self.expected(node, path, "a string or a list of strings")),
        }
    }

    fn strings(&self, node: &Node, path: &Path2) -> Result<Vec<String>, ComposeError> {
        match &node.value {
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| self.text(item, &path.index(i)))
                .collect(),
            Value::Str(_) => Ok(vec![self.text(node, path)?]),
            _ => Err(self.expected(node, path, "a string or a list of strings")),
        }
    }

    /// `KEY=VALUE` list or mapping. A bare `KEY` (in a list) or `KEY:` with no
    /// value (in a mapping) takes the value of the variable of that name, and
    /// is left out when there is none.
    fn key_values(
        &self,
        node: &Node,
        path: &Path2,
    ) -> Result<BTreeMap<String, String>, ComposeError> {
        let mut out = BTreeMap::new();
        match &node.value {
            Value::Map(_) => {
                for (key, value) in self.map(node, path)? {
                    // `KEY:` with no value passes the variable through, as a bare
                    // `KEY` in a list does.
                    let value = match &value.value {
                        Value::Null => match self.variables.get(&key) {
                            Some(v) => v.clone(),
                            None => continue,
                        },
                        _ => self.text(value, &path.join(&key))?,
                    };
                    out.insert(key, value);
                }
            }
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let entry = self.text(item, &path.index(i))?;
                    match entry.split_once('=') {
                        Some((key, value)) => {
                            out.insert(key.to_owned(), value.to_owned());
                        }
                        None => {
                            if let Some(value) = self.variables.get(&entry) {
                                out.insert(entry, value.clone());
                            }
                        }
                    }
                }
            }
            _ => return Err(self.expected(node, path, "a list of KEY=VALUE or a mapping")),
        }
        Ok(out)
    }

    fn top_level(&mut self, root: &Node) -> Result<BTreeMap<String, ServiceSpecDoc>, ComposeError> {
        let top = Path2(String::new());
        let mut services = None;
        for (key, value) in self.map(root, &top)? {
            match key.as_str() {
                "services" => services = Some(value),
                "version" | "name" => {}
                k if k.starts_with("x-") => {}
                k if TOP_UNSUPPORTED.contains(&k) => self.warn(format!(
                    "{k}: top-level {k} are not supported by shoal and are ignored"
                )),
                other => {
                    return Err(self.error(
                        self.key_of(root, other),
                        &top.join(other),
                        "not a Compose key; allowed at the top: services, version, name, \
                         networks, volumes, secrets, configs, x-*",
                    ))
                }
            }
        }
        let Some(services) = services else {
            return Err(ComposeError::File {
                file: self.file.to_owned(),
                message: "no services: a Compose file for a stack needs a services mapping"
                    .to_owned(),
            });
        };
        let path = Path2("services".to_owned());
        let entries = self.map(services, &path)?;
        if entries.len() > MAX_SERVICES {
            return Err(self.error(
                services,
                &path,
                format!("at most {MAX_SERVICES} services in one stack"),
            ));
        }
        let mut out = BTreeMap::new();
        for (name, node) in entries {
            let doc = self.service(&name, node, &path.join(&name))?;
            out.insert(name, doc);
        }
        Ok(out)
    }

    fn service(
        &mut self,
        name: &str,
        node: &Node,
        path: &Path2,
    ) -> Result<ServiceSpecDoc, ComposeError> {
        let mut doc = ServiceSpecDoc {
            name: name.to_owned(),
            ..ServiceSpecDoc::default()
        };
        let mut environment = BTreeMap::new();
        let mut env_files = BTreeMap::new();
        for (key, value) in self.map(node, path)? {
            let at = path.join(&key);
            match key.as_str() {
                "image" => doc.image = self.string(value, &at)?,
                "command" => doc.args = self.command(value, &at)?,
                "entrypoint" => doc.command = self.command(value, &at)?,
                "environment" => environment = self.key_values(value, &at)?,
                "env_file" => env_files = self.env_files(value, &at)?,
                "labels" => doc.labels = self.key_values(value, &at)?,
                "ports" => doc.ports = self.ports(value, &at)?,
                "healthcheck" => self.healthcheck(value, &at, &mut doc)?,
                "stop_grace_period" => doc.stop_grace_period = Some(self.duration(value, &at)?),
                "stop_signal" => doc.stop_signal = Some(self.string(value, &at)?),
                "deploy" => self.deploy(name, value, &at, &mut doc)?,
                k if k.starts_with("x-") => {}
                k if SERVICE_UNSUPPORTED.contains(&k) || SERVICE_UNSUPPORTED_MORE.contains(&k) => {
                    self.warn(format!(
                        "services.{name}.{k}: not supported by shoal; ignored"
                    ))
                }
                _ => {
                    return Err(self.error(
                        self.key_of(node, &key),
                        &at,
                        "not a Compose service key; supported: image, command, entrypoint, \
                         environment, env_file, ports, labels, healthcheck, stop_grace_period, \
                         stop_signal, deploy",
                    ))
                }
            }
        }
        if doc.image.is_empty() {
            return Err(self.error(
                node,
                path,
                "a service needs an image (build is not supported)",
            ));
        }
        // environment overrides env_file, as in Compose.
        env_files.extend(environment);
        doc.env = env_files;
        Ok(doc)
    }

    fn env_files(
        &self,
        node: &Node,
        path: &Path2,
    ) -> Result<BTreeMap<String, String>, ComposeError> {
        let mut out = BTreeMap::new();
        for (i, file) in self.strings(node, path)?.into_iter().enumerate() {
            let full: PathBuf = self.dir.join(&file);
            let text = read_limited(&full).map_err(|e| match e {
                ComposeError::File { message, .. } => self.error(
                    node,
                    &path.index(i),
                    format!("env file {}: {message}", full.display()),
                ),
                other => other,
            })?;
            out.extend(parse_env_file(&text, &full.display().to_string())?);
        }
        Ok(out)
    }

    fn ports(&self, node: &Node, path: &Path2) -> Result<Vec<PortDoc>, ComposeError> {
        let Value::Seq(items) = &node.value else {
            return Err(self.expected(node, path, "a list of ports"));
        };
        let mut ports = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = path.index(i);
            match &item.value {
                Value::Map(_) => ports.push(self.long_port(item, &at)?),
                _ => ports.push(self.short_port(item, &at)?),
            }
        }
        Ok(ports)
    }

    /// `PUBLISHED:TARGET[/PROTOCOL]`; a host address in front is refused, since
    /// shoal publishes on every address.
    fn short_port(&self, node: &Node, path: &Path2) -> Result<PortDoc, ComposeError> {
        let text = self.text(node, path)?;
        let parts: Vec<&str> = text.split(':').collect();
        if parts.len() == 3 {
            return Err(self.error(
                node,
                path,
                format!(
                    "{text:?} names a host address; shoal publishes on every address, so \
                     write PUBLISHED:TARGET"
                ),
            ));
        }
        if parts.len() == 1 {
            return Err(self.error(
                node,
                path,
                format!("{text:?} has no published port; write PUBLISHED:TARGET, e.g. 8080:80"),
            ));
        }
        if text.contains('-') {
            return Err(self.error(
                node,
                path,
                format!("{text:?}: port ranges are not supported"),
            ));
        }
        units::parse_port(&text).map_err(|why| self.error(node, path, why))
    }

    fn long_port(&self, node: &Node, path: &Path2) -> Result<PortDoc, ComposeError> {
        let mut target = None;
        let mut published = None;
        let mut protocol = None;
        let mut mode = None;
        for (key, value) in self.map(node, path)? {
            let at = path.join(&key);
            match key.as_str() {
                "target" => target = Some(self.port_number(value, &at)?),
                "published" => published = Some(self.port_number(value, &at)?),
                "protocol" => protocol = Some(self.choice(value, &at, &["tcp", "udp"])?),
                "mode" => mode = Some(self.choice(value, &at, &crate::api::PUBLISH_MODES)?),
                "name" | "app_protocol" | "host_ip" => {
                    return Err(self.error(value, &at, "not supported by shoal"));
                }
                _ => {
                    return Err(self.error(
                        self.key_of(node, &key),
                        &at,
                        "not a port key; allowed: target, published, protocol, mode",
                    ))
                }
            }
        }
        let target = target.ok_or_else(|| self.error(node, path, "a port needs a target"))?;
        let published =
            published.ok_or_else(|| self.error(node, path, "a port needs a published port"))?;
        Ok(PortDoc {
            published,
            target,
            protocol,
            mode,
            policy: None,
            proxy_protocol: None,
        })
    }

    fn port_number(&self, node: &Node, path: &Path2) -> Result<u16, ComposeError> {
        let text = self.text(node, path)?;
        text.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                self.error(
                    node,
                    path,
                    format!("expected a port from 1 to 65535, found {text:?}"),
                )
            })
    }

    fn healthcheck(
        &self,
        node: &Node,
        path: &Path2,
        doc: &mut ServiceSpecDoc,
    ) -> Result<(), ComposeError> {
        for (key, value) in self.map(node, path)? {
            let at = path.join(&key);
            match key.as_str() {
                "test" => match &value.value {
                    Value::Str(_) => doc.health_cmd = Some(self.text(value, &at)?),
                    Value::Seq(_) => {
                        let test = self.strings(value, &at)?;
                        match test.first().map(String::as_str) {
                            Some("CMD-SHELL") if test.len() == 2 => {
                                doc.health_cmd = Some(test[1].clone())
                            }
                            Some("NONE") if test.len() == 1 => doc.no_healthcheck = true,
                            Some("CMD") if test.len() >= 2 => doc.health_test = Some(test),
                            _ => {
                                return Err(self.error(
                                    value,
                                    &at,
                                    "expected [\"CMD\", ARGS...], [\"CMD-SHELL\", COMMAND] or \
                                     [\"NONE\"]",
                                ))
                            }
                        }
                    }
                    _ => return Err(self.expected(value, &at, "a string or a list")),
                },
                "interval" => doc.health_interval = Some(self.duration(value, &at)?),
                "timeout" => doc.health_timeout = Some(self.duration(value, &at)?),
                "retries" => doc.health_retries = Some(self.non_negative(value, &at)?),
                "start_period" => doc.health_start_period = Some(self.duration(value, &at)?),
                "disable" => {
                    if self.boolean(value, &at)? {
                        doc.no_healthcheck = true;
                    }
                }
                "start_interval" => {
                    return Err(self.error(value, &at, "not supported by shoal"));
                }
                _ => {
                    return Err(self.error(
                        self.key_of(node, &key),
                        &at,
                        "not a healthcheck key; allowed: test, interval, timeout, retries, \
                         start_period, disable",
                    ))
                }
            }
        }
        Ok(())
    }

    fn deploy(
        &mut self,
        name: &str,
        node: &Node,
        path: &Path2,
        doc: &mut ServiceSpecDoc,
    ) -> Result<(), ComposeError> {
        for (key, value) in self.map(node, path)? {
            let at = path.join(&key);
            match key.as_str() {
                "mode" => doc.mode = Some(self.choice(value, &at, &["replicated", "global"])?),
                "replicas" => doc.replicas = Some(self.non_negative(value, &at)?),
                "resources" => self.resources(value, &at, doc)?,
                "restart_policy" => self.restart_policy(value, &at, doc)?,
                "update_config" => self.update_config(value, &at, doc, false)?,
                "rollback_config" => self.update_config(value, &at, doc, true)?,
                "placement" => self.placement(name, value, &at, doc)?,
                "labels" => {
                    // Service labels go on the service's containers too.
                    let labels = self.key_values(value, &at)?;
                    for (k, v) in labels {
                        doc.labels.entry(k).or_insert(v);
                    }
                }
                k if DEPLOY_UNSUPPORTED.contains(&k) => self.warn(format!(
                    "services.{name}.deploy.{k}: not supported by shoal; ignored"
                )),
                _ => {
                    return Err(self.error(
                        self.key_of(node, &key),
                        &at,
                        "not a deploy key; supported: mode, replicas, resources, \
                         restart_policy, update_config, rollback_config, placement, labels",
                    ))
                }
            }
        }
        Ok(())
    }

    fn resources(
        &self,
        node: &Node,
        path: &Path2,
        doc: &mut ServiceSpecDoc,
    ) -> Result<(), ComposeError> {
        for (group, section) in self.map(node, path)? {
            let at = path.join(&group);
            let limits = match group.as_str() {
                "limits" => true,
                "reservations" => false,
                _ => {
                    return Err(self.error(
                        self.key_of(node, &group),
                        &at,
                        "not a resources key; allowed: limits, reservations",
                    ))
                }
            };
            for (key, value) in self.map(section, &at)? {
                let at = at.join(&key);
                match (key.as_str(), limits) {
                    ("cpus", true) => doc.cpus = Some(self.cpus(value, &at)?),
                    ("cpus", false) => doc.reserve_cpus = Some(self.cpus(value, &at)?),
                    ("memory", true) => doc.memory = Some(self.memory(value, &at)?),
                    ("memory", false) => doc.reserve_memory = Some(self.memory(value, &at)?),
                    ("pids", _) | ("devices", _) | ("generic_resources", _) => {
                        return Err(self.error(value, &at, "not supported by shoal"))
                    }
                    _ => {
                        return Err(self.error(
                            self.key_of(section, &key),
                            &at,
                            "not a resources key; allowed: cpus, memory",
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    fn cpus(&self, node: &Node, path: &Path2) -> Result<f64, ComposeError> {
        let cpus = self.number(node, path)?;
        units::nano_cpus(cpus).map_err(|why| self.error(node, path, why))?;
        Ok(cpus)
    }

    fn restart_policy(
        &self,
        node: &Node,
        path: &Path2,
        doc: &mut ServiceSpecDoc,
    ) -> Result<(), ComposeError> {
        for (key, value) in self.map(node, path)? {
            let at = path.join(&key);
            match key.as_str() {
                "condition" => {
                    doc.restart_condition =
                        Some(self.choice(value, &at, &["none", "on-failure", "any"])?)
                }
                "delay" => doc.restart_delay = Some(self.duration(value, &at)?),
                "max_attempts" => doc.restart_max_attempts = Some(self.non_negative(value, &at)?),
                "window" => doc.restart_window = Some(self.duration(value, &at)?),
                _ => {
                    return Err(self.error(
                        self.key_of(node, &key),
                        &at,
                        "not a restart_policy key; allowed: condition, delay, max_attempts, window",
                    ))
                }
            }
        }
        Ok(())
    }

    fn update_config(
        &self,
        node: &Node,
        path: &Path2,
        doc: &mut ServiceSpecDoc,
        rollback: bool,
    ) -> Result<(), ComposeError> {
        let mut parallelism = None;
        let mut delay = None;
        let mut failure_action = None;
        let mut monitor = None;
        let mut ratio = None;
        let mut order = None;
        for (key, value) in self.map(node, path)? {
            let at = path.join(&key);
            match key.as_str() {
                "parallelism" => parallelism = Some(self.non_negative(value, &at)?),
                "delay" => delay = Some(self.duration(value, &at)?),
                "monitor" => monitor = Some(self.duration(value, &at)?),
                "max_failure_ratio" => {
                    let r = self.number(value, &at)?;
                    if !(0.0..=1.0).contains(&r) {
                        return Err(self.error(
                            value,
                            &at,
                            format!("{r} is not a ratio from 0 to 1"),
                        ));
                    }
                    ratio = Some(r);
                }
                "failure_action" => {
                    let allowed: &[&str] = if rollback {
                        &["pause", "continue"]
                    } else {
                        &["pause", "continue", "rollback"]
                    };
                    failure_action = Some(self.choice(value, &at, allowed)?);
                }
                "order" => order = Some(self.choice(value, &at, &["stop-first", "start-first"])?),
                _ => {
                    return Err(self.error(
                        self.key_of(node, &key),
                        &at,
                        "not an update key; allowed: parallelism, delay, failure_action, monitor, \
                         max_failure_ratio, order",
                    ))
                }
            }
        }
        if rollback {
            doc.rollback_parallelism = parallelism;
            doc.rollback_delay = delay;
            doc.rollback_failure_action = failure_action;
            doc.rollback_monitor = monitor;
            doc.rollback_max_failure_ratio = ratio;
            doc.rollback_order = order;
        } else {
            doc.update_parallelism = parallelism;
            doc.update_delay = delay;
            doc.update_failure_action = failure_action;
            doc.update_monitor = monitor;
            doc.update_max_failure_ratio = ratio;
            doc.update_order = order;
        }
        Ok(())
    }

    fn placement(
        &mut self,
        name: &str,
        node: &Node,
        path: &Path2,
        doc: &mut ServiceSpecDoc,
    ) -> Result<(), ComposeError> {
        for (key, value) in self.map(node, path)? {
            let at = path.join(&key);
            match key.as_str() {
                "constraints" => {
                    let constraints = self.strings(value, &at)?;
                    for (i, c) in constraints.iter().enumerate() {
                        crate::api::validate_constraint(c)
                            .map_err(|why| self.error(value, &at.index(i), why))?;
                    }
                    doc.constraints = constraints;
                }
                "max_replicas_per_node" => doc.max_per_node = Some(self.non_negative(value, &at)?),
                k if PLACEMENT_UNSUPPORTED.contains(&k) => self.warn(format!(
                    "services.{name}.deploy.placement.{k}: not supported by shoal; ignored"
                )),
                _ => {
                    return Err(self.error(
                        self.key_of(node, &key),
                        &at,
                        "not a placement key; allowed: constraints, max_replicas_per_node",
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Interpolates `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`,
/// `${VAR?err}`, `$VAR` and `$$` (a literal `$`). `:-` and `:?` treat an empty
/// variable like an unset one; a variable that is unset without a default is
/// empty, as in Compose.
pub fn interpolate(input: &str, variables: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = closing_brace(body) else {
                return Err(format!("unclosed \"${{\" in {input:?}"));
            };
            out.push_str(&expand(&body[..end], variables)?);
            rest = &body[end + 1..];
        } else {
            let len = after
                .char_indices()
                .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
                .map_or(after.len(), |(i, _)| i);
            if len == 0 {
                out.push('$');
            } else {
                out.push_str(variables.get(&after[..len]).map_or("", String::as_str));
            }
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Where the `}` closing an opened `${` is in `body` (the text after it),
/// skipping nested `${...}` in defaults.
fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = body.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'{' if i > 0 && bytes[i - 1] == b'$' => depth += 1,
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn expand(body: &str, variables: &BTreeMap<String, String>) -> Result<String, String> {
    let name_len = body
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
        .map_or(body.len(), |(i, _)| i);
    let (name, op) = body.split_at(name_len);
    if name.is_empty() {
        return Err(format!("\"${{{body}}}\" names no variable"));
    }
    let value = variables.get(name);
    let set_nonempty = value.is_some_and(|v| !v.is_empty());
    let result = if op.is_empty() {
        value.cloned().unwrap_or_default()
    } else if let Some(default) = op.strip_prefix(":-") {
        if set_nonempty {
            value.cloned().unwrap_or_default()
        } else {
            interpolate(default, variables)?
        }
    } else if let Some(default) = op.strip_prefix('-') {
        match value {
            Some(v) => v.clone(),
            None => interpolate(default, variables)?,
        }
    } else if let Some(message) = op.strip_prefix(":?") {
        if !set_nonempty {
            return Err(format!("variable {name} is required: {message}"));
        }
        value.cloned().unwrap_or_default()
    } else if let Some(message) = op.strip_prefix('?') {
        match value {
            Some(v) => v.clone(),
            None => return Err(format!("variable {name} is required: {message}")),
        }
    } else {
        return Err(format!(
            "\"${{{body}}}\" is not an interpolation; allowed: ${{VAR}}, ${{VAR:-default}}, \
             ${{VAR-default}}, ${{VAR:?error}}, ${{VAR?error}}"
        ));
    };
    Ok(result)
}

/// Parses a Go-style duration as Compose writes them: one or more
/// `NUMBER UNIT` parts (`1m30s`, `1.5s`, `300ms`), units `ns`, `us`, `ms`,
/// `s`, `m`, `h`; a bare `0` is zero.
pub fn parse_go_duration(input: &str) -> Result<std::time::Duration, String> {
    let text = input.trim();
    let bad = || format!("{input:?} is not a duration; write e.g. 10s, 1m30s, 500ms");
    if text == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if text.is_empty() {
        return Err(bad());
    }
    let mut total_ns: f64 = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
            .map_or(rest.len(), |(i, _)| i);
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3_600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total_ns += number * scale;
    }
    if !total_ns.is_finite() || total_ns > 1e18 {
        return Err(bad());
    }
    // shoal counts durations in whole milliseconds.
    Ok(std::time::Duration::from_millis(
        (total_ns / 1e6).round() as u64
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every folder under `tests/compose` holds a `compose.yml` (and maybe a
    /// `.env` and env files) and `expected.txt`: the services and warnings as
    /// JSON, or the one-line error. `SHOAL_UPDATE_GOLDEN=1` rewrites them.
    #[test]
    fn compose_files_match_their_golden_output() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compose");
        let environment: BTreeMap<String, String> = [("FROM_SHELL", "shell"), ("TAG", "2")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        cases.sort();
        assert!(
            cases.len() >= 10,
            "fixtures not found under {}",
            root.display()
        );
        let update = std::env::var("SHOAL_UPDATE_GOLDEN").is_ok_and(|v| v == "1");
        let mut failures = Vec::new();
        for case in cases {
            let file = case.join("compose.yml");
            // The case name stands for the path so outputs do not depend on
            // where the checkout is.
            let got = match load_compose(&file, &environment) {
                Ok(stack) => serde_json::to_string_pretty(&without_defaults(serde_json::json!({
                    "services": stack.services,
                    "warnings": stack.warnings,
                })))
                .unwrap(),
                Err(error) => error.to_string(),
            };
            let got = got.replace(&root.display().to_string(), "tests/compose") + "\n";
            let expected_path = case.join("expected.txt");
            if update {
                std::fs::write(&expected_path, &got).unwrap();
                continue;
            }
            let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
            if got != expected {
                failures.push(format!(
                    "{}:\n--- expected\n{expected}--- got\n{got}",
                    case.display()
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// The value without nulls, `false`, and empty lists and maps, so a golden
    /// file shows only what the Compose file set.
    fn without_defaults(value: serde_json::Value) -> serde_json::Value {
        use serde_json::Value as J;
        match value {
            J::Object(map) => J::Object(
                map.into_iter()
                    .map(|(k, v)| (k, without_defaults(v)))
                    .filter(|(_, v)| match v {
                        J::Null | J::Bool(false) => false,
                        J::Array(a) => !a.is_empty(),
                        J::Object(o) => !o.is_empty(),
                        _ => true,
                    })
                    .collect(),
            ),
            J::Array(items) => J::Array(items.into_iter().map(without_defaults).collect()),
            other => other,
        }
    }

    #[test]
    fn interpolation_follows_compose() {
        let vars: BTreeMap<String, String> = [("A", "1"), ("EMPTY", "")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cases = [
            ("x${A}y", Ok("x1y")),
            ("$A-$A", Ok("1-1")),
            ("${MISSING}", Ok("")),
            ("${MISSING:-d}", Ok("d")),
            ("${EMPTY:-d}", Ok("d")),
            ("${EMPTY-d}", Ok("")),
            ("${MISSING-${A}}", Ok("1")),
            ("$$A", Ok("$A")),
            ("5$", Ok("5$")),
            ("${A:?need A}", Ok("1")),
            (
                "${EMPTY:?need it}",
                Err("variable EMPTY is required: need it"),
            ),
            ("${MISSING?gone}", Err("variable MISSING is required: gone")),
            ("${A", Err("unclosed")),
            ("${}", Err("names no variable")),
            ("${A:x}", Err("is not an interpolation")),
        ];
        for (input, want) in cases {
            match (interpolate(input, &vars), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{input}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{input}: {got}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn go_durations() {
        let ms = |s: &str| parse_go_duration(s).map(|d| d.as_millis());
        assert_eq!(ms("1m30s"), Ok(90_000));
        assert_eq!(ms("1.5s"), Ok(1_500));
        assert_eq!(ms("300ms"), Ok(300));
        assert_eq!(ms("1h"), Ok(3_600_000));
        assert_eq!(ms("0"), Ok(0));
        for bad in ["", "5", "5x", "s", "1m30", "-1s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn env_files_strip_quotes_and_comments_and_name_bad_lines() {
        let vars = parse_env_file("A=1\n# c\n\nexport B='two'\nC=\"3\"\n", "x.env").unwrap();
        assert_eq!(vars.len(), 3);
        assert_eq!(vars["B"], "two");
        assert_eq!(vars["C"], "3");
        let error = parse_env_file("A=1\nnot a pair\n", "x.env").unwrap_err();
        assert_eq!(
            error.to_string(),
            "x.env:2:1: env: \"not a pair\" is not KEY=VALUE"
        );
    }
}
