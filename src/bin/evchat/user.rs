//! `evchat user`: edits a server's accounts file (`server --auth FILE`,
//! PROTOCOL.md "Extension: identity"). `add` creates or replaces an
//! account with a password (typed twice without echo on a terminal, or
//! one line of standard input otherwise) or a new token (printed once,
//! only its SHA-256 kept); `list` shows names, roles, the kind of secret
//! and the expiry, never a secret or a hash; `remove` deletes one. The
//! file is written atomically with mode 0600 and refused, like the server
//! refuses it, when it is not private.

use evchat::auth::{
    Account, Accounts, AccountsError, BadRoles, Credential, Expiry, MAX_PRESENTED_LEN, Name, Roles,
    Secret, TOKEN_PREFIX, parse_age,
};
use evchat::client::{SecretLineError, ask_secret, exit_process, read_secret_line};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

#[derive(clap::Args, Debug)]
pub struct UserArgs {
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(clap::Subcommand, Debug)]
enum UserCommand {
    /// Create or replace an account (password from the terminal or one
    /// line of standard input; or --token)
    Add(AddArgs),
    /// List the accounts: name, roles, kind of secret, expiry
    List {
        /// The accounts file
        file: PathBuf,
    },
    /// Remove an account
    Remove {
        /// The accounts file
        file: PathBuf,
        /// The account's name (case does not matter)
        #[arg(value_parser = parse_name)]
        name: Name,
    },
}

#[derive(clap::Args, Debug)]
struct AddArgs {
    /// The accounts file (created, mode 0600, if missing)
    file: PathBuf,
    /// The account's name: a letter, then up to 23 letters, digits, '_', '.', '-'
    #[arg(value_parser = parse_name)]
    name: Name,
    /// What the account may do: a comma list of view, emit, broadcast, admin
    #[arg(long, value_parser = parse_roles)]
    roles: Roles,
    /// Instead of a password, make a random token (256 bits), print it
    /// once on standard output and keep only its SHA-256
    #[arg(long)]
    token: bool,
    /// When the secret stops working: an age (90s, 15m, 12h, 30d, 8w) or a
    /// UTC time 2027-01-04T09:00:00Z
    #[arg(long, value_name = "WHEN", value_parser = parse_when)]
    expires: Option<When>,
}

/// An expiry as given on the command line.
#[derive(Clone, Copy, Debug)]
enum When {
    After(std::time::Duration),
    At(Expiry),
}

fn parse_name(s: &str) -> Result<Name, String> {
    Name::new(s).map_err(|e| e.to_string())
}

fn parse_roles(s: &str) -> Result<Roles, String> {
    Roles::parse(s).map_err(|e| match e {
        // Typed here, not read from a file: naming the word helps.
        BadRoles::Unknown => {
            let word = s.split(',').find(|word| Roles::parse(word).is_err());
            format!(
                "'{}' is not a role: the roles are view, emit, broadcast and admin",
                word.unwrap_or(s)
            )
        }
        e => e.to_string(),
    })
}

fn parse_when(s: &str) -> Result<When, String> {
    if s.contains('T') {
        return Expiry::parse(s).map(When::At).map_err(|e| e.to_string());
    }
    parse_age(s).map(When::After).map_err(|_| {
        "not an age (90s, 15m, 12h, 30d, 8w) nor a UTC time 2027-01-04T09:00:00Z".to_string()
    })
}

pub fn run(args: UserArgs) -> ExitCode {
    let done = match args.command {
        UserCommand::Add(add_args) => add(&add_args),
        UserCommand::List { file } => list(&file),
        UserCommand::Remove { file, name } => remove(&file, &name),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("evchat user: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The file's accounts, or none when it does not exist yet.
fn load_or_new(path: &Path) -> Result<Accounts, String> {
    match Accounts::load(path) {
        Ok(accounts) => Ok(accounts),
        Err(AccountsError::Open { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            Ok(Accounts::default())
        }
        Err(e) => Err(e.to_string()),
    }
}

fn add(args: &AddArgs) -> Result<(), String> {
    let mut accounts = load_or_new(&args.file)?;
    let expires = args.expires.map(|when| match when {
        When::After(age) => Expiry::after(SystemTime::now(), age),
        When::At(at) => at,
    });
    // An account that could never sign in is a typo, not a wish.
    if let Some(at) = expires.filter(|at| at.has_passed(SystemTime::now())) {
        return Err(format!(
            "--expires {at} has passed: give a later time, or leave --expires out"
        ));
    }
    let (secret, token) = if args.token {
        let token = Credential::generate_token()
            .map_err(|e| format!("no random bytes from the operating system: {e}"))?;
        (Secret::for_token(&token), Some(token))
    } else {
        let password = read_password(&args.name)?;
        let secret =
            Secret::for_password(&password).map_err(|e| format!("hashing the password: {e}"))?;
        (secret, None)
    };
    let kind = secret.kind();
    let replaced = accounts.upsert(Account {
        name: args.name.clone(),
        roles: args.roles,
        secret,
        expires,
    });
    accounts.save(&args.file).map_err(|e| e.to_string())?;
    if let Some(token) = token {
        // Shown once, after the file holds its digest.
        let mut out = io::stdout().lock();
        out.write_all(token.as_bytes())
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush())
            .map_err(|e| format!("writing the token: {e}"))?;
    }
    let until = expires.map_or(String::new(), |e| format!(", until {e}"));
    eprintln!(
        "evchat user: {} {} ({}; {kind}{until})",
        if replaced { "replaced" } else { "added" },
        args.name,
        args.roles
    );
    Ok(())
}

fn list(path: &Path) -> Result<(), String> {
    let accounts = Accounts::load(path).map_err(|e| e.to_string())?;
    let now = SystemTime::now();
    let rows: Vec<[String; 4]> = accounts
        .iter()
        .map(|a| {
            let expires = match a.expires {
                None => "-".to_string(),
                Some(e) if e.has_passed(now) => format!("{e} (expired)"),
                Some(e) => e.to_string(),
            };
            [
                a.name.to_string(),
                a.roles.to_string(),
                a.secret.kind().to_string(),
                expires,
            ]
        })
        .collect();
    let header = ["NAME", "ROLES", "SECRET", "EXPIRES"].map(str::to_string);
    let mut widths = [0usize; 3];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = io::stdout().lock();
    for row in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "{:w0$}  {:w1$}  {:w2$}  {}\n",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        match out.write_all(line.as_bytes()) {
            Ok(()) => {}
            // Whoever read the list has gone: nothing is wrong.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(format!("writing the list: {e}")),
        }
    }
    out.flush().map_err(|e| format!("writing the list: {e}"))
}

fn remove(path: &Path, name: &Name) -> Result<(), String> {
    let mut accounts = Accounts::load(path).map_err(|e| e.to_string())?;
    let Some(removed) = accounts.remove(name.as_str()) else {
        return Err(format!("{}: no account named {name}", path.display()));
    };
    accounts.save(path).map_err(|e| e.to_string())?;
    eprintln!("evchat user: removed {}", removed.name);
    Ok(())
}

/// Checks a new password: not empty, not too long for a hello, and not
/// shaped like a token (which would be checked as one and never match).
fn acceptable(password: Credential) -> Result<Credential, String> {
    let bytes = password.as_bytes();
    if bytes.is_empty() {
        return Err("the password is empty; nothing changed".to_string());
    }
    if bytes.len() > MAX_PRESENTED_LEN {
        return Err(format!(
            "the password is longer than {MAX_PRESENTED_LEN} bytes; nothing changed"
        ));
    }
    if bytes.starts_with(TOKEN_PREFIX.as_bytes()) {
        return Err(format!(
            "a password may not start with {TOKEN_PREFIX:?} (that marks a token); nothing changed"
        ));
    }
    Ok(password)
}

/// One line of standard input as a password, its error worded for `add`.
fn read_line(what: &str) -> Result<Credential, String> {
    read_secret_line(&mut io::stdin().lock()).map_err(|e| line_error(what, e))
}

fn line_error(what: &str, e: SecretLineError) -> String {
    match e {
        SecretLineError::Missing => format!("no {what} on standard input; nothing changed"),
        SecretLineError::TooLong => {
            format!("the {what} is longer than {MAX_PRESENTED_LEN} bytes; nothing changed")
        }
        SecretLineError::Io(e) => format!("reading the {what}: {e}"),
    }
}

fn read_password(name: &Name) -> Result<Credential, String> {
    if !io::stdin().is_terminal() {
        return acceptable(read_line("password")?);
    }
    // Ctrl-C at the prompt gives the terminal its echo back before leaving.
    ctrlc::set_handler(|| {
        eprintln!();
        exit_process(130);
    })
    .map_err(|e| format!("cannot install the signal handler: {e}"))?;
    let ask = |prompt: &str| {
        ask_secret(prompt).map_err(|e| match e {
            SecretLineError::Io(e) => format!("reading the password from the terminal: {e}"),
            e => line_error("password", e),
        })
    };
    let first = acceptable(ask(&format!("Password for {name}: "))?)?;
    let again = ask("Again: ")?;
    if again != first {
        return Err("the two passwords differ; nothing changed".to_string());
    }
    Ok(first)
}
