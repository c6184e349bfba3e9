//! Writing bundles deterministically and reading them with every size
//! bounded and every byte verified.
//!
//! Layout (a zstd-compressed ustar archive, one zstd frame with a content
//! checksum):
//!
//! ```text
//! manifest.json            always first
//! manifest.json.minisig    second, when signed
//! <files>                  exactly the manifest's `files`, in that order
//! ```
//!
//! Every entry is a regular file with a short, safe relative path; owners,
//! modes and mtimes are fixed, so the same inputs give the same bytes.

use crate::keys::{KeyId, SignatureInfo, TrustedKeys};
use crate::manifest::{is_safe_path, FileEntry, Manifest, MANIFEST_PATH, SIGNATURE_PATH};
use crate::BundleError;
use sha2::{Digest, Sha256};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

/// zstd level used for bundles. Fixed: part of what makes builds reproducible.
pub const ZSTD_LEVEL: i32 = 10;
/// Largest zstd window a reader accepts (2^27 = 128 MiB), so a crafted frame
/// cannot make the device allocate more.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// Bounds applied while reading a bundle.
#[derive(Debug, Clone, Copy)]
pub struct BundleLimits {
    pub max_compressed: u64,
    pub max_unpacked: u64,
    pub max_manifest: u64,
    pub max_signature: u64,
    pub max_entries: usize,
}

impl Default for BundleLimits {
    fn default() -> Self {
        BundleLimits { max_compressed: 1 << 30, max_unpacked: 2 << 30, max_manifest: 1 << 20, max_signature: 4 << 10, max_entries: 256 }
    }
}

fn encoder<W: Write>(w: W) -> io::Result<zstd::stream::Encoder<'static, W>> {
    let mut enc = zstd::stream::Encoder::new(w, ZSTD_LEVEL)?;
    enc.include_checksum(true)?;
    enc.include_contentsize(false)?;
    Ok(enc)
}

/// The first bytes of every bundle: zstd magic, frame header descriptor and
/// window descriptor as our encoder settings produce them.
pub fn canonical_frame_header() -> &'static [u8] {
    static HEAD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    HEAD.get_or_init(|| {
        let mut enc = encoder(Vec::new()).expect("zstd encoder");
        enc.write_all(b"limes").expect("in-memory write");
        let out = enc.finish().expect("in-memory zstd");
        out[..6].to_vec()
    })
}

/// Compress a raw tar stream exactly as [`write_bundle`] does (used to build
/// hostile test bundles that only the structural checks can refuse).
pub fn compress_canonical(raw_tar: &[u8]) -> Vec<u8> {
    let mut enc = encoder(Vec::new()).expect("zstd encoder");
    enc.write_all(raw_tar).expect("in-memory write");
    enc.finish().expect("in-memory zstd")
}

/// Content of one file to put into a bundle.
pub enum Source<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// Fill in `files` of a manifest from the given contents (sorted by path).
pub fn file_entries(files: &[(String, Source<'_>)]) -> Result<Vec<FileEntry>, BundleError> {
    let mut out = Vec::new();
    for (path, src) in files {
        let (sha256, size) = match src {
            Source::Bytes(b) => (crate::sha256_hex(b), b.len() as u64),
            Source::File(p) => {
                let mut f = std::fs::File::open(p).map_err(|e| BundleError::io(p, e))?;
                let mut h = Sha256::new();
                let n = io::copy(&mut f, &mut h).map_err(|e| BundleError::io(p, e))?;
                (hex::encode(h.finalize()), n)
            }
        };
        out.push(FileEntry { path: path.clone(), sha256, size });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The one header a bundle entry may have: what the writer emits for this
/// path, size and mtime. The reader rebuilds it and compares all 512 bytes,
/// so no header byte can change while the signed content stays the same.
pub fn canonical_header(path: &str, size: u64, mtime: u64) -> Result<tar::Header, BundleError> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o444);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_username("").ok();
    h.set_groupname("").ok();
    h.set_path(path).map_err(|_| BundleError::UnsafeEntry(format!("{} does not fit a ustar header", crate::untrusted(path))))?;
    h.set_cksum();
    Ok(h)
}

/// Write a bundle to `out` atomically: the archive goes to a temporary file in
/// the same directory and is renamed over `out` only when complete, so a
/// failure or an interruption never leaves a partial bundle.
///
/// `files` must be exactly the manifest's files, with matching content.
pub fn write_bundle(out: &Path, manifest_json: &[u8], signature: Option<&str>, files: &[(String, Source<'_>)], mtime: u64) -> Result<(), BundleError> {
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| BundleError::io(dir, e))?;
    let tmp = tempfile::Builder::new().prefix(".limes-tmp-").tempfile_in(dir).map_err(|e| BundleError::io(dir, e))?;
    let io_err = |e: io::Error| BundleError::io(tmp.path(), e);

    let manifest = Manifest::from_json(manifest_json)?;
    let mut sorted: Vec<&(String, Source<'_>)> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    if sorted.iter().map(|f| f.0.as_str()).ne(manifest.files.iter().map(|f| f.path.as_str())) {
        return Err(BundleError::Manifest("files given do not match the manifest's file list".into()));
    }

    let mut enc = encoder(tmp.as_file()).map_err(io_err)?;
    {
        let mut tar = tar::Builder::new(&mut enc);
        let mut add = |path: &str, size: u64, data: &mut dyn Read| -> io::Result<()> {
            let h = canonical_header(path, size, mtime).map_err(io::Error::other)?;
            tar.append(&h, data)
        };
        add(MANIFEST_PATH, manifest_json.len() as u64, &mut &manifest_json[..]).map_err(io_err)?;
        if let Some(sig) = signature {
            add(SIGNATURE_PATH, sig.len() as u64, &mut sig.as_bytes()).map_err(io_err)?;
        }
        for ((path, src), entry) in sorted.iter().map(|f| (&f.0, &f.1)).zip(&manifest.files) {
            match src {
                Source::Bytes(b) => add(path, b.len() as u64, &mut &b[..]).map_err(io_err)?,
                Source::File(p) => {
                    let mut f = std::fs::File::open(p).map_err(|e| BundleError::io(p, e))?;
                    let size = f.metadata().map_err(|e| BundleError::io(p, e))?.len();
                    if size != entry.size {
                        return Err(BundleError::SizeMismatch { path: path.clone(), expected: entry.size, actual: size });
                    }
                    add(path, size, &mut f).map_err(io_err)?
                }
            }
        }
        tar.into_inner().map_err(io_err)?;
    }
    enc.finish().map_err(io_err)?.sync_all().map_err(io_err)?;
    // Temporary files are created private; a bundle is meant to be shared.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644)).map_err(io_err)?;
    }
    tmp.persist(out).map_err(|e| BundleError::io(out, e.error))?;
    Ok(())
}

/// What a reader does with each verified-as-it-streams file. The data reader
/// yields exactly the entry's bytes; the caller must treat what it wrote as
/// untrusted until [`read_bundle`] returns `Ok` (the digest is checked after
/// the last byte).
pub trait FileSink {
    fn file(&mut self, entry: &FileEntry, data: &mut dyn Read) -> io::Result<()>;
}

/// Discards file contents (verification only).
pub struct Discard;

impl FileSink for Discard {
    fn file(&mut self, _entry: &FileEntry, data: &mut dyn Read) -> io::Result<()> {
        io::copy(data, &mut io::sink()).map(|_| ())
    }
}

/// Keeps file contents in memory (tests, inspection of small bundles).
#[derive(Default)]
pub struct InMemory(pub Vec<(String, Vec<u8>)>);

impl FileSink for InMemory {
    fn file(&mut self, entry: &FileEntry, data: &mut dyn Read) -> io::Result<()> {
        let mut v = Vec::with_capacity(entry.size.min(64 << 20) as usize);
        data.read_to_end(&mut v)?;
        self.0.push((entry.path.clone(), v));
        Ok(())
    }
}

/// How the signature is treated.
pub enum SignaturePolicy<'a> {
    /// The bundle must be signed by one of these keys.
    Require(&'a TrustedKeys),
    /// Check everything else, report the signer, but trust no key
    /// (`inspect`, `verify` without `--key`).
    Unverified,
}

/// A bundle whose manifest, files, sizes and digests all checked out.
#[derive(Debug)]
pub struct VerifiedBundle {
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    /// Raw text of `manifest.json.minisig`, when present.
    pub signature: Option<String>,
    /// Key id the signature claims (checked only under `Require`).
    pub signer: Option<KeyId>,
    pub signature_verified: bool,
    pub trusted_comment: Option<String>,
    pub compressed_size: u64,
}

/// Reader that fails once more than `left` bytes pass through it.
struct Bounded<R> {
    inner: R,
    left: u64,
    what: &'static str,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::new(io::ErrorKind::InvalidData, LimitHit(self.what)));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[derive(Debug)]
struct LimitHit(&'static str);
impl std::fmt::Display for LimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} limit exceeded", self.0)
    }
}
impl std::error::Error for LimitHit {}

/// Where a read error arose, tagged by [`Tagged`] as it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Reading the stored bundle (an I/O failure, not a property of the
    /// bytes).
    Stored,
    /// The decompressed stream: the decoder or the counters around it (as
    /// opposed to a sink writing what was read).
    Stream,
}

#[derive(Debug)]
struct OriginError(Origin, io::Error);

impl std::fmt::Display for OriginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.1.fmt(f)
    }
}
impl std::error::Error for OriginError {}

/// Tags every read error of `R` with where it arose.
struct Tagged<R>(Origin, R);

impl<R: Read> Read for Tagged<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.1.read(buf).map_err(|e| io::Error::new(e.kind(), OriginError(self.0, e)))
    }
}

/// Classify an I/O error by where it arose (by type, never by message):
/// a size limit; the stored file (I/O, not verification); the end of the
/// data (truncation); the decoder (the compressed stream is damaged); or
/// else the sink that was writing what was read.
fn classify(e: io::Error, context: &str) -> BundleError {
    let mut cur: &(dyn std::error::Error + 'static) = &e;
    let mut from_stream = false;
    loop {
        if let Some(l) = cur.downcast_ref::<LimitHit>() {
            return BundleError::TooLarge(format!("{l} while reading {context}"));
        }
        match cur.downcast_ref::<OriginError>() {
            Some(OriginError(Origin::Stored, io)) => {
                return BundleError::Io { path: context.to_string(), source: io::Error::new(io.kind(), io.to_string()) };
            }
            Some(OriginError(Origin::Stream, _)) => from_stream = true,
            None => {}
        }
        let next = match cur.downcast_ref::<io::Error>() {
            Some(io) => io.get_ref().map(|i| i as &(dyn std::error::Error + 'static)),
            None => cur.source(),
        };
        match next {
            Some(n) => cur = n,
            None => break,
        }
    }
    if e.kind() == io::ErrorKind::UnexpectedEof {
        return BundleError::Archive(format!("truncated while reading {context}"));
    }
    if from_stream {
        BundleError::Compression(format!("{e} (while reading {context})"))
    } else {
        BundleError::Io { path: context.to_string(), source: e }
    }
}

/// Hashes and counts everything read through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing { inner, hasher: Sha256::new(), count: 0 }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Passes decompressed bytes through and compresses them again.
struct ReEncode<R> {
    inner: R,
    enc: zstd::stream::Encoder<'static, HashWriter>,
}

impl<R: Read> Read for ReEncode<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.enc.write_all(&buf[..n])?;
        Ok(n)
    }
}

fn read_small(entry: &mut dyn Read, size: u64, max: u64, what: &str) -> Result<Vec<u8>, BundleError> {
    if size > max {
        return Err(BundleError::TooLarge(format!("{what} is {size} bytes (limit {max})")));
    }
    let mut v = Vec::with_capacity(size as usize);
    entry.take(size).read_to_end(&mut v).map_err(|e| classify(e, what))?;
    if v.len() as u64 != size {
        return Err(BundleError::Archive(format!("{what} is truncated")));
    }
    Ok(v)
}

/// What a file that is not a bundle looks like, for the error message.
fn describe_file(head: &[u8]) -> &'static str {
    let text = std::str::from_utf8(&head[..head.len().min(256)]).unwrap_or("");
    if head.starts_with(b"\0asm") {
        if head.get(4..8) == Some(&[1, 0, 0, 0]) {
            "a WebAssembly module"
        } else {
            "a WebAssembly component"
        }
    } else if text.starts_with("untrusted comment:") && text.contains("secret key") {
        "a minisign secret key"
    } else if text.starts_with("untrusted comment:") && text.contains("public key") {
        "a minisign public key"
    } else if text.starts_with("untrusted comment:") {
        "a minisign file"
    } else if head.starts_with(b"\x7fELF") {
        "an ELF file (a precompiled .cwasm or an executable)"
    } else if head.is_empty() {
        "empty"
    } else if head.get(257..262) == Some(b"ustar") {
        "an uncompressed tar archive"
    } else {
        "not a zstd stream"
    }
}

const BLOCK: usize = 512;

/// One entry as its 512-byte header states it.
struct EntryHead {
    path: String,
    size: u64,
    mtime: u64,
}

/// Read exactly one 512-byte block.
fn read_block(r: &mut impl Read, what: &str) -> Result<[u8; BLOCK], BundleError> {
    let mut b = [0u8; BLOCK];
    r.read_exact(&mut b).map_err(|e| classify(e, what))?;
    Ok(b)
}

/// Judge an entry from its header block alone, before a byte of its payload
/// is read: it must be a regular file with a safe path, and the block must be
/// exactly [`canonical_header`] of what it states. Extension entries (GNU
/// long names, pax headers) are refused here, so their payload is never
/// buffered. `Ok(None)` is the first end-of-archive block.
fn parse_header(block: &[u8; BLOCK]) -> Result<Option<EntryHead>, BundleError> {
    if block.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let h = tar::Header::from_byte_slice(block);
    let name = crate::untrusted_bytes(&h.path_bytes());
    let kind = match block[156] {
        b'0' => None,
        b'1' => Some("a hard link"),
        b'2' => Some("a symlink"),
        b'3' | b'4' => Some("a device node"),
        b'5' => Some("a directory"),
        b'6' => Some("a fifo"),
        b'L' | b'K' => Some("a GNU long-name extension entry"),
        b'x' | b'g' => Some("a pax extended header"),
        _ => Some("not a regular file"),
    };
    if let Some(kind) = kind {
        return Err(BundleError::UnsafeEntry(format!("{name} is {kind}")));
    }
    let raw = h.path_bytes();
    let path = std::str::from_utf8(&raw).map_err(|_| BundleError::UnsafeEntry(format!("entry path {name} is not UTF-8")))?;
    if path != MANIFEST_PATH && path != SIGNATURE_PATH && !is_safe_path(path) {
        return Err(BundleError::UnsafeEntry(format!("{name} is not a safe relative path")));
    }
    let field = |what: &str| BundleError::Archive(format!("header of {name} has an invalid {what} field"));
    let size = h.size().map_err(|_| field("size"))?;
    let mtime = h.mtime().map_err(|_| field("mtime"))?;
    let want = canonical_header(path, size, mtime)?;
    if let Some(i) = want.as_bytes().iter().zip(block.iter()).position(|(a, b)| a != b) {
        return Err(BundleError::Archive(format!("header of {name} differs from the canonical limes header at byte {i} ({})", header_field(i))));
    }
    Ok(Some(EntryHead { path: path.to_string(), size, mtime }))
}

/// Name of the ustar header field holding byte `i`.
fn header_field(i: usize) -> &'static str {
    const FIELDS: [(usize, &str); 16] = [
        (100, "name"),
        (108, "mode"),
        (116, "uid"),
        (124, "gid"),
        (136, "size"),
        (148, "mtime"),
        (156, "checksum"),
        (157, "type"),
        (257, "link name"),
        (263, "magic"),
        (265, "version"),
        (297, "user name"),
        (329, "group name"),
        (337, "device major"),
        (345, "device minor"),
        (500, "prefix"),
    ];
    FIELDS.iter().find(|(end, _)| i < *end).map(|(_, n)| *n).unwrap_or("padding")
}

/// Read the zero padding that follows `size` bytes of payload.
fn read_padding(r: &mut impl Read, size: u64, what: &str) -> Result<(), BundleError> {
    let pad = ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize;
    let mut b = [0u8; BLOCK];
    r.read_exact(&mut b[..pad]).map_err(|e| classify(e, what))?;
    if b[..pad].iter().any(|&x| x != 0) {
        return Err(BundleError::Archive(format!("padding after {what} is not zero")));
    }
    Ok(())
}

/// Read and verify the bundle at `path`, streaming each listed file through
/// `sink`. The manifest and signature are checked before any other entry is
/// read; each file's size and SHA-256 are checked as it streams; the archive
/// must end exactly after the listed files.
pub fn read_bundle(path: &Path, limits: &BundleLimits, policy: SignaturePolicy<'_>, sink: &mut dyn FileSink) -> Result<VerifiedBundle, BundleError> {
    let file = std::fs::File::open(path).map_err(|e| BundleError::io(path, e))?;
    let meta = file.metadata().map_err(|e| BundleError::io(path, e))?;
    if meta.is_dir() {
        return Err(BundleError::IsDirectory(path.display().to_string()));
    }
    let compressed_size = meta.len();
    if compressed_size > limits.max_compressed {
        return Err(BundleError::TooLarge(format!("bundle is {compressed_size} bytes (limit {})", limits.max_compressed)));
    }
    read_stream(Tagged(Origin::Stored, file), compressed_size, limits, policy, sink)
}

/// [`read_bundle`] over any reader of compressed bytes.
pub fn read_stream(
    compressed: impl Read,
    compressed_size: u64,
    limits: &BundleLimits,
    policy: SignaturePolicy<'_>,
    sink: &mut dyn FileSink,
) -> Result<VerifiedBundle, BundleError> {
    let mut raw = BufReader::new(Hashing::new(Bounded { inner: compressed, left: limits.max_compressed, what: "compressed size" }));
    // The frame header must be exactly the one the writer emits: a header
    // field that changes nothing when decoding (the window size, say) would
    // otherwise let a modified bundle verify.
    let head = raw.fill_buf().map_err(|e| classify(e, "zstd frame header"))?;
    if !head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(BundleError::NotABundle(describe_file(head).into()));
    }
    let want = canonical_frame_header();
    if head.len() < want.len() || head[..want.len()] != want[..] {
        return Err(BundleError::Compression(format!("zstd frame header is not the canonical limes header {want:02x?}")));
    }
    let mut dec = zstd::stream::read::Decoder::with_buffer(raw).map_err(|e| BundleError::Compression(e.to_string()))?.single_frame();
    dec.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(|e| BundleError::Compression(e.to_string()))?;
    // Everything decompressed is compressed again with the writer's settings:
    // the result must be the input, byte for byte. zstd can encode the same
    // content in many ways; only the canonical one is a limes bundle, so no
    // altered byte goes unnoticed even when it decodes to the same content.
    let tee = ReEncode { inner: dec, enc: encoder(HashWriter(Sha256::new())).map_err(|e| BundleError::Compression(e.to_string()))? };
    let mut unpacked = Bounded { inner: Tagged(Origin::Stream, tee), left: limits.max_unpacked, what: "unpacked size" };

    let next = |r: &mut _, what: &str| -> Result<Option<EntryHead>, BundleError> { parse_header(&read_block(r, what)?) };

    // 1. The manifest.
    let head = next(&mut unpacked, "manifest header")?.ok_or_else(|| BundleError::Archive("bundle is empty".into()))?;
    if head.path != MANIFEST_PATH {
        return Err(BundleError::Archive(format!("first entry must be {MANIFEST_PATH}, found {}", crate::untrusted(&head.path))));
    }
    let mtime = head.mtime;
    let manifest_bytes = read_small(&mut unpacked, head.size, limits.max_manifest, MANIFEST_PATH)?;
    read_padding(&mut unpacked, head.size, MANIFEST_PATH)?;

    // 2. The signature: checked before anything else is read.
    let mut pending = next(&mut unpacked, "signature header")?;
    let mut signature = None;
    if let Some(h) = pending.take_if(|h| h.path == SIGNATURE_PATH) {
        let bytes = read_small(&mut unpacked, h.size, limits.max_signature, SIGNATURE_PATH)?;
        read_padding(&mut unpacked, h.size, SIGNATURE_PATH)?;
        if h.mtime != mtime {
            return Err(BundleError::Archive(format!("{SIGNATURE_PATH} has another mtime than {MANIFEST_PATH}")));
        }
        signature = Some(String::from_utf8(bytes).map_err(|_| BundleError::Signature("signature file is not UTF-8".into()))?);
        pending = next(&mut unpacked, "entry header")?;
    }
    let (signer, signature_verified, trusted_comment) = match (&signature, &policy) {
        (None, SignaturePolicy::Require(_)) => return Err(BundleError::Unsigned),
        (None, SignaturePolicy::Unverified) => (None, false, None),
        (Some(text), policy) => {
            let info = SignatureInfo::parse(text)?;
            let verified = match policy {
                SignaturePolicy::Require(keys) => {
                    keys.verify(&manifest_bytes, &info)?;
                    true
                }
                SignaturePolicy::Unverified => false,
            };
            (Some(info.key_id), verified, Some(info.trusted_comment))
        }
    };
    // Only now is the manifest's content trusted enough to parse.
    let manifest = Manifest::from_json(&manifest_bytes)?;
    if let (true, Some(tc)) = (signature_verified, &trusted_comment) {
        check_trusted_comment(&manifest, tc)?;
    }
    if mtime != manifest.provenance.source_date_epoch {
        return Err(BundleError::Archive(format!("entry mtime {mtime} is not the manifest's source_date_epoch {}", manifest.provenance.source_date_epoch)));
    }
    if manifest.files.len() > limits.max_entries {
        return Err(BundleError::TooLarge(format!("manifest lists {} files (limit {})", manifest.files.len(), limits.max_entries)));
    }
    let declared: u64 = manifest.files.iter().map(|f| f.size).sum();
    if declared > limits.max_unpacked {
        return Err(BundleError::TooLarge(format!("manifest declares {declared} bytes of files (limit {})", limits.max_unpacked)));
    }

    // 3. Exactly the listed files, in order.
    let mut expected = manifest.files.iter();
    loop {
        let h = match pending.take() {
            Some(h) => h,
            None => match next(&mut unpacked, "entry header")? {
                Some(h) => h,
                None => break,
            },
        };
        let p = h.path;
        let want = match expected.next() {
            Some(w) if w.path == p => w,
            Some(w) => {
                return Err(if manifest.file(&p).is_some() {
                    BundleError::Archive(format!("entry {p:?} is out of order or repeated (expected {:?})", w.path))
                } else {
                    BundleError::UnlistedFile(p)
                })
            }
            None => {
                return Err(if manifest.file(&p).is_some() || p == MANIFEST_PATH || p == SIGNATURE_PATH {
                    BundleError::Archive(format!("entry {p:?} appears twice"))
                } else {
                    BundleError::UnlistedFile(p)
                })
            }
        };
        if h.size != want.size {
            return Err(BundleError::SizeMismatch { path: p, expected: want.size, actual: h.size });
        }
        if h.mtime != mtime {
            return Err(BundleError::Archive(format!("{p} has another mtime than {MANIFEST_PATH}")));
        }
        let size = h.size;
        let mut hr = Hashing::new((&mut unpacked).take(size));
        sink.file(want, &mut hr).map_err(|er| classify(er, &p))?;
        io::copy(&mut hr, &mut io::sink()).map_err(|er| classify(er, &p))?;
        if hr.count != size {
            return Err(BundleError::Archive(format!("{p:?} is truncated")));
        }
        let actual = hex::encode(hr.hasher.finalize());
        if actual != want.sha256 {
            return Err(BundleError::DigestMismatch { path: p, expected: want.sha256.clone(), actual });
        }
        read_padding(&mut unpacked, size, &p)?;
    }
    if let Some(missing) = expected.next() {
        return Err(BundleError::MissingFile(missing.path.clone()));
    }

    // 4. The archive ends exactly as the writer ends it (two zero blocks),
    // then the zstd frame must end (which checks its content checksum) with
    // no trailing bytes.
    if read_block(&mut unpacked, "archive end")?.iter().any(|&b| b != 0) {
        return Err(BundleError::Archive("data after the last listed file".into()));
    }
    let mut probe = [0u8; 1];
    if unpacked.read(&mut probe).map_err(|e| classify(e, "archive end"))? != 0 {
        return Err(BundleError::Archive("data after the end of the archive".into()));
    }
    let Tagged(_, ReEncode { inner: dec, enc }) = unpacked.inner;
    let mut raw = dec.finish();
    let trailing = raw.fill_buf().map_err(|e| classify(e, "bundle end"))?;
    if !trailing.is_empty() {
        return Err(BundleError::Archive("trailing bytes after the compressed archive".into()));
    }
    let original = raw.into_inner().hasher.finalize();
    let reencoded = enc.finish().map_err(|e| BundleError::Compression(e.to_string()))?.0.finalize();
    if original != reencoded {
        return Err(BundleError::Compression("compressed stream is not in canonical form: it was altered (or written by another tool)".into()));
    }

    Ok(VerifiedBundle { manifest, manifest_bytes, signature, signer, signature_verified, trusted_comment, compressed_size })
}

/// A verified signature's trusted comment must name this manifest.
pub fn check_trusted_comment(manifest: &Manifest, comment: &str) -> Result<(), BundleError> {
    let want = manifest.trusted_comment();
    if comment != want {
        return Err(BundleError::Signature(format!(
            "the signed trusted comment {} does not describe this manifest (expected {want:?})",
            crate::untrusted(comment)
        )));
    }
    Ok(())
}

/// Rewrite `out` (atomically) with `signature` added or replaced, keeping the
/// manifest and files. The input is fully verified first (without trusting
/// any key), so signing never blesses a damaged bundle.
pub fn resign(bundle: &Path, out: &Path, limits: &BundleLimits, sign: impl FnOnce(&VerifiedBundle) -> String) -> Result<VerifiedBundle, BundleError> {
    let mut mem = InMemory::default();
    let v = read_bundle(bundle, limits, SignaturePolicy::Unverified, &mut mem)?;
    let signature = sign(&v);
    let files: Vec<(String, Source<'_>)> = mem.0.iter().map(|(p, b)| (p.clone(), Source::Bytes(b.as_slice()))).collect();
    write_bundle(out, &v.manifest_bytes, Some(&signature), &files, v.manifest.provenance.source_date_epoch)?;
    Ok(v)
}

/// Write `bundle` again as `out` with its manifest changed by `edit` and
/// signed by `key` (with `comment` as the trusted comment, else the
/// manifest's own): a validly signed variant, as a publisher of another
/// version (or an attacker holding the key) would make. Tests and
/// benchmarks use it to make versions of one build; the files are copied
/// unchanged and unverified.
#[cfg(feature = "sign")]
pub fn rewrite_manifest(
    bundle: &Path,
    key: &crate::keys::SecretKey,
    out: &Path,
    edit: impl FnOnce(&mut Manifest),
    comment: Option<&str>,
) -> Result<(), BundleError> {
    let mut mem = InMemory::default();
    let v = read_bundle(bundle, &BundleLimits::default(), SignaturePolicy::Unverified, &mut mem)?;
    let mut m = v.manifest.clone();
    edit(&mut m);
    let json = m.to_json();
    let sig = key.sign(&json, comment.map(String::from).unwrap_or_else(|| m.trusted_comment()).as_str());
    let files: Vec<(String, Source<'_>)> = mem.0.iter().map(|(p, b)| (p.clone(), Source::Bytes(b))).collect();
    write_bundle(out, &json, Some(&sig), &files, m.provenance.source_date_epoch)
}

#[cfg(all(test, feature = "sign"))]
mod tests {
    use super::*;
    use crate::keys::SecretKey;
    use crate::manifest::{tests::sample, COMPONENT_PATH};

    fn make(dir: &Path, sign: Option<&SecretKey>) -> (PathBuf, Vec<u8>) {
        let component = b"\0asm fake component bytes".to_vec();
        let mut m = sample();
        let files = vec![(COMPONENT_PATH.to_string(), Source::Bytes(&component))];
        m.files = file_entries(&files).unwrap();
        let json = m.to_json();
        let sig = sign.map(|k| k.sign(&json, &m.trusted_comment()));
        let out = dir.join("b.limes");
        write_bundle(&out, &json, sig.as_deref(), &files, 0).unwrap();
        (out, json)
    }

    use std::path::PathBuf;

    #[test]
    fn round_trip_signed_and_unsigned() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let keys = TrustedKeys::new(vec![key.public()]);
        let (b, json) = make(dir.path(), Some(&key));
        let mut mem = InMemory::default();
        let v = read_bundle(&b, &BundleLimits::default(), SignaturePolicy::Require(&keys), &mut mem).unwrap();
        assert_eq!(v.manifest_bytes, json);
        assert!(v.signature_verified);
        assert_eq!(mem.0[0].0, COMPONENT_PATH);
        // Reproducible: same inputs, same bytes.
        let first = std::fs::read(&b).unwrap();
        make(dir.path(), Some(&key));
        assert_eq!(first, std::fs::read(&b).unwrap());
        // Unsigned bundles are readable for inspection, refused under Require.
        let (b, _) = make(dir.path(), None);
        read_bundle(&b, &BundleLimits::default(), SignaturePolicy::Unverified, &mut Discard).unwrap();
        let e = read_bundle(&b, &BundleLimits::default(), SignaturePolicy::Require(&keys), &mut Discard).unwrap_err();
        assert!(matches!(e, BundleError::Unsigned), "{e}");
        assert_eq!(&std::fs::read(&b).unwrap()[..6], canonical_frame_header());
    }

    #[test]
    fn every_single_byte_flip_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let keys = TrustedKeys::new(vec![key.public()]);
        let (b, _) = make(dir.path(), Some(&key));
        let orig = std::fs::read(&b).unwrap();
        let bad = dir.path().join("bad.limes");
        for i in 0..orig.len() {
            for mask in [0x01u8, 0x80] {
                let mut m = orig.clone();
                m[i] ^= mask;
                std::fs::write(&bad, &m).unwrap();
                let r = read_bundle(&bad, &BundleLimits::default(), SignaturePolicy::Require(&keys), &mut Discard);
                assert!(r.is_err(), "flipping byte {i} with {mask:#x} was accepted");
            }
        }
        for cut in [0, 1, 5, orig.len() / 2, orig.len() - 1] {
            std::fs::write(&bad, &orig[..cut]).unwrap();
            assert!(read_bundle(&bad, &BundleLimits::default(), SignaturePolicy::Require(&keys), &mut Discard).is_err());
        }
        let mut extra = orig.clone();
        extra.push(0);
        std::fs::write(&bad, &extra).unwrap();
        let e = read_bundle(&bad, &BundleLimits::default(), SignaturePolicy::Require(&keys), &mut Discard).unwrap_err();
        assert!(e.to_string().contains("trailing"), "{e}");
    }

    #[test]
    fn limits_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::generate().unwrap();
        let keys = TrustedKeys::new(vec![key.public()]);
        let (b, _) = make(dir.path(), Some(&key));
        let tiny = BundleLimits { max_unpacked: 1024, ..Default::default() };
        let e = read_bundle(&b, &tiny, SignaturePolicy::Require(&keys), &mut Discard).unwrap_err();
        assert!(matches!(e, BundleError::TooLarge(_)), "{e}");
        let tiny = BundleLimits { max_compressed: 10, ..Default::default() };
        assert!(matches!(read_bundle(&b, &tiny, SignaturePolicy::Require(&keys), &mut Discard), Err(BundleError::TooLarge(_))));
    }
}
