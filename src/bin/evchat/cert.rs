//! `evchat cert --out DIR HOST...`: a throwaway CA and a server
//! certificate for those names, for trying TLS (`server --tls-cert`)
//! without an outside CA. Writes ca.pem, cert.pem (the chain) and key.pem
//! (mode 0600), never over existing files, and prints how to trust the CA.

use evchat::tls::generate::{GenerateError, throwaway};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

#[derive(clap::Args, Debug)]
pub struct CertArgs {
    /// Directory for ca.pem, cert.pem and key.pem (created if missing)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Days the certificates are valid
    #[arg(long, value_name = "N", default_value_t = 90,
          value_parser = clap::value_parser!(u32).range(1..=3650))]
    days: u32,
    /// Host names or IP addresses the server is reached by
    #[arg(value_name = "HOST", required = true)]
    hosts: Vec<String>,
}

pub fn run(args: CertArgs) -> ExitCode {
    match write(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("evchat cert: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write(args: &CertArgs) -> Result<(), String> {
    let now = SystemTime::now();
    // An hour's slack for clocks slightly behind.
    let not_before = now - Duration::from_secs(3600);
    let not_after = now + Duration::from_secs(u64::from(args.days) * 86_400);
    let made = throwaway(&args.hosts, not_before, not_after).map_err(|e| match e {
        GenerateError::BadName(_) => e.to_string(),
        other => other.to_string(),
    })?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let files = [
        ("ca.pem", &made.ca_pem, 0o644),
        ("cert.pem", &made.cert_pem, 0o644),
        ("key.pem", &made.key_pem, 0o600),
    ];
    for (name, _, _) in &files {
        let path = args.out.join(name);
        if path.exists() {
            return Err(format!(
                "{} exists: remove it or choose another --out",
                path.display()
            ));
        }
    }
    for (name, pem, mode) in &files {
        create(&args.out.join(name), pem, *mode)?;
    }
    let dir = args.out.display();
    let hosts = args.hosts.join(" ");
    // The files are written: a reader that stops early (`| head`) loses
    // only the advice, so a closed pipe is not an error.
    let advice = format!(
        "wrote {dir}/ca.pem (the CA), {dir}/cert.pem (the server's chain) and {dir}/key.pem \
         (its key, mode 0600)
for {hosts}, valid {days} days. The CA's own key was not kept: it signs nothing more, and
it vouches only for these names.

Serve with TLS:
  server 5000 --tls-cert {dir}/cert.pem --tls-key {dir}/key.pem

Trust the CA, one of:
  evchat clients:  evchat chat tls://{first}:5000 --ca {dir}/ca.pem  (emitter, exhibitor and
                   evchat check take --ca too)
  this system:     sudo cp {dir}/ca.pem /usr/local/share/ca-certificates/evchat.crt
                   && sudo update-ca-certificates   (Debian, Ubuntu; then no --ca is needed)
  a browser:       Chromium: Settings > Privacy and security > Security > Manage certificates
                   > Authorities > Import {dir}/ca.pem (trust it for websites); Firefox:
                   Settings > Privacy & Security > Certificates > View Certificates >
                   Authorities > Import. Then open https://{first}:5000/\n",
        days = args.days,
        first = args.hosts[0],
    );
    match std::io::stdout().lock().write_all(advice.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("cannot write to standard output: {e}"))
        }
        _ => Ok(()),
    }
}

fn create(path: &Path, pem: &str, mode: u32) -> Result<(), String> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
