//! Keys generated once and kept in the data directory.

use std::io::Write;
use std::path::Path;

use rand::RngCore;

/// Reads `data_dir/keys/<name>`, or creates it with 32 random bytes (mode 0600).
pub fn load_or_create(data_dir: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let dir = data_dir.join("keys");
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) if bytes.len() >= 32 => return Ok(bytes),
        Ok(_) => {
            return Err(std::io::Error::other(format!("{} is shorter than 32 bytes", path.display())));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(&dir)?;
    let mut key = vec![0u8; 32];
    rand::rng().fill_bytes(&mut key);
    // Write a private temporary file completely, then link it into place: the key
    // file either does not exist or is whole, and a concurrent starter keeps ours or theirs.
    let tmp = dir.join(format!(".{name}.{}", uuid::Uuid::new_v4().simple()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = opts.open(&tmp).and_then(|mut f| {
        f.write_all(&key)?;
        f.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, &path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let theirs = std::fs::read(&path)?;
            if theirs.len() < 32 {
                return Err(std::io::Error::other(format!("{} is shorter than 32 bytes", path.display())));
            }
            Ok(theirs)
        }
        Err(e) => Err(e),
    }
}
