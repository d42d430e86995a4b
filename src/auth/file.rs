//! The accounts file on disk: read only if it is a private regular file
//! (not a symbolic link, no permission for group or others, bounded in
//! size), and written atomically (a temporary file in the same directory,
//! created with mode 0600, synced, renamed over the old one, the directory
//! synced) so that a crash leaves the old file or the new one, never half.

use super::accounts::{Accounts, AccountsError, MAX_FILE_LEN};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;

/// Permission bits that must be clear: any for group or others.
const GROUP_OTHER: u32 = 0o077;

fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// Reads a private file whole. `O_NOFOLLOW` refuses a symbolic link as the
/// last component; `O_NONBLOCK` keeps a FIFO from blocking the open (it is
/// then refused as not a regular file).
pub fn read_private(path: &Path) -> Result<Vec<u8>, AccountsError> {
    let p = || shown(path);
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ELOOP) => AccountsError::Symlink { path: p() },
            _ => AccountsError::Open { path: p(), source },
        })?;
    let meta = file
        .metadata()
        .map_err(|source| AccountsError::Read { path: p(), source })?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err(AccountsError::Symlink { path: p() });
    }
    if !kind.is_file() || kind.is_fifo() || kind.is_socket() {
        return Err(AccountsError::NotRegular { path: p() });
    }
    let mode = meta.mode() & 0o7777;
    if mode & GROUP_OTHER != 0 {
        return Err(AccountsError::Mode { path: p(), mode });
    }
    if meta.len() > MAX_FILE_LEN as u64 {
        return Err(AccountsError::TooLarge { path: p() });
    }
    // Bounded again while reading: the file may grow after the stat.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_FILE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| AccountsError::Read { path: p(), source })?;
    if bytes.len() > MAX_FILE_LEN {
        return Err(AccountsError::TooLarge { path: p() });
    }
    Ok(bytes)
}

/// Replaces `path` with `bytes` atomically, mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AccountsError> {
    let fail = |source| AccountsError::Write {
        path: shown(path),
        source,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| fail(io::Error::new(io::ErrorKind::InvalidInput, "no file name")))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| fail(io::Error::other(e)))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(
        ".tmp-{}-{:016x}",
        std::process::id(),
        u64::from_ne_bytes(suffix)
    ));
    let temp = dir.join(temp_name);
    let written = (|| -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(fail(e));
    }
    Ok(())
}

impl Accounts {
    /// Reads and parses the accounts file at `path`, refusing it unless
    /// it is a private regular file (see [`read_private`]).
    pub fn load(path: &Path) -> Result<Accounts, AccountsError> {
        let bytes = read_private(path)?;
        Accounts::parse(&bytes).map_err(|e| match e {
            AccountsError::TooLarge { .. } => AccountsError::TooLarge { path: shown(path) },
            other => other.in_file(&shown(path)),
        })
    }

    /// Writes the accounts to `path` atomically, mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), AccountsError> {
        write_private(path, &self.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::PathBuf;

    const LINE: &str =
        "alice view sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n";

    /// A fresh directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let path =
                std::env::temp_dir().join(format!("evchat-auth-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn write_with_mode(path: &Path, text: &str, mode: u32) {
        fs::write(path, text).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_private_file_loads() {
        let dir = TempDir::new("private");
        let path = dir.0.join("accounts");
        write_with_mode(&path, LINE, 0o600);
        assert_eq!(Accounts::load(&path).unwrap().len(), 1);
        write_with_mode(&path, LINE, 0o400);
        assert_eq!(Accounts::load(&path).unwrap().len(), 1);
    }

    #[test]
    fn group_or_other_permissions_are_refused() {
        let dir = TempDir::new("mode");
        let path = dir.0.join("accounts");
        for mode in [0o640, 0o604, 0o620, 0o602, 0o644, 0o666] {
            write_with_mode(&path, LINE, mode);
            match Accounts::load(&path) {
                Err(AccountsError::Mode { mode: m, .. }) => assert_eq!(m, mode),
                other => panic!("mode {mode:o}: {other:?}"),
            }
        }
        let err = Accounts::load(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{0}: mode 0666 lets group or others read or write it; the secrets' hashes \
                 must stay private (chmod 600 {0})",
                path.display()
            )
        );
    }

    #[test]
    fn a_symlink_is_refused_even_to_a_private_file() {
        let dir = TempDir::new("symlink");
        let target = dir.0.join("elsewhere");
        write_with_mode(&target, LINE, 0o600);
        let link = dir.0.join("accounts");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            Accounts::load(&link),
            Err(AccountsError::Symlink { .. })
        ));
    }

    #[test]
    fn a_directory_or_fifo_is_not_a_regular_file() {
        let dir = TempDir::new("kind");
        let sub = dir.0.join("sub");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(
            Accounts::load(&sub),
            Err(AccountsError::NotRegular { .. })
        ));
        let fifo = dir.0.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            Accounts::load(&fifo),
            Err(AccountsError::NotRegular { .. })
        ));
    }

    #[test]
    fn a_missing_file_is_an_open_error() {
        let dir = TempDir::new("missing");
        let err = Accounts::load(&dir.0.join("nope")).unwrap_err();
        assert!(
            matches!(&err, AccountsError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn a_large_file_is_refused() {
        let dir = TempDir::new("large");
        let path = dir.0.join("accounts");
        write_with_mode(&path, &"#".repeat(MAX_FILE_LEN + 1), 0o600);
        assert_eq!(
            Accounts::load(&path).unwrap_err().to_string(),
            format!("{}: larger than {MAX_FILE_LEN} bytes", path.display())
        );
    }

    #[test]
    fn a_bad_line_names_the_file_and_line() {
        let dir = TempDir::new("badline");
        let path = dir.0.join("accounts");
        write_with_mode(&path, &format!("{LINE}bob view\n"), 0o600);
        assert_eq!(
            Accounts::load(&path).unwrap_err().to_string(),
            format!(
                "{}: line 2: the line has 2 fields; an account is NAME ROLES SECRET [EXPIRES]",
                path.display()
            )
        );
    }

    #[test]
    fn saving_writes_mode_0600_atomically_and_leaves_no_temporary() {
        let dir = TempDir::new("save");
        let path = dir.0.join("accounts");
        write_with_mode(&path, &format!("# kept\n{LINE}"), 0o600);
        let accounts = Accounts::load(&path).unwrap();
        accounts.save(&path).unwrap();
        let new = dir.0.join("new");
        accounts.save(&new).unwrap();
        for p in [&path, &new] {
            assert_eq!(
                fs::metadata(p).unwrap().permissions().mode() & 0o7777,
                0o600
            );
            assert_eq!(fs::read_to_string(p).unwrap(), format!("# kept\n{LINE}"));
        }
        let mut names: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["accounts", "new"]);
    }

    #[test]
    fn saving_into_a_missing_directory_fails_cleanly() {
        let dir = TempDir::new("nodir");
        let err = Accounts::default()
            .save(&dir.0.join("no/such/accounts"))
            .unwrap_err();
        assert!(matches!(err, AccountsError::Write { .. }), "{err:?}");
    }
}
