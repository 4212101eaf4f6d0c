//! A real PostgreSQL server for tests, in a temporary folder on loopback.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::free_port;

/// A PostgreSQL server in a temporary folder (as user postgres when run as root).
pub struct Postgres {
    pub dir: PathBuf,
    pub port: u16,
}

fn pg_bin(name: &str) -> PathBuf {
    for d in std::fs::read_dir("/usr/lib/postgresql").into_iter().flatten().flatten() {
        let p = d.path().join("bin").join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn as_postgres(cmd: &Path, args: &[&str]) -> std::process::Output {
    let is_root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    let mut c = if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    };
    c.args(args).output().expect("run a PostgreSQL tool (make deps installs postgresql)")
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = std::env::temp_dir().join(format!("tollgate-pg-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status();
        let data = dir.join("data");
        let out = as_postgres(
            &pg_bin("initdb"),
            &["-D", data.to_str().unwrap(), "-A", "trust", "-U", "tollgate", "--no-sync"],
        );
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let pg = Postgres { dir, port: free_port() };
        pg.ctl_start();
        pg
    }
    pub fn ctl_start(&self) {
        let data = self.dir.join("data");
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.display());
        let log = self.dir.join("pg.log");
        let out = as_postgres(
            &pg_bin("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-o", &opts, "-l", log.to_str().unwrap(), "-w", "start"],
        );
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stdout));
    }
    pub fn stop(&self) {
        let data = self.dir.join("data");
        as_postgres(&pg_bin("pg_ctl"), &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"]);
    }
    pub fn url(&self) -> String {
        format!("postgres://tollgate@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
