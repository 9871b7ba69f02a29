//! Numbering the runs of the daemon on this node.

/// Numbers the runs of the daemon on this node: read the last one from the state
/// directory, add one, write it back durably before use. Growing numbers let the
/// replicated state ignore a delayed message of an earlier run.
pub(super) fn next_incarnation(state_dir: &std::path::Path) -> anyhow::Result<u64> {
    use std::io::Write;
    let path = state_dir.join("incarnation");
    let previous = match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .map_err(|_| anyhow::anyhow!("{}: not a number: {:?}", path.display(), text.trim()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    };
    // Also at least the wall clock in microseconds: a state directory restored
    // from a backup or a VM snapshot must not hand out a number already used.
    let wall_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let next = (previous + 1).max(wall_us);
    let tmp = state_dir.join("incarnation.tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(format!("{next}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(state_dir)?.sync_all()
    };
    write().map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(next)
}
