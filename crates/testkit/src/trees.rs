//! Directory trees that hostile input can produce: deeper than PATH_MAX, so
//! they are built one directory handle at a time, never through a full path.

use std::ffi::OsStr;
use std::path::Path;
use uphold_os::confined::DirFd;

/// Creates `parent/name/d/d/...` with `levels` directories below `name`, a file
/// and a symlink (to `/`, never to be followed) every 1000 levels.
pub fn deep_tree(parent: &Path, name: &str, levels: usize) {
    let root = DirFd::open_root(parent).expect("opening the parent of a deep tree");
    root.mkdir(OsStr::new(name), 0o755).expect("mkdir");
    let mut current = root.open_subdir(Path::new(name)).expect("open");
    for level in 0..levels {
        current.mkdir(OsStr::new("d"), 0o755).expect("mkdir");
        if level % 1000 == 0 {
            current.create_new(OsStr::new("f"), 0o644).expect("create");
            current
                .symlink(OsStr::new("/"), OsStr::new("l"))
                .expect("symlink");
        }
        current = current.open_subdir(Path::new("d")).expect("open");
    }
}
