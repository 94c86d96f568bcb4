//! [`SharedBytes`]: large read-only data made after the pool exists, shared with its workers
//! without a copy per task.
//!
//! The bytes are copied once into a sealed memfd (Linux `memfd_create`, then `F_SEAL_WRITE`,
//! `F_SEAL_SHRINK`, `F_SEAL_GROW` and `F_SEAL_SEAL`: nobody, the creator included, can change
//! them any more). A handle serializes as a small reference: the creator's pid, the memfd's
//! descriptor number in it, and its inode, device and length. A worker cannot inherit a
//! descriptor made after its fork server was forked, so decoding a handle opens the file
//! through `/proc/<creator pid>/fd/<n>`, checks that it is the same sealed file (inode, device,
//! length, seals), maps it read-only and closes the descriptor. Every worker then reads the
//! same pages of memory: one copy in all, whatever the number of tasks.

use std::fmt;
use std::ops::Deref;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer, Error as _};
use serde::ser::{Serialize, Serializer};

use crate::error::{Error, Result};
use crate::sys::{self, Mapping};

/// Read-only bytes shared with workers through memory, not through the task pipe: the
/// supported way to give every task large data made after the pool was built.
///
/// A `SharedBytes` is cheap to clone and to send: as a task's argument (or part of one) it
/// travels as a reference of about 30 bytes, and the worker maps the same memory. Make it
/// once, pass a clone to each task.
///
/// For data that exists before the pool is built, a plain `static` (a `OnceLock`, say) is
/// simpler still: workers are forks, so they see it copy-on-write, with no copy at all.
///
/// # Caveats
/// * Linux only (it needs `memfd_create` and `/proc`); elsewhere [`new`](Self::new) fails
///   with [`Error::Io`].
/// * Keep a handle alive in the process that made it until the tasks using it are done: a
///   worker opens the data through that process, and a handle decoded after the last one there
///   was dropped fails with [`Error::Decode`]. Handles already decoded keep their mapping.
///   So pass clones and keep one: `pool.apply(f, SharedBytes::new(..)?)` drops the only
///   handle as soon as the task is encoded, before a worker can open it.
/// * A worker's handle decodes in any process of the same user that can read the creator's
///   `/proc/<pid>/fd`, which is normally every worker of the creator's pools.
///
/// # Examples
///
/// ```
/// use forkpool::{Pool, SharedBytes};
///
/// fn count(args: (SharedBytes, u8)) -> usize {
///     let (data, byte) = args;
///     data.iter().filter(|&&b| b == byte).count()
/// }
///
/// let pool = Pool::new(2)?;
/// let data = SharedBytes::new(&vec![7u8; 10 << 20])?; // one copy, shared by every task
/// let counts = pool.map(count, (0..4).map(|i| (data.clone(), 7 - i)))?;
/// assert_eq!(counts, [10 << 20, 0, 0, 0]);
/// # Ok::<(), forkpool::Error>(())
/// ```
#[derive(Clone)]
pub struct SharedBytes {
    inner: Arc<Inner>,
}

struct Inner {
    origin: Origin,
    map: Mapping,
    /// In the creator: the memfd, which keeps `/proc/<pid>/fd/<fd>` open for workers.
    _fd: Option<OwnedFd>,
}

/// How any process finds the bytes: what a handle serializes as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Origin {
    pid: u32,
    fd: i32,
    ino: u64,
    dev: u64,
    len: u64,
}

impl SharedBytes {
    /// Copies `bytes` into a new sealed memfd and maps it read-only.
    ///
    /// # Errors
    /// [`Error::Io`] if the memfd cannot be made, written, sealed or mapped (and on systems
    /// other than Linux).
    ///
    /// # Examples
    ///
    /// ```
    /// let shared = forkpool::SharedBytes::new(b"read-only")?;
    /// assert_eq!(&shared[..], b"read-only");
    /// assert_eq!(shared.len(), 9);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn new(bytes: &[u8]) -> Result<SharedBytes> {
        #[cfg(target_os = "linux")]
        {
            create(bytes)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = bytes;
            Err(Error::Io {
                op: "memfd_create",
                source: std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "SharedBytes needs Linux's memfd_create",
                ),
            })
        }
    }

    /// The shared bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// let shared = forkpool::SharedBytes::new(&[1, 2, 3])?;
    /// assert_eq!(shared.as_slice().iter().sum::<u8>(), 6);
    /// # Ok::<(), forkpool::Error>(())
    /// ```
    pub fn as_slice(&self) -> &[u8] {
        self.inner.map.as_slice()
    }
}

#[cfg(target_os = "linux")]
fn create(bytes: &[u8]) -> Result<SharedBytes> {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    let fd = sys::memfd_sealable(c"forkpool-shared").map_err(Error::io("memfd_create"))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)
        .map_err(Error::io("writing shared bytes"))?;
    let meta = file.metadata().map_err(Error::io("fstat"))?;
    let fd = OwnedFd::from(file);
    sys::seal_read_only(&fd).map_err(Error::io("sealing shared bytes"))?;
    let map = Mapping::read_only(&fd, bytes.len()).map_err(Error::io("mmap"))?;
    let origin = Origin {
        pid: std::process::id(),
        fd: fd.as_raw_fd(),
        ino: meta.ino(),
        dev: meta.dev(),
        len: bytes.len() as u64,
    };
    Ok(SharedBytes {
        inner: Arc::new(Inner {
            origin,
            map,
            _fd: Some(fd),
        }),
    })
}

/// Opens and maps the bytes a handle refers to, checking that they are the sealed file it
/// names and not some other file that took its descriptor number.
fn open(origin: Origin) -> std::result::Result<SharedBytes, String> {
    use std::os::unix::fs::MetadataExt;

    let path = format!("/proc/{}/fd/{}", origin.pid, origin.fd);
    let gone = |why: &dyn fmt::Display| {
        format!(
            "the shared bytes of process {} are gone ({why}); keep a SharedBytes alive there \
             until its tasks are done",
            origin.pid
        )
    };
    let file = std::fs::File::open(&path).map_err(|e| gone(&e))?;
    let meta = file.metadata().map_err(|e| gone(&e))?;
    if (meta.ino(), meta.dev(), meta.len()) != (origin.ino, origin.dev, origin.len) {
        return Err(gone(&"its descriptor now names another file"));
    }
    let fd = OwnedFd::from(file);
    #[cfg(target_os = "linux")]
    if !sys::is_sealed_read_only(&fd) {
        return Err(gone(&"the file there is not sealed read-only"));
    }
    let len = usize::try_from(origin.len).map_err(|e| gone(&e))?;
    let map = Mapping::read_only(&fd, len).map_err(|e| gone(&e))?;
    Ok(SharedBytes {
        inner: Arc::new(Inner {
            origin,
            map,
            _fd: None,
        }),
    })
}

impl Deref for SharedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedBytes")
            .field("len", &self.inner.origin.len)
            .field("creator", &self.inner.origin.pid)
            .finish()
    }
}

impl Serialize for SharedBytes {
    /// A reference to the bytes (creator pid, descriptor, inode, device, length), not the bytes.
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let o = self.inner.origin;
        (o.pid, o.fd, o.ino, o.dev, o.len).serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharedBytes {
    /// Opens and maps the bytes the reference names; an error if they are gone.
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<SharedBytes, D::Error> {
        let (pid, fd, ino, dev, len) = <(u32, i32, u64, u64, u64)>::deserialize(d)?;
        open(Origin {
            pid,
            fd,
            ino,
            dev,
            len,
        })
        .map_err(D::Error::custom)
    }
}
