//! A node's configuration (what `zest serve` reads): the file of CONTRACT.md §9, then the flags of
//! §8 over it. Every setting has a default, so no file is needed. Relative paths
//! in the file are taken from the file's directory; relative flags from the
//! working directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zest_runtime::watch::WatchConfig;
use zest_runtime::{ExtensionsConfig, Limits};

use crate::auth::Scope;
pub use crate::auth::TokenSource;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub tokens: Vec<TokenSource>,
    /// App directories; empty means the bundled demo app.
    pub apps: Vec<PathBuf>,
    pub extensions: ExtensionsConfig,
    pub limits: Limits,
    pub max_request_bytes: u32,
    /// `control.max_connections`: connections at once, HTTP and WebSocket.
    pub max_connections: u32,
    /// `[cluster]`: `None` for a standalone node.
    pub cluster: Option<ClusterConfig>,
    /// `[watch]` or `--watch`: `None` when off.
    pub watch: Option<WatchConfig>,
    /// `[telemetry] otlp`: the URL spans are exported to (its traces
    /// endpoint, `crate::traces::endpoint`); `None`: not exported.
    pub otlp: Option<String>,
}

/// `[cluster]` (CONTRACT.md §10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub name: String,
    /// This member's id.
    pub node: String,
    pub etcd: Vec<String>,
    /// Where peers reach this node; `None`: the address it listens on.
    pub advertise: Option<String>,
    pub token_file: PathBuf,
    pub lease_ttl: Duration,
    pub prepare_timeout: Duration,
}

/// The flags of `zest serve`.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub config: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub apps: Vec<PathBuf>,
    pub extensions: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub token: Option<String>,
    /// `--watch`: watch mode on, whatever the file says.
    pub watch: bool,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:4780";
const DEFAULT_MAX_REQUEST_BYTES: u32 = 4 << 20;
const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
const A_DAY_MS: u64 = 24 * 3600 * 1000;
const MAX_MEMORY_MB: u32 = 4096;
/// wasmtime's default guard region after each linear memory.
const GUARD_MIB: u64 = 32;
/// Of the 128 TiB a Linux process may address, what the instance pools may take.
const MAX_RESERVED_MIB: u64 = 64 << 20;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    node: NodeSection,
    #[serde(default)]
    control: ControlSection,
    #[serde(default)]
    apps: Vec<AppEntry>,
    #[serde(default)]
    extensions: ExtensionsSection,
    #[serde(default)]
    limits: LimitsSection,
    cluster: Option<ClusterSection>,
    #[serde(default)]
    watch: WatchSection,
    #[serde(default)]
    telemetry: TelemetrySection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TelemetrySection {
    otlp: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchSection {
    #[serde(default)]
    enabled: bool,
    debounce_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterSection {
    name: Option<String>,
    node: Option<String>,
    etcd: Option<Vec<String>>,
    advertise: Option<String>,
    token_file: Option<PathBuf>,
    lease_ttl_ms: Option<u64>,
    prepare_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSection {
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlSection {
    listen: Option<String>,
    #[serde(default)]
    tokens: Vec<TokenEntry>,
    max_request_bytes: Option<u32>,
    max_connections: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    token_file: PathBuf,
    scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppEntry {
    dir: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtensionsSection {
    roots: Option<Vec<PathBuf>>,
    rustc: Option<String>,
    javascript: Option<String>,
    python: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    call_timeout_ms: Option<u64>,
    memory_mb: Option<u32>,
    build_timeout_ms: Option<u64>,
    drain_timeout_ms: Option<u64>,
    instances: Option<u32>,
    module_mb: Option<u32>,
}

impl ServeConfig {
    /// The file (when given), then the flags over it. Errors name the file and
    /// the problem.
    pub fn load(flags: &Flags) -> Result<ServeConfig, String> {
        match &flags.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
                ServeConfig::parse(&text, path, flags)
            }
            None => ServeConfig::from_file(File::default(), absolute(Path::new(".")), flags),
        }
    }

    /// `text` as the file at `path` (relative paths in it are taken from its
    /// directory), then `flags` over it.
    pub fn parse(text: &str, path: &Path, flags: &Flags) -> Result<ServeConfig, String> {
        let file: File = toml::from_str(text).map_err(|err| format!("{}: {err}", path.display()))?;
        let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
        ServeConfig::from_file(file, absolute(dir), flags)
    }

    fn from_file(file: File, base: PathBuf, flags: &Flags) -> Result<ServeConfig, String> {
        let origin = flags.config.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "flags".into());
        let at = |key: &str, problem: String| format!("{origin}: {key}: {problem}");
        let in_file = |path: &Path| if path.is_absolute() { path.to_path_buf() } else { base.join(path) };

        let listen = match (&flags.listen, &file.control.listen) {
            (Some(addr), _) => *addr,
            (None, Some(text)) => text.parse().map_err(|err| at("control.listen", format!("{text:?}: {err}")))?,
            (None, None) => DEFAULT_LISTEN.parse().expect("the default address parses"),
        };
        let mut tokens = Vec::new();
        for (index, entry) in file.control.tokens.iter().enumerate() {
            let key = format!("control.tokens[{index}].scopes");
            if entry.scopes.is_empty() {
                return Err(at(&key, "a token needs at least one scope (read, call, admin)".into()));
            }
            let scopes = entry
                .scopes
                .iter()
                .map(|s| {
                    Scope::parse(s).ok_or_else(|| at(&key, format!("unknown scope {s:?}; use read, call or admin")))
                })
                .collect::<Result<_, _>>()?;
            tokens.push(TokenSource::File { path: in_file(&entry.token_file), scopes });
        }
        if let Some(token) = &flags.token {
            if token.trim().is_empty() {
                return Err(at("--token", "the token is empty".into()));
            }
            tokens.push(TokenSource::Inline(token.trim().to_string()));
        }
        // App directories are absolute: a cluster member sends its manifests
        // to others, and status shows where each app lives.
        let apps = if flags.apps.is_empty() {
            file.apps.iter().map(|app| in_file(&app.dir)).collect()
        } else {
            flags.apps.iter().map(|dir| absolute(dir)).collect()
        };
        let defaults = ExtensionsConfig::default();
        let roots = match (&flags.extensions, &file.extensions.roots) {
            (Some(dir), _) => vec![dir.clone()],
            (None, Some(roots)) => roots.iter().map(|root| in_file(root)).collect(),
            (None, None) => defaults.roots,
        };
        let rustc = match file.extensions.rustc.as_deref() {
            None | Some("auto") => None,
            Some(path) => Some(in_file(Path::new(path))),
        };
        // A tool's path is taken from the file's directory; a bare name
        // (`componentize-py`) is looked up on the PATH when a build needs it.
        let tool = |value: Option<&str>| match value {
            None | Some("auto") => None,
            Some(name) if !name.contains('/') => Some(PathBuf::from(name)),
            Some(path) => Some(in_file(Path::new(path))),
        };
        let javascript = tool(file.extensions.javascript.as_deref());
        let python = tool(file.extensions.python.as_deref());
        let data_dir = match (&flags.data_dir, &file.node.data_dir) {
            (Some(dir), _) => dir.clone(),
            (None, Some(dir)) => in_file(dir),
            (None, None) => PathBuf::from(".zest"),
        };
        let mut limits = Limits::default();
        let l = &file.limits;
        let positive = |key: &str, value: u64| {
            if value == 0 {
                Err(at(&format!("limits.{key}"), "must be greater than 0".into()))
            } else if key.ends_with("_ms") && value > A_DAY_MS {
                Err(at(&format!("limits.{key}"), format!("must be at most {A_DAY_MS} (a day)")))
            } else {
                Ok(value)
            }
        };
        if let Some(ms) = l.call_timeout_ms {
            limits.call_timeout = Duration::from_millis(positive("call_timeout_ms", ms)?);
        }
        if let Some(mb) = l.memory_mb {
            limits.memory_mb = positive("memory_mb", mb.into())? as u32;
        }
        if let Some(ms) = l.build_timeout_ms {
            limits.build_timeout = Duration::from_millis(positive("build_timeout_ms", ms)?);
        }
        if let Some(ms) = l.drain_timeout_ms {
            if ms > A_DAY_MS {
                return Err(at("limits.drain_timeout_ms", format!("must be at most {A_DAY_MS} (a day)")));
            }
            limits.drain_timeout = Duration::from_millis(ms);
        }
        if let Some(n) = l.instances {
            limits.instances = positive("instances", n.into())? as u32;
        }
        if let Some(mb) = l.module_mb {
            limits.module_mb = positive("module_mb", mb.into())? as u32;
            if mb > 1024 {
                return Err(at("limits.module_mb", "must be at most 1024".into()));
            }
        }
        if limits.memory_mb > MAX_MEMORY_MB {
            return Err(at("limits.memory_mb", format!("must be at most {MAX_MEMORY_MB} (a wasm32 memory's 4 GiB)")));
        }
        // Each engine reserves instances × (memory + guard) of address space.
        let reserved_mib = 2 * u64::from(limits.instances) * (u64::from(limits.memory_mb) + GUARD_MIB);
        if reserved_mib > MAX_RESERVED_MIB {
            return Err(at(
                "limits.instances",
                format!(
                    "{} instances of {} MiB would reserve {} TiB of address space (at most {} TiB); lower instances or memory_mb",
                    limits.instances,
                    limits.memory_mb,
                    reserved_mib >> 20,
                    MAX_RESERVED_MIB >> 20
                ),
            ));
        }
        let max_request_bytes = file.control.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES);
        if max_request_bytes < 1024 {
            return Err(at("control.max_request_bytes", "must be at least 1024".into()));
        }
        let max_connections = file.control.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if !(32..=1_000_000).contains(&max_connections) {
            return Err(at("control.max_connections", "must be between 32 and 1000000".into()));
        }
        let cluster = match &file.cluster {
            None => None,
            Some(section) => Some(cluster_config(section, &at, &in_file)?),
        };
        let debounce_ms = file.watch.debounce_ms.unwrap_or(DEFAULT_DEBOUNCE_MS);
        if !(1..=60_000).contains(&debounce_ms) {
            return Err(at("watch.debounce_ms", "must be between 1 and 60000".into()));
        }
        let watch =
            (flags.watch || file.watch.enabled).then(|| WatchConfig { debounce: Duration::from_millis(debounce_ms) });
        if watch.is_some() && cluster.is_some() {
            let key = if flags.watch { "--watch" } else { "watch.enabled" };
            return Err(at(
                key,
                "watch mode reloads this node alone, and a cluster member ([cluster]) changes only with its cluster; \
                 reload through the cluster instead"
                    .into(),
            ));
        }
        let otlp = match &file.telemetry.otlp {
            None => None,
            Some(url) => Some(crate::traces::endpoint(url).map_err(|problem| at("telemetry.otlp", problem))?),
        };
        Ok(ServeConfig {
            data_dir,
            listen,
            tokens,
            apps,
            extensions: ExtensionsConfig { roots, rustc, javascript, python },
            limits,
            max_request_bytes,
            max_connections,
            cluster,
            watch,
            otlp,
        })
    }
}

/// `path` from the working directory (lexically: links are left alone).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

const DEFAULT_DEBOUNCE_MS: u64 = 200;
const DEFAULT_ETCD: &str = "http://127.0.0.1:2379";
const DEFAULT_LEASE_TTL_MS: u64 = 5000;
const DEFAULT_PREPARE_TIMEOUT_MS: u64 = 10_000;

fn cluster_config(
    section: &ClusterSection,
    at: &dyn Fn(&str, String) -> String,
    in_file: &dyn Fn(&Path) -> PathBuf,
) -> Result<ClusterConfig, String> {
    let id = |key: &str, value: &Option<String>| -> Result<String, String> {
        let value = value.clone().ok_or_else(|| at(&format!("cluster.{key}"), "is required".into()))?;
        zest_runtime::abi::check_name(&value).map_err(|problem| at(&format!("cluster.{key}"), problem))?;
        Ok(value)
    };
    let name = id("name", &section.name)?;
    let node = id("node", &section.node)?;
    let etcd = section.etcd.clone().unwrap_or_else(|| vec![DEFAULT_ETCD.to_string()]);
    if etcd.is_empty() {
        return Err(at("cluster.etcd", "needs at least one endpoint".into()));
    }
    if let Some(bad) = etcd.iter().find(|endpoint| !endpoint.starts_with("http://")) {
        return Err(at("cluster.etcd", format!("{bad:?}: endpoints are http://HOST:PORT (TLS is not supported yet)")));
    }
    if let Some(advertise) = &section.advertise {
        if !advertise.starts_with("http://") {
            return Err(at("cluster.advertise", format!("{advertise:?}: an address is http://HOST:PORT")));
        }
    }
    let token_file = section.token_file.as_deref().map(in_file).ok_or_else(|| {
        at("cluster.token_file", "is required: members authenticate to each other with the token it holds".into())
    })?;
    let lease_ttl_ms = section.lease_ttl_ms.unwrap_or(DEFAULT_LEASE_TTL_MS);
    if !(1000..=60_000).contains(&lease_ttl_ms) {
        return Err(at(
            "cluster.lease_ttl_ms",
            "must be between 1000 and 60000 (etcd counts leases in seconds)".into(),
        ));
    }
    let prepare_timeout_ms = section.prepare_timeout_ms.unwrap_or(DEFAULT_PREPARE_TIMEOUT_MS);
    if prepare_timeout_ms == 0 || prepare_timeout_ms > A_DAY_MS {
        return Err(at("cluster.prepare_timeout_ms", format!("must be between 1 and {A_DAY_MS}")));
    }
    Ok(ClusterConfig {
        name,
        node,
        etcd,
        advertise: section.advertise.clone(),
        token_file,
        lease_ttl: Duration::from_millis(lease_ttl_ms),
        prepare_timeout: Duration::from_millis(prepare_timeout_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_read_relative_to_itself_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            r#"
[node]
data_dir = "state"
[control]
listen = "127.0.0.1:5000"
[[control.tokens]]
token_file = "secrets/ops.token"
scopes = ["admin"]
[[apps]]
dir = "apps/demo"
[extensions]
roots = ["ext"]
rustc = "auto"
javascript = "auto"
python = "tools/componentize-py"
[limits]
call_timeout_ms = 100
memory_mb = 64
"#,
        )
        .unwrap();
        let flags = Flags { config: Some(file.clone()), ..Flags::default() };
        let config = ServeConfig::load(&flags).unwrap();
        assert_eq!(config.data_dir, dir.path().join("state"));
        assert_eq!(config.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(config.apps, [dir.path().join("apps/demo")]);
        assert_eq!(config.extensions.roots, [dir.path().join("ext")]);
        assert_eq!(config.extensions.javascript, None, "auto");
        assert_eq!(config.extensions.python, Some(dir.path().join("tools/componentize-py")));
        assert_eq!((config.limits.call_timeout.as_millis(), config.limits.memory_mb), (100, 64));
        assert!(matches!(&config.tokens[0], TokenSource::File { scopes, .. } if scopes == &[Scope::Admin]));

        let flags = Flags { config: Some(file), listen: Some("127.0.0.1:6000".parse().unwrap()), ..Flags::default() };
        assert_eq!(ServeConfig::load(&flags).unwrap().listen.to_string(), "127.0.0.1:6000");
    }

    #[test]
    fn watch_mode_comes_from_the_file_or_the_flag_and_not_on_a_cluster_member() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        let load = |watch: bool| ServeConfig::load(&Flags { config: Some(file.clone()), watch, ..Flags::default() });
        std::fs::write(&file, "").unwrap();
        assert_eq!(load(false).unwrap().watch, None);
        assert_eq!(load(true).unwrap().watch, Some(WatchConfig { debounce: Duration::from_millis(200) }));
        std::fs::write(&file, "[watch]\nenabled = true\ndebounce_ms = 50\n").unwrap();
        assert_eq!(load(false).unwrap().watch, Some(WatchConfig { debounce: Duration::from_millis(50) }));
        std::fs::write(&file, "[watch]\ndebounce_ms = 0\n").unwrap();
        assert!(load(true).unwrap_err().contains("watch.debounce_ms: must be between 1 and 60000"));
        std::fs::write(&file, "[watch]\ndebounce = 5\n").unwrap();
        assert!(load(true).unwrap_err().contains("unknown field `debounce`"));
        std::fs::write(&file, "[cluster]\nname = \"c\"\nnode = \"a\"\ntoken_file = \"t\"\n").unwrap();
        let err = load(true).unwrap_err();
        assert!(err.contains("--watch: watch mode reloads this node alone"), "{err}");
    }

    #[test]
    fn otlp_export_is_off_by_default_and_a_bad_url_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        let load = || ServeConfig::load(&Flags { config: Some(file.clone()), ..Flags::default() });
        std::fs::write(&file, "").unwrap();
        assert_eq!(load().unwrap().otlp, None);
        std::fs::write(&file, "[telemetry]\notlp = \"http://127.0.0.1:4318\"\n").unwrap();
        assert_eq!(load().unwrap().otlp.as_deref(), Some("http://127.0.0.1:4318/v1/traces"));
        std::fs::write(&file, "[telemetry]\notlp = \"127.0.0.1:4318\"\n").unwrap();
        let err = load().unwrap_err();
        assert!(
            err.contains("node.toml: telemetry.otlp: \"127.0.0.1:4318\": an OTLP endpoint is http://HOST:PORT"),
            "{err}"
        );
        std::fs::write(&file, "[telemetry]\notlp = 4318\n").unwrap();
        let err = load().unwrap_err();
        assert!(err.contains("otlp") && err.contains("expected a string"), "{err}");
        std::fs::write(&file, "[telemetry]\nzipkin = \"http://x:9411\"\n").unwrap();
        assert!(load().unwrap_err().contains("unknown field `zipkin`"));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "[limits]\nmemory_mb = 64\nbanana = 1\n").unwrap();
        let err = ServeConfig::load(&Flags { config: Some(file.clone()), ..Flags::default() }).unwrap_err();
        assert!(err.contains("node.toml") && err.contains("banana"), "{err}");
        std::fs::write(&file, "[limits]\ncall_timeout_ms = 100000000000\n").unwrap();
        let err = ServeConfig::load(&Flags { config: Some(file.clone()), ..Flags::default() }).unwrap_err();
        assert!(err.contains("limits.call_timeout_ms: must be at most 86400000"), "{err}");
        std::fs::write(&file, "[limits]\ninstances = 1000000\n").unwrap();
        let err = ServeConfig::load(&Flags { config: Some(file.clone()), ..Flags::default() }).unwrap_err();
        assert!(err.contains("limits.instances") && err.contains("TiB of address space"), "{err}");
        std::fs::write(&file, "[[control.tokens]]\ntoken_file = \"t\"\nscopes = [\"root\"]\n").unwrap();
        let err = ServeConfig::load(&Flags { config: Some(file), ..Flags::default() }).unwrap_err();
        assert!(err.contains("control.tokens[0].scopes") && err.contains("\"root\""), "{err}");
    }

    #[test]
    fn a_cluster_section_needs_a_name_a_node_and_a_token_and_defaults_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        let load = |text: &str| {
            std::fs::write(&file, text).unwrap();
            ServeConfig::load(&Flags { config: Some(file.clone()), ..Flags::default() })
        };
        let config = load("[cluster]\nname = \"prod\"\nnode = \"a\"\ntoken_file = \"c.token\"\n").unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!((cluster.name.as_str(), cluster.node.as_str()), ("prod", "a"));
        assert_eq!(cluster.etcd, ["http://127.0.0.1:2379"]);
        assert_eq!(cluster.token_file, dir.path().join("c.token"));
        assert_eq!((cluster.lease_ttl.as_millis(), cluster.prepare_timeout.as_millis()), (5000, 10_000));
        assert!(ServeConfig::load(&Flags::default()).unwrap().cluster.is_none());

        let err = load("[cluster]\nname = \"prod\"\ntoken_file = \"t\"\n").unwrap_err();
        assert!(err.contains("cluster.node: is required"), "{err}");
        let err = load("[cluster]\nname = \"prod\"\nnode = \"a\"\n").unwrap_err();
        assert!(err.contains("cluster.token_file: is required"), "{err}");
        let err = load("[cluster]\nname = \"prod\"\nnode = \"a b\"\ntoken_file = \"t\"\n").unwrap_err();
        assert!(err.contains("cluster.node"), "{err}");
        let err = load("[cluster]\nname = \"p\"\nnode = \"a\"\ntoken_file = \"t\"\nlease_ttl_ms = 10\n").unwrap_err();
        assert!(err.contains("cluster.lease_ttl_ms"), "{err}");
        let err =
            load("[cluster]\nname = \"p\"\nnode = \"a\"\ntoken_file = \"t\"\netcd = [\"https://x\"]\n").unwrap_err();
        assert!(err.contains("cluster.etcd"), "{err}");
    }
}
