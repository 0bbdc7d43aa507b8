//! A throwaway PostgreSQL server for tests that restart or kill the
//! database: its own `initdb` folder and a free loopback port, run as the
//! `postgres` OS user (PostgreSQL refuses to run as root).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A private PostgreSQL server; stopped and deleted when dropped.
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn as_postgres(program: &Path) -> Command {
    let mut cmd = if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    };
    cmd.env_remove("PGDATA");
    cmd
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgCluster {
    /// `initdb` a new cluster in a fresh folder and start it.
    pub fn start(name: &str) -> Self {
        let bindir = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .expect("pg_config not found: install PostgreSQL's server package");
        let bin = PathBuf::from(String::from_utf8_lossy(&bindir.stdout).trim());
        let dir = std::env::temp_dir().join(format!(
            "outbox-pg-{name}-{}-{:x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            run(Command::new("chown").arg("postgres:postgres").arg(&dir));
        }
        run(as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync"]));
        let cluster = Self {
            dir,
            bin,
            port: free_port(),
        };
        cluster.ctl("start");
        cluster
    }

    fn ctl(&self, action: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.dir.display()
        );
        let mut cmd = as_postgres(&self.bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "60", "-o", &options]);
        match action {
            "restart" => cmd.args(["-m", "immediate", "restart"]),
            "stop" => cmd.args(["-m", "immediate", "stop"]),
            other => cmd.arg(other),
        };
        run(&mut cmd);
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `postgres` as user `postgres`, on `port` (to go
    /// through a fault proxy) or on the server's own port.
    pub fn url(&self, port: Option<u16>) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres",
            port.unwrap_or(self.port)
        )
    }

    /// `pg_ctl restart -m immediate`: every connection dies at once, and
    /// the server comes back after crash recovery.
    pub fn restart_immediate(&self) {
        self.ctl("restart");
    }

    /// Stop the server (`-m immediate`).
    pub fn stop(&self) {
        self.ctl("stop");
    }

    /// Start it again after [`stop`](Self::stop).
    pub fn start_again(&self) {
        self.ctl("start");
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
