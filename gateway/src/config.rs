//! The gateway's configuration: one struct filled in layers — built-in
//! defaults, then an optional YAML file (`--config`), then environment
//! variables (`TOLLGATE_*`), then command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::traffic::FailureMode;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use serde::Deserialize;

/// A CIDR range, or a single address (as a /32 or /128).
fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR range or an IP address"))
}

/// The roles a gateway process can play.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Gateway,
    Store,
    KeyManager,
    Analytics,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "gateway" => Ok(Role::Gateway),
            "store" => Ok(Role::Store),
            "key-manager" => Ok(Role::KeyManager),
            "analytics" => Ok(Role::Analytics),
            other => Err(format!("unknown role {other:?} (expected gateway, store, key-manager or analytics)")),
        }
    }
}

/// Command-line flags of `tollgate-gateway`; every flag also reads an
/// environment variable, and a `--config` YAML file may set any of them
/// (file keys are the flag names, for example `config-dir: /artifacts`).
#[derive(Debug, Clone, Parser)]
#[command(name = "tollgate-gateway", version, about = "Tollgate API gateway (Pingora data plane and management API)")]
pub struct Args {
    /// YAML file with any of the settings below (flags and environment win).
    #[arg(long, env = "TOLLGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Folder of artifacts or plain manifests (ApiDeployment, ThrottlePolicy), watched.
    #[arg(long, env = "TOLLGATE_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// API traffic over HTTP.
    #[arg(long, env = "TOLLGATE_HTTP", default_value = "0.0.0.0:8280")]
    pub http: SocketAddr,
    /// API traffic over HTTPS (needs --tls-cert and --tls-key).
    #[arg(long, env = "TOLLGATE_HTTPS", default_value = "0.0.0.0:8243")]
    pub https: SocketAddr,
    /// Management API over HTTP (health, metrics, status, store, key manager).
    #[arg(long, env = "TOLLGATE_MANAGEMENT", default_value = "0.0.0.0:9763")]
    pub management: SocketAddr,
    /// Management API over HTTPS (needs --tls-cert and --tls-key).
    #[arg(long, env = "TOLLGATE_MANAGEMENT_TLS", default_value = "0.0.0.0:9443")]
    pub management_tls: SocketAddr,
    /// PEM certificate chain for the HTTPS listeners; reloaded when it changes.
    #[arg(long, env = "TOLLGATE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the HTTPS listeners; reloaded when it changes.
    #[arg(long, env = "TOLLGATE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Holds search-index/ and database/.
    #[arg(long, env = "TOLLGATE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Database URL; default SQLite in <data-dir>/database, postgres:// for HA.
    #[arg(long, env = "TOLLGATE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Redis URL for cluster-wide throttling (traffic manager).
    #[arg(long, env = "TOLLGATE_REDIS_URL")]
    pub redis_url: Option<String>,
    /// File holding the bearer token for the management API.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Roles of this process (comma separated): gateway,store,key-manager,analytics.
    #[arg(long, env = "TOLLGATE_ROLES", value_delimiter = ',', default_value = "gateway,store,key-manager,analytics")]
    pub roles: Vec<Role>,
    /// Worker threads for API traffic (default: number of CPUs).
    #[arg(long, env = "TOLLGATE_THREADS")]
    pub threads: Option<usize>,
    /// Seconds between full rescans of --config-dir (network filesystems
    /// deliver no inotify events).
    #[arg(long, env = "TOLLGATE_RESCAN_INTERVAL", default_value = "1")]
    pub rescan_interval: f64,
    /// Milliseconds to wait for a burst of file events to settle before reloading.
    #[arg(long, env = "TOLLGATE_RELOAD_DEBOUNCE_MS", default_value = "100")]
    pub reload_debounce_ms: u64,
    /// Longest time, in seconds, in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "TOLLGATE_DRAIN_SECONDS", default_value = "20")]
    pub drain_seconds: u64,
    /// Peers (comma-separated CIDRs, for example 10.0.0.0/8) whose
    /// X-Forwarded-For/-Proto/-Host are believed: the client address is then
    /// the right-most X-Forwarded-For entry outside these ranges. From any
    /// other peer those headers are replaced.
    #[arg(long, env = "TOLLGATE_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Seconds an idle keep-alive client connection on the API-traffic
    /// listeners stays open (whatever the client's Keep-Alive header asks).
    #[arg(long, env = "TOLLGATE_KEEPALIVE_TIMEOUT_SECONDS", default_value = "60",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub keepalive_timeout_seconds: u64,
    /// Seconds a client gets to send a request head (and, on TLS listeners,
    /// to finish the handshake) before the connection is closed (slowloris).
    #[arg(long, env = "TOLLGATE_HEADER_TIMEOUT_SECONDS", default_value = "10",
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub header_timeout_seconds: u64,
    /// Bytes of write buffer per client connection on the API-traffic
    /// listeners: a response head and body that fit leave in one write.
    #[arg(long, env = "TOLLGATE_WRITE_BUFFER_BYTES", default_value = "16384",
          value_parser = clap::value_parser!(u64).range(1460..=1048576))]
    pub write_buffer_bytes: u64,
    /// Write one JSON access-log line per request to stdout.
    #[arg(long, env = "TOLLGATE_ACCESS_LOG", default_value_t = true, action = clap::ArgAction::Set)]
    pub access_log: bool,
    /// Most distinct throttle keys kept in memory per policy before the
    /// oldest windows are evicted.
    #[arg(long, env = "TOLLGATE_MAX_THROTTLE_KEYS", default_value = "1000000")]
    pub max_throttle_keys: usize,
    /// Seconds a failing backend endpoint is left out before it is tried again.
    #[arg(long, env = "TOLLGATE_EJECT_SECONDS", default_value = "5")]
    pub eject_seconds: u64,
    /// Gateway group this process belongs to (DistributedGateways): APIs whose
    /// spec.gateways is set and does not name it are not served here.
    #[arg(long, env = "TOLLGATE_GATEWAY_GROUP")]
    pub gateway_group: Option<String>,
    /// Environments whose credentials this process accepts (production,
    /// sandbox; comma-separated). Others get 403 wrong_environment: a
    /// production key is never sent to a backend by a sandbox gateway.
    #[arg(long, env = "TOLLGATE_ENVIRONMENTS", value_delimiter = ',', default_value = "production,sandbox")]
    pub environments: Vec<String>,
    /// Seconds between lookups of backend host names (addresses are followed
    /// without a reload; the last good address is kept while DNS fails).
    #[arg(long, env = "TOLLGATE_DNS_REFRESH_SECONDS", default_value = "5")]
    pub dns_refresh_seconds: f64,
    /// While Redis is unreachable: open (serve, count per gateway) or closed
    /// (503 for traffic under a Cluster-scoped policy).
    #[arg(long, env = "TOLLGATE_REDIS_FAILURE_MODE", value_enum, default_value = "open")]
    pub redis_failure_mode: FailureMode,
    /// Longest wait for a Redis answer before the gateway degrades (ms).
    #[arg(long, env = "TOLLGATE_REDIS_TIMEOUT_MS", default_value = "100")]
    pub redis_timeout_ms: u64,
    /// Prefix of the Redis keys: gateways sharing a prefix share counters
    /// (the operator sets it to the ApiManager's namespace/name).
    #[arg(long, env = "TOLLGATE_REDIS_KEY_PREFIX", default_value = "tollgate")]
    pub redis_key_prefix: String,
    /// Seconds an API-key check is cached (a revocation on another gateway
    /// takes effect within this time; on this one at once).
    #[arg(long, env = "TOLLGATE_KEY_CACHE_TTL_SECONDS", default_value = "5")]
    pub key_cache_ttl_seconds: f64,
    /// PEM bundle of the CAs that sign client (TPP) certificates; reloaded
    /// when it changes. Enables mutual TLS on 8243 and 9443.
    #[arg(long, env = "TOLLGATE_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Client certificates on the TLS listeners: none, optional (verified
    /// when presented; the default with --client-ca) or required.
    #[arg(long, env = "TOLLGATE_CLIENT_AUTH", value_enum)]
    pub client_auth: Option<ClientAuthMode>,
    /// TLS profile of 8243 and 9443: default (TLS 1.2 and 1.3) or fapi (TLS
    /// 1.2 only with ECDHE and AES-GCM suites, FAPI 1.0 Advanced 8.5; TLS 1.3).
    #[arg(long, env = "TOLLGATE_TLS_PROFILE", value_enum, default_value = "default")]
    pub tls_profile: TlsProfile,
    /// Request header in which a TLS-terminating proxy forwards the client
    /// certificate (URL-encoded PEM, as nginx $ssl_client_escaped_cert and AWS
    /// ALB send it). Believed only from --trusted-proxies peers; removed from
    /// every other request.
    #[arg(long, env = "TOLLGATE_CLIENT_CERT_HEADER")]
    pub client_cert_header: Option<String>,
    /// The built-in key manager's issuer (`iss` of its tokens); its
    /// endpoints are <issuer>/token, <issuer>/jwks, ... Default:
    /// https://localhost:<management-tls port>/oauth2 with TLS, else
    /// http://localhost:<management port>/oauth2.
    #[arg(long, env = "TOLLGATE_ISSUER")]
    pub issuer: Option<String>,
    /// PEM private key of the built-in key manager (EC P-256 -> ES256, RSA
    /// -> PS256); repeatable: the first signs, all are published (rotation).
    /// Without it a key is generated under <data-dir>/key-manager (single node).
    #[arg(long, env = "TOLLGATE_SIGNING_KEY_FILE", value_delimiter = ',')]
    pub signing_key_file: Vec<PathBuf>,
    /// PEM private key that signs answers (x-jws-signature of
    /// openBanking.jws.signResponses APIs), published at
    /// <issuer>/response-jwks; repeatable like --signing-key-file. Default: a
    /// key of its own generated under <data-dir>/key-manager when the token
    /// keys are generated, else the --signing-key-file keys.
    #[arg(long, env = "TOLLGATE_RESPONSE_SIGNING_KEY_FILE", value_delimiter = ',')]
    pub response_signing_key_file: Vec<PathBuf>,
    /// JWK Set of the trusted software-statement signers (the directory) for
    /// dynamic client registration; without it /oauth2/register is off.
    #[arg(long, env = "TOLLGATE_SSA_JWKS")]
    pub ssa_jwks: Option<PathBuf>,
    /// Where the built-in key manager keeps the keys it generates (without
    /// --signing-key-file). Default <data-dir>/key-manager. It must outlive
    /// the process: a new key invalidates every token issued before.
    #[arg(long, env = "TOLLGATE_KEY_MANAGER_DIR")]
    pub key_manager_dir: Option<PathBuf>,
    /// Lifetime of the built-in key manager's access tokens, in seconds.
    #[arg(long, env = "TOLLGATE_TOKEN_TTL_SECONDS", default_value = "3600",
          value_parser = clap::value_parser!(u64).range(60..=86400))]
    pub token_ttl_seconds: u64,
    /// Where the built-in key manager's JWK Set is, for a process without
    /// the key-manager role (gateways of DistributedGateways): its tokens
    /// (iss = --issuer) are trusted with the keys fetched from here.
    #[arg(long, env = "TOLLGATE_KEY_MANAGER_JWKS_URI")]
    pub key_manager_jwks_uri: Option<String>,
    /// PEM bundle of CAs trusted (besides the system store) for the https
    /// --key-manager-jwks-uri: the CA of the control plane's listener
    /// certificate. Read at every fetch, so a rotated bundle counts at once;
    /// while the file is missing only the system store is trusted.
    #[arg(long, env = "TOLLGATE_KEY_MANAGER_CA")]
    pub key_manager_ca: Option<PathBuf>,
    /// Seconds between writes of the analytics rollups to the database.
    #[arg(long, env = "TOLLGATE_ANALYTICS_FLUSH_SECONDS", default_value = "10",
          value_parser = clap::value_parser!(u64).range(1..=60))]
    pub analytics_flush_seconds: u64,
    /// Days the per-minute analytics rows are kept.
    #[arg(long, env = "TOLLGATE_ANALYTICS_MINUTE_RETENTION_DAYS", default_value = "7",
          value_parser = clap::value_parser!(u64).range(1..=366))]
    pub analytics_minute_retention_days: u64,
    /// Days the hourly analytics rows are kept.
    #[arg(long, env = "TOLLGATE_ANALYTICS_HOUR_RETENTION_DAYS", default_value = "90",
          value_parser = clap::value_parser!(u64).range(1..=3660))]
    pub analytics_hour_retention_days: u64,
    /// Days the daily analytics rows are kept.
    #[arg(long, env = "TOLLGATE_ANALYTICS_DAY_RETENTION_DAYS", default_value = "730",
          value_parser = clap::value_parser!(u64).range(1..=36600))]
    pub analytics_day_retention_days: u64,
    /// Request events the analytics queue holds before it drops (and
    /// counts) them; 0 turns recording off.
    #[arg(long, env = "TOLLGATE_ANALYTICS_QUEUE_SIZE", default_value = "65536",
          value_parser = clap::value_parser!(u64).range(0..=16_777_216))]
    pub analytics_queue_size: u64,
    /// Where developers call the APIs, as the developer portal shows it
    /// (role store): API pages, the try-it console's server, the portal's
    /// Content-Security-Policy. Default: http://localhost:<--http port>.
    #[arg(long, env = "TOLLGATE_PORTAL_GATEWAY_URL")]
    pub portal_gateway_url: Option<String>,
    /// The developer portal's name, in every page's title and header.
    #[arg(long, env = "TOLLGATE_PORTAL_NAME", default_value = "Developer portal")]
    pub portal_name: String,
    /// OpenTelemetry collector (OTLP/HTTP) that gets one log record per
    /// request (`<url>/v1/logs`), batched off the request path.
    #[arg(long, env = "TOLLGATE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Whether the TLS listeners ask for client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientAuthMode {
    None,
    Optional,
    Required,
}

/// TLS versions and cipher suites of the TLS listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsProfile {
    Default,
    Fapi,
}

/// The resolved configuration the gateway runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub config_dir: PathBuf,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub management: SocketAddr,
    pub management_tls: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub roles: Vec<Role>,
    pub threads: usize,
    pub rescan_interval: Duration,
    pub reload_debounce: Duration,
    pub drain: Duration,
    pub header_timeout: Duration,
    pub keepalive_timeout_secs: u64,
    pub write_buffer_bytes: usize,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub access_log: bool,
    pub max_throttle_keys: usize,
    pub eject_for: Duration,
    pub gateway_group: Option<String>,
    /// Environments whose credentials are accepted (`--environments`).
    pub environments: Vec<crate::store::keys::Environment>,
    pub dns_refresh: Duration,
    pub redis_failure_mode: FailureMode,
    pub redis_timeout: Duration,
    pub redis_key_prefix: String,
    pub key_cache_ttl: Duration,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuthMode,
    pub tls_profile: TlsProfile,
    /// Lower-cased.
    pub client_cert_header: Option<String>,
    /// The built-in key manager's issuer, without a trailing slash.
    pub issuer: String,
    pub signing_key_files: Vec<PathBuf>,
    pub response_signing_key_files: Vec<PathBuf>,
    pub ssa_jwks: Option<PathBuf>,
    /// Where generated signing keys live (`--key-manager-dir`).
    pub key_manager_dir: PathBuf,
    pub token_ttl: Duration,
    pub key_manager_jwks_uri: Option<String>,
    pub key_manager_ca: Option<PathBuf>,
    pub analytics_flush: Duration,
    pub analytics_retention: crate::analytics::rollup::Retention,
    pub otlp_endpoint: Option<String>,
    /// 0: nothing is recorded.
    pub analytics_queue: usize,
    /// The developer portal's settings (served with the store role).
    pub portal: crate::portal::Settings,
}

/// Certificate and key files of the HTTPS listeners.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("{0}")]
    Args(#[from] clap::Error),
    #[error("--config-dir is required (or TOLLGATE_CONFIG_DIR, or config-dir in --config)")]
    MissingConfigDir,
    #[error("--tls-cert and --tls-key must be given together")]
    HalfTls,
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Parses the process arguments and environment in layers.
    pub fn load() -> Result<Config, ConfigError> {
        Self::from_args(std::env::args_os())
    }

    /// Parses the given arguments (the first is the program name).
    pub fn from_args<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Args::command().try_get_matches_from(args)?;
        let mut parsed = Args::from_arg_matches(&matches)?;
        if let Some(path) = parsed.config.clone() {
            let file = read_file_layer(&path)?;
            parsed = merge_file_layer(parsed, &matches, &file, &path)?;
        }
        Self::resolve(parsed)
    }

    fn resolve(a: Args) -> Result<Config, ConfigError> {
        let config_dir = a.config_dir.ok_or(ConfigError::MissingConfigDir)?;
        let tls = match (a.tls_cert, a.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => return Err(ConfigError::HalfTls),
        };
        if !(a.dns_refresh_seconds >= 0.1 && a.dns_refresh_seconds <= 3600.0) {
            return Err(ConfigError::Invalid("--dns-refresh-seconds must be between 0.1 and 3600".into()));
        }
        if !(a.rescan_interval > 0.0 && a.rescan_interval <= 3600.0) {
            return Err(ConfigError::Invalid("--rescan-interval must be between 0 and 3600 seconds".into()));
        }
        let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        if threads == 0 {
            return Err(ConfigError::Invalid("--threads must be at least 1".into()));
        }
        let mut roles = a.roles;
        roles.dedup();
        let client_auth = match (a.client_auth, &a.client_ca) {
            (Some(ClientAuthMode::None), _) | (None, None) => ClientAuthMode::None,
            (None, Some(_)) => ClientAuthMode::Optional,
            (Some(mode), Some(_)) => mode,
            (Some(_), None) => {
                return Err(ConfigError::Invalid(
                    "--client-auth optional or required needs --client-ca (the CAs that sign client certificates)"
                        .into(),
                ));
            }
        };
        let client_cert_header = a.client_cert_header.map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty());
        if let Some(h) = &client_cert_header
            && http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            return Err(ConfigError::Invalid(format!("--client-cert-header {h:?} is not a header name")));
        }
        let issuer = match a.issuer.map(|i| i.trim().trim_end_matches('/').to_string()) {
            Some(i) => {
                let ok = i.parse::<http::Uri>().is_ok_and(|u| {
                    matches!(u.scheme_str(), Some("https" | "http")) && u.host().is_some() && u.query().is_none()
                });
                if !ok {
                    return Err(ConfigError::Invalid(format!("--issuer {i:?} must be an http(s) URL without a query")));
                }
                i
            }
            None if tls.is_some() => format!("https://localhost:{}/oauth2", a.management_tls.port()),
            None => format!("http://localhost:{}/oauth2", a.management.port()),
        };
        if let Some(u) = &a.otlp_endpoint
            && !u
                .parse::<http::Uri>()
                .is_ok_and(|p| matches!(p.scheme_str(), Some("https" | "http")) && p.host().is_some())
        {
            return Err(ConfigError::Invalid(format!("--otlp-endpoint {u:?} must be an http(s) URL")));
        }
        if let Some(u) = &a.portal_gateway_url
            && !u
                .parse::<http::Uri>()
                .is_ok_and(|p| matches!(p.scheme_str(), Some("https" | "http")) && p.host().is_some())
        {
            return Err(ConfigError::Invalid(format!("--portal-gateway-url {u:?} must be an http(s) URL")));
        }
        let portal_name = a.portal_name.trim().to_string();
        if portal_name.is_empty() || portal_name.len() > 100 || portal_name.chars().any(char::is_control) {
            return Err(ConfigError::Invalid("--portal-name must be 1 to 100 printable characters".into()));
        }
        if let Some(u) = &a.key_manager_jwks_uri
            && !u
                .parse::<http::Uri>()
                .is_ok_and(|p| matches!(p.scheme_str(), Some("https" | "http")) && p.host().is_some())
        {
            return Err(ConfigError::Invalid(format!("--key-manager-jwks-uri {u:?} must be an http(s) URL")));
        }
        let mut environments = Vec::new();
        for e in &a.environments {
            let env = crate::store::keys::Environment::parse(e.trim())
                .ok_or_else(|| ConfigError::Invalid(format!("--environments: {e:?} is not production or sandbox")))?;
            if !environments.contains(&env) {
                environments.push(env);
            }
        }
        if environments.is_empty() {
            return Err(ConfigError::Invalid("--environments needs production, sandbox or both".into()));
        }
        Ok(Config {
            issuer,
            signing_key_files: a.signing_key_file,
            response_signing_key_files: a.response_signing_key_file,
            ssa_jwks: a.ssa_jwks,
            key_manager_dir: a.key_manager_dir.unwrap_or_else(|| a.data_dir.join("key-manager")),
            token_ttl: Duration::from_secs(a.token_ttl_seconds),
            key_manager_jwks_uri: a.key_manager_jwks_uri,
            key_manager_ca: a.key_manager_ca,
            otlp_endpoint: a.otlp_endpoint,
            analytics_queue: a.analytics_queue_size as usize,
            portal: crate::portal::Settings {
                gateway_url: a
                    .portal_gateway_url
                    .clone()
                    .unwrap_or_else(|| format!("http://localhost:{}", a.http.port()))
                    .trim_end_matches('/')
                    .to_string(),
                name: portal_name,
            },
            analytics_flush: Duration::from_secs(a.analytics_flush_seconds),
            analytics_retention: crate::analytics::rollup::Retention {
                minute: Duration::from_secs(a.analytics_minute_retention_days * 86_400),
                hour: Duration::from_secs(a.analytics_hour_retention_days * 86_400),
                day: Duration::from_secs(a.analytics_day_retention_days * 86_400),
            },
            config_dir,
            http: a.http,
            https: a.https,
            management: a.management,
            management_tls: a.management_tls,
            tls,
            data_dir: a.data_dir,
            database_url: a.database_url,
            redis_url: a.redis_url,
            admin_token_file: a.admin_token_file,
            roles,
            threads,
            rescan_interval: Duration::from_secs_f64(a.rescan_interval),
            reload_debounce: Duration::from_millis(a.reload_debounce_ms),
            drain: Duration::from_secs(a.drain_seconds),
            header_timeout: Duration::from_secs(a.header_timeout_seconds),
            keepalive_timeout_secs: a.keepalive_timeout_seconds,
            write_buffer_bytes: a.write_buffer_bytes as usize,
            trusted_proxies: a.trusted_proxies,
            access_log: a.access_log,
            max_throttle_keys: a.max_throttle_keys.max(1),
            eject_for: Duration::from_secs(a.eject_seconds.max(1)),
            gateway_group: a.gateway_group.filter(|g| !g.is_empty()),
            environments,
            dns_refresh: Duration::from_secs_f64(a.dns_refresh_seconds),
            redis_failure_mode: a.redis_failure_mode,
            redis_timeout: Duration::from_millis(a.redis_timeout_ms.clamp(1, 60_000)),
            redis_key_prefix: a.redis_key_prefix,
            key_cache_ttl: Duration::from_secs_f64(a.key_cache_ttl_seconds.clamp(0.0, 3600.0)),
            client_ca: a.client_ca,
            client_auth,
            tls_profile: a.tls_profile,
            client_cert_header,
        })
    }

    /// Whether this process plays `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

fn read_file_layer(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile { path: path.into(), source })?;
    let value: serde_json::Value = serde_saphyr::from_str(&text)
        .map_err(|e| ConfigError::ParseFile { path: path.into(), message: e.to_string() })?;
    match value {
        serde_json::Value::Object(m) => Ok(m),
        serde_json::Value::Null => Ok(Default::default()),
        _ => Err(ConfigError::ParseFile { path: path.into(), message: "must be a mapping of setting: value".into() }),
    }
}

/// Settings the file layer may give: the long flag names.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[allow(dead_code)]
struct FileKeys {
    config_dir: Option<serde_json::Value>,
    http: Option<serde_json::Value>,
    https: Option<serde_json::Value>,
    management: Option<serde_json::Value>,
    management_tls: Option<serde_json::Value>,
    tls_cert: Option<serde_json::Value>,
    tls_key: Option<serde_json::Value>,
    data_dir: Option<serde_json::Value>,
    database_url: Option<serde_json::Value>,
    redis_url: Option<serde_json::Value>,
    admin_token_file: Option<serde_json::Value>,
    roles: Option<serde_json::Value>,
    threads: Option<serde_json::Value>,
    rescan_interval: Option<serde_json::Value>,
    reload_debounce_ms: Option<serde_json::Value>,
    drain_seconds: Option<serde_json::Value>,
    header_timeout_seconds: Option<serde_json::Value>,
    keepalive_timeout_seconds: Option<serde_json::Value>,
    write_buffer_bytes: Option<serde_json::Value>,
    trusted_proxies: Option<serde_json::Value>,
    access_log: Option<serde_json::Value>,
    max_throttle_keys: Option<serde_json::Value>,
    eject_seconds: Option<serde_json::Value>,
    gateway_group: Option<serde_json::Value>,
    environments: Option<serde_json::Value>,
    dns_refresh_seconds: Option<serde_json::Value>,
    redis_failure_mode: Option<serde_json::Value>,
    redis_timeout_ms: Option<serde_json::Value>,
    redis_key_prefix: Option<serde_json::Value>,
    key_cache_ttl_seconds: Option<serde_json::Value>,
    client_ca: Option<serde_json::Value>,
    client_auth: Option<serde_json::Value>,
    tls_profile: Option<serde_json::Value>,
    client_cert_header: Option<serde_json::Value>,
    issuer: Option<serde_json::Value>,
    signing_key_file: Option<serde_json::Value>,
    response_signing_key_file: Option<serde_json::Value>,
    ssa_jwks: Option<serde_json::Value>,
    key_manager_dir: Option<serde_json::Value>,
    token_ttl_seconds: Option<serde_json::Value>,
    key_manager_jwks_uri: Option<serde_json::Value>,
    key_manager_ca: Option<serde_json::Value>,
    analytics_flush_seconds: Option<serde_json::Value>,
    analytics_minute_retention_days: Option<serde_json::Value>,
    analytics_hour_retention_days: Option<serde_json::Value>,
    analytics_day_retention_days: Option<serde_json::Value>,
    analytics_queue_size: Option<serde_json::Value>,
    portal_gateway_url: Option<serde_json::Value>,
    portal_name: Option<serde_json::Value>,
    otlp_endpoint: Option<serde_json::Value>,
}

/// Re-parses with file values inserted for every setting that still has its
/// built-in default (flags and environment variables win over the file).
fn merge_file_layer(
    parsed: Args,
    matches: &ArgMatches,
    file: &serde_json::Map<String, serde_json::Value>,
    path: &Path,
) -> Result<Args, ConfigError> {
    serde_json::from_value::<FileKeys>(serde_json::Value::Object(file.clone()))
        .map_err(|e| ConfigError::ParseFile { path: path.into(), message: e.to_string() })?;
    let mut argv: Vec<String> = vec!["tollgate-gateway".into()];
    for (key, value) in file {
        let id = key.replace('-', "_");
        let from_user =
            matches.value_source(&id).is_some_and(|s| matches!(s, ValueSource::CommandLine | ValueSource::EnvVariable));
        if from_user {
            continue;
        }
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string).unwrap_or_else(|| i.to_string()))
                .collect::<Vec<_>>()
                .join(","),
            other => other.to_string(),
        };
        argv.push(format!("--{key}={text}"));
    }
    let file_matches = Args::command()
        .try_get_matches_from(&argv)
        .map_err(|e| ConfigError::ParseFile { path: path.into(), message: e.to_string() })?;
    let from_file = Args::from_arg_matches(&file_matches)?;
    let pick = |id: &str| {
        matches.value_source(id).is_some_and(|s| matches!(s, ValueSource::CommandLine | ValueSource::EnvVariable))
            || file_matches.value_source(id) != Some(ValueSource::CommandLine)
    };
    Ok(Args {
        config: parsed.config,
        config_dir: if pick("config_dir") { parsed.config_dir } else { from_file.config_dir },
        http: if pick("http") { parsed.http } else { from_file.http },
        https: if pick("https") { parsed.https } else { from_file.https },
        management: if pick("management") { parsed.management } else { from_file.management },
        management_tls: if pick("management_tls") { parsed.management_tls } else { from_file.management_tls },
        tls_cert: if pick("tls_cert") { parsed.tls_cert } else { from_file.tls_cert },
        tls_key: if pick("tls_key") { parsed.tls_key } else { from_file.tls_key },
        data_dir: if pick("data_dir") { parsed.data_dir } else { from_file.data_dir },
        database_url: if pick("database_url") { parsed.database_url } else { from_file.database_url },
        redis_url: if pick("redis_url") { parsed.redis_url } else { from_file.redis_url },
        admin_token_file: if pick("admin_token_file") { parsed.admin_token_file } else { from_file.admin_token_file },
        roles: if pick("roles") { parsed.roles } else { from_file.roles },
        threads: if pick("threads") { parsed.threads } else { from_file.threads },
        rescan_interval: if pick("rescan_interval") { parsed.rescan_interval } else { from_file.rescan_interval },
        reload_debounce_ms: if pick("reload_debounce_ms") {
            parsed.reload_debounce_ms
        } else {
            from_file.reload_debounce_ms
        },
        drain_seconds: if pick("drain_seconds") { parsed.drain_seconds } else { from_file.drain_seconds },
        trusted_proxies: if pick("trusted_proxies") { parsed.trusted_proxies } else { from_file.trusted_proxies },
        keepalive_timeout_seconds: if pick("keepalive_timeout_seconds") {
            parsed.keepalive_timeout_seconds
        } else {
            from_file.keepalive_timeout_seconds
        },
        write_buffer_bytes: if pick("write_buffer_bytes") {
            parsed.write_buffer_bytes
        } else {
            from_file.write_buffer_bytes
        },
        header_timeout_seconds: if pick("header_timeout_seconds") {
            parsed.header_timeout_seconds
        } else {
            from_file.header_timeout_seconds
        },
        access_log: if pick("access_log") { parsed.access_log } else { from_file.access_log },
        max_throttle_keys: if pick("max_throttle_keys") {
            parsed.max_throttle_keys
        } else {
            from_file.max_throttle_keys
        },
        eject_seconds: if pick("eject_seconds") { parsed.eject_seconds } else { from_file.eject_seconds },
        gateway_group: if pick("gateway_group") { parsed.gateway_group } else { from_file.gateway_group },
        environments: if pick("environments") { parsed.environments } else { from_file.environments },
        redis_failure_mode: if pick("redis_failure_mode") {
            parsed.redis_failure_mode
        } else {
            from_file.redis_failure_mode
        },
        redis_timeout_ms: if pick("redis_timeout_ms") { parsed.redis_timeout_ms } else { from_file.redis_timeout_ms },
        redis_key_prefix: if pick("redis_key_prefix") { parsed.redis_key_prefix } else { from_file.redis_key_prefix },
        key_cache_ttl_seconds: if pick("key_cache_ttl_seconds") {
            parsed.key_cache_ttl_seconds
        } else {
            from_file.key_cache_ttl_seconds
        },
        dns_refresh_seconds: if pick("dns_refresh_seconds") {
            parsed.dns_refresh_seconds
        } else {
            from_file.dns_refresh_seconds
        },
        client_ca: if pick("client_ca") { parsed.client_ca } else { from_file.client_ca },
        client_auth: if pick("client_auth") { parsed.client_auth } else { from_file.client_auth },
        tls_profile: if pick("tls_profile") { parsed.tls_profile } else { from_file.tls_profile },
        client_cert_header: if pick("client_cert_header") {
            parsed.client_cert_header
        } else {
            from_file.client_cert_header
        },
        issuer: if pick("issuer") { parsed.issuer } else { from_file.issuer },
        signing_key_file: if pick("signing_key_file") { parsed.signing_key_file } else { from_file.signing_key_file },
        response_signing_key_file: if pick("response_signing_key_file") {
            parsed.response_signing_key_file
        } else {
            from_file.response_signing_key_file
        },
        ssa_jwks: if pick("ssa_jwks") { parsed.ssa_jwks } else { from_file.ssa_jwks },
        key_manager_dir: if pick("key_manager_dir") { parsed.key_manager_dir } else { from_file.key_manager_dir },
        token_ttl_seconds: if pick("token_ttl_seconds") {
            parsed.token_ttl_seconds
        } else {
            from_file.token_ttl_seconds
        },
        key_manager_jwks_uri: if pick("key_manager_jwks_uri") {
            parsed.key_manager_jwks_uri
        } else {
            from_file.key_manager_jwks_uri
        },
        key_manager_ca: if pick("key_manager_ca") { parsed.key_manager_ca } else { from_file.key_manager_ca },
        analytics_flush_seconds: if pick("analytics_flush_seconds") {
            parsed.analytics_flush_seconds
        } else {
            from_file.analytics_flush_seconds
        },
        analytics_minute_retention_days: if pick("analytics_minute_retention_days") {
            parsed.analytics_minute_retention_days
        } else {
            from_file.analytics_minute_retention_days
        },
        analytics_hour_retention_days: if pick("analytics_hour_retention_days") {
            parsed.analytics_hour_retention_days
        } else {
            from_file.analytics_hour_retention_days
        },
        analytics_day_retention_days: if pick("analytics_day_retention_days") {
            parsed.analytics_day_retention_days
        } else {
            from_file.analytics_day_retention_days
        },
        analytics_queue_size: if pick("analytics_queue_size") {
            parsed.analytics_queue_size
        } else {
            from_file.analytics_queue_size
        },
        portal_gateway_url: if pick("portal_gateway_url") {
            parsed.portal_gateway_url
        } else {
            from_file.portal_gateway_url
        },
        portal_name: if pick("portal_name") { parsed.portal_name } else { from_file.portal_name },
        otlp_endpoint: if pick("otlp_endpoint") { parsed.otlp_endpoint } else { from_file.otlp_endpoint },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply() {
        let c = Config::from_args(["gw", "--config-dir", "/tmp/x"]).unwrap();
        assert_eq!(c.http.port(), 8280);
        assert_eq!(c.https.port(), 8243);
        assert_eq!(c.management.port(), 9763);
        assert_eq!(c.management_tls.port(), 9443);
        assert_eq!(c.rescan_interval, Duration::from_secs(1));
        assert_eq!(c.roles.len(), 4);
        assert_eq!(c.write_buffer_bytes, 16384);
    }

    #[test]
    fn missing_config_dir_and_half_tls_are_errors() {
        assert!(matches!(Config::from_args(["gw"]), Err(ConfigError::MissingConfigDir)));
        assert!(matches!(Config::from_args(["gw", "--config-dir", "x", "--tls-cert", "c"]), Err(ConfigError::HalfTls)));
        assert!(Config::from_args(["gw", "--config-dir", "x", "--roles", "gateway,mystery"]).is_err());
    }

    #[test]
    fn client_auth_defaults_to_optional_with_a_client_ca_and_needs_one() {
        let c = Config::from_args(["gw", "--config-dir", "x"]).unwrap();
        assert_eq!((c.client_auth, c.tls_profile), (ClientAuthMode::None, TlsProfile::Default));
        let c =
            Config::from_args(["gw", "--config-dir", "x", "--client-ca", "ca.pem", "--tls-profile", "fapi"]).unwrap();
        assert_eq!((c.client_auth, c.tls_profile), (ClientAuthMode::Optional, TlsProfile::Fapi));
        let c = Config::from_args(["gw", "--config-dir", "x", "--client-ca", "ca.pem", "--client-auth", "required"])
            .unwrap();
        assert_eq!(c.client_auth, ClientAuthMode::Required);
        let e = Config::from_args(["gw", "--config-dir", "x", "--client-auth", "required"]).unwrap_err();
        assert!(e.to_string().contains("needs --client-ca"), "{e}");
        let c = Config::from_args(["gw", "--config-dir", "x", "--client-cert-header", "X-SSL-Client-Cert"]).unwrap();
        assert_eq!(c.client_cert_header.as_deref(), Some("x-ssl-client-cert"));
        assert!(Config::from_args(["gw", "--config-dir", "x", "--client-cert-header", "bad header"]).is_err());
    }

    #[test]
    fn environments_default_to_both_and_refuse_unknown_names() {
        use crate::store::keys::Environment::{Production, Sandbox};
        let c = Config::from_args(["gw", "--config-dir", "x"]).unwrap();
        assert_eq!(c.environments, [Production, Sandbox]);
        let c = Config::from_args(["gw", "--config-dir", "x", "--environments", "sandbox"]).unwrap();
        assert_eq!(c.environments, [Sandbox]);
        let e = Config::from_args(["gw", "--config-dir", "x", "--environments", "staging"]).unwrap_err();
        assert!(e.to_string().contains("\"staging\" is not production or sandbox"), "{e}");
    }

    #[test]
    fn key_manager_settings() {
        let c = Config::from_args(["gw", "--config-dir", "x", "--data-dir", "/d"]).unwrap();
        assert_eq!(c.key_manager_dir, PathBuf::from("/d/key-manager"));
        let c = Config::from_args(["gw", "--config-dir", "x", "--key-manager-dir", "/d/database/key-manager"]).unwrap();
        assert_eq!(c.key_manager_dir, PathBuf::from("/d/database/key-manager"));
        let c = Config::from_args(["gw", "--config-dir", "x"]).unwrap();
        assert_eq!(c.issuer, "http://localhost:9763/oauth2");
        assert_eq!(c.token_ttl, Duration::from_secs(3600));
        let c = Config::from_args([
            "gw",
            "--config-dir",
            "x",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
            "--signing-key-file",
            "a.pem,b.pem",
            "--signing-key-file",
            "c.pem",
        ])
        .unwrap();
        assert_eq!(c.issuer, "https://localhost:9443/oauth2");
        assert_eq!(c.signing_key_files, [PathBuf::from("a.pem"), "b.pem".into(), "c.pem".into()]);
        let c = Config::from_args(["gw", "--config-dir", "x", "--issuer", "https://as.bank.example/oauth2/"]).unwrap();
        assert_eq!(c.issuer, "https://as.bank.example/oauth2");
        for bad in ["as.bank.example", "ftp://x/y", "https://x/?q=1"] {
            assert!(Config::from_args(["gw", "--config-dir", "x", "--issuer", bad]).is_err(), "{bad}");
        }
        assert!(Config::from_args(["gw", "--config-dir", "x", "--token-ttl-seconds", "5"]).is_err());
    }

    #[test]
    fn file_layer_fills_defaults_but_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("gw.yaml");
        std::fs::write(
            &f,
            "config-dir: /from/file\nhttp: 127.0.0.1:1111\nroles: [gateway]\nthreads: 3\nwrite-buffer-bytes: 4096\n",
        )
        .unwrap();
        let c = Config::from_args(["gw", "--config", f.to_str().unwrap(), "--http", "127.0.0.1:2222"]).unwrap();
        assert_eq!(c.config_dir, PathBuf::from("/from/file"));
        assert_eq!(c.http.port(), 2222, "flag wins over file");
        assert_eq!(c.roles, vec![Role::Gateway]);
        assert_eq!(c.threads, 3);
        assert_eq!(c.write_buffer_bytes, 4096);
        let small = Config::from_args(["gw", "--config-dir", "/x", "--write-buffer-bytes", "100"]);
        assert!(small.is_err(), "below one TCP segment is refused");
        std::fs::write(&f, "config-dir: /x\nhtpp: 1\n").unwrap();
        let e = Config::from_args(["gw", "--config", f.to_str().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("unknown field `htpp`"), "{e}");
    }
}
