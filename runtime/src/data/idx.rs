//! The IDX file format of MNIST and Fashion-MNIST, read from gzip or raw files.
//!
//! An IDX file is a 4-byte magic (`0x00 0x00`, a type code, the rank), the rank's
//! dimensions as big-endian `u32`, then the elements in row-major order. Fashion-MNIST
//! only uses the unsigned-byte type (`0x08`), so that is the only type accepted. A file
//! whose first two bytes are the gzip magic (`0x1f 0x8b`) is decompressed on the fly; the
//! IDX magic starts with `0x00`, so the two can never be confused. As `gunzip` does, a
//! file of several gzip members decompresses to their concatenation; bytes after the last
//! member that are not another member are a corrupt stream, not silently ignored.
//!
//! The reader trusts nothing: the element count a header claims is capped at
//! [`MAX_ELEMENTS`] before anything is allocated, the data buffer only ever grows with
//! bytes that really arrive, and every malformed input becomes a [`DataError`].

use std::fs;
use std::io::{self, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use super::DataError;

/// The most elements an IDX header may claim (2^28, i.e. 256 MiB of bytes): over four
/// times the 47 million pixels of the Fashion-MNIST training set, far below anything that
/// would exhaust memory.
pub const MAX_ELEMENTS: usize = 1 << 28;

/// The gzip magic; a file starting with it is decompressed before parsing.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The IDX type code for unsigned bytes.
const TYPE_U8: u8 = 0x08;

/// An unsigned-byte array read from an IDX file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    dims: Vec<usize>,
    data: Vec<u8>,
}

impl IdxArray {
    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// The elements in row-major order; there are exactly the product of [`Self::dims`].
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Consumes the array and returns its elements.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }
}

/// Reads the IDX file at `path` (gzip or raw), which must hold an unsigned-byte array of
/// rank `ndims`.
pub fn read_idx(path: &Path, ndims: usize) -> Result<IdxArray, DataError> {
    let bytes = fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_idx(&bytes, path, ndims)
}

/// Parses the bytes of an IDX file (gzip or raw) that must hold an unsigned-byte array of
/// rank `ndims`; `path` only names the file in errors.
pub fn parse_idx(bytes: &[u8], path: &Path, ndims: usize) -> Result<IdxArray, DataError> {
    if bytes.starts_with(&GZIP_MAGIC) {
        let mut decoder = MultiGzDecoder::new(bytes);
        parse_stream(&mut decoder, path, ndims, Source::Gzip)
    } else {
        let mut reader = bytes;
        parse_stream(&mut reader, path, ndims, Source::Raw)
    }
}

/// Where the parsed bytes come from, which decides how a read error is reported.
#[derive(Clone, Copy)]
enum Source {
    /// A gzip stream: a read error means the compressed data is corrupt.
    Gzip,
    /// Bytes already in memory.
    Raw,
}

fn parse_stream(
    reader: &mut dyn Read,
    path: &Path,
    ndims: usize,
    source: Source,
) -> Result<IdxArray, DataError> {
    let read_error = |err: io::Error| match source {
        Source::Gzip => DataError::CorruptGzip {
            path: path.to_path_buf(),
            source: err,
        },
        Source::Raw => DataError::Io {
            path: path.to_path_buf(),
            source: err,
        },
    };

    let mut magic = [0u8; 4];
    let got = read_up_to(reader, &mut magic).map_err(read_error)?;
    if got < magic.len() {
        return Err(DataError::TruncatedHeader {
            path: path.to_path_buf(),
            expected: magic.len(),
            got,
        });
    }
    if magic[0] != 0 || magic[1] != 0 {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            found: [magic[0], magic[1]],
        });
    }
    if magic[2] != TYPE_U8 {
        return Err(DataError::UnsupportedType {
            path: path.to_path_buf(),
            code: magic[2],
        });
    }
    let rank = usize::from(magic[3]);
    if rank != ndims {
        return Err(DataError::WrongDims {
            path: path.to_path_buf(),
            expected: ndims,
            found: rank,
        });
    }

    // The rank is at most 255, so the dimension bytes are at most 1020: a fixed buffer.
    let mut dim_bytes = [0u8; 4 * 255];
    let dim_bytes = &mut dim_bytes[..4 * rank];
    let got = read_up_to(reader, dim_bytes).map_err(read_error)?;
    if got < dim_bytes.len() {
        return Err(DataError::TruncatedHeader {
            path: path.to_path_buf(),
            expected: magic.len() + dim_bytes.len(),
            got: magic.len() + got,
        });
    }
    let raw_dims: Vec<u32> = dim_bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();

    // Refuse an absurd claim before allocating anything for it; u64 arithmetic with
    // overflow checks means no product of 255 u32 dimensions can wrap around the cap.
    let count = raw_dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d)))
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n <= MAX_ELEMENTS);
    let Some(count) = count else {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            dims: raw_dims,
            limit: MAX_ELEMENTS,
        });
    };

    // `take` bounds the read, and `read_to_end` grows the buffer only as bytes arrive, so
    // a header that lies about its size cannot make us allocate what the file lacks.
    let mut data = Vec::new();
    reader
        .take(count as u64)
        .read_to_end(&mut data)
        .map_err(read_error)?;
    if data.len() < count {
        return Err(DataError::TruncatedData {
            path: path.to_path_buf(),
            expected: count,
            got: data.len(),
        });
    }
    let extra = io::copy(reader, &mut io::sink()).map_err(read_error)?;
    if extra > 0 {
        return Err(DataError::TrailingBytes {
            path: path.to_path_buf(),
            expected: count,
            extra,
        });
    }

    Ok(IdxArray {
        dims: raw_dims.iter().map(|&d| d as usize).collect(),
        data,
    })
}

/// Reads until `buf` is full or the stream ends, returning how many bytes were read.
fn read_up_to(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testdir::{TestDir, gzip, idx_bytes};
    use proptest::prelude::*;

    fn parse_err(bytes: &[u8], ndims: usize) -> String {
        match parse_idx(bytes, Path::new("x.idx"), ndims) {
            Ok(array) => panic!("expected an error, parsed {:?}", array.dims()),
            Err(err) => err.to_string(),
        }
    }

    /// A well-formed file parses to its dimensions and bytes, raw and gzipped alike.
    #[test]
    fn parses_raw_and_gzip() {
        let bytes = idx_bytes(TYPE_U8, &[2, 3], &[1, 2, 3, 4, 5, 6]);
        for input in [bytes.clone(), gzip(&bytes)] {
            let array = parse_idx(&input, Path::new("x.idx"), 2).expect("valid file");
            assert_eq!(array.dims(), &[2, 3]);
            assert_eq!(array.data(), &[1, 2, 3, 4, 5, 6]);
        }
    }

    /// A file on disk is read and parsed; a missing one is an I/O error naming it.
    #[test]
    fn reads_files_and_names_missing_ones() {
        let dir = TestDir::new("idx_read");
        let path = dir.path().join("a.idx.gz");
        fs::write(&path, gzip(&idx_bytes(TYPE_U8, &[3], &[7, 8, 9]))).expect("write");
        assert_eq!(read_idx(&path, 1).expect("valid").data(), &[7, 8, 9]);

        let missing = dir.path().join("missing.idx");
        let err = read_idx(&missing, 1).expect_err("missing file").to_string();
        assert!(
            err.starts_with(&format!("cannot read {}: ", missing.display())),
            "{err}"
        );
    }

    /// Each malformed header or body gets its own exact message.
    #[test]
    fn error_messages() {
        assert_eq!(
            parse_err(&[0, 0, 8], 1),
            "x.idx: truncated header: expected 4 bytes, got 3"
        );
        assert_eq!(
            parse_err(&[0x12, 0x34, 8, 1, 0, 0, 0, 0], 1),
            "x.idx: bad magic 0x12 0x34, an IDX file starts with 0x00 0x00"
        );
        assert_eq!(
            parse_err(&idx_bytes(0x0d, &[1], &[0, 0, 0, 0]), 1),
            "x.idx: unsupported IDX type code 0x0d, only 0x08 (unsigned byte) is supported"
        );
        assert_eq!(
            parse_err(&idx_bytes(TYPE_U8, &[1, 1], &[0]), 3),
            "x.idx: expected 3 dimensions, found 2"
        );
        assert_eq!(
            parse_err(&[0, 0, 8, 3, 0, 0, 0, 1, 0, 0], 3),
            "x.idx: truncated header: expected 16 bytes, got 10"
        );
        assert_eq!(
            parse_err(&idx_bytes(TYPE_U8, &[2, 5], &[1, 2, 3]), 2),
            "x.idx: truncated data: expected 10 bytes, got 3"
        );
        assert_eq!(
            parse_err(&idx_bytes(TYPE_U8, &[2], &[1, 2, 3, 4]), 1),
            "x.idx: 2 trailing bytes after the 2 data bytes the header declares"
        );
    }

    /// Bytes that start like gzip but do not decompress are reported as corrupt gzip.
    #[test]
    fn corrupt_gzip() {
        let mut bytes = gzip(&idx_bytes(TYPE_U8, &[4], &[1, 2, 3, 4]));
        // Damage the CRC-32 in the trailer: the payload still inflates, so only the
        // checksum catches it, after the IDX parse itself has succeeded.
        let n = bytes.len();
        bytes[n - 8] ^= 0xff;
        let err = parse_err(&bytes, 1);
        assert!(err.starts_with("x.idx: corrupt gzip stream: "), "{err}");

        // A gzip stream cut short is corrupt too, not silently short data.
        let whole = gzip(&idx_bytes(TYPE_U8, &[64], &[9; 64]));
        let err = parse_err(&whole[..whole.len() - 6], 1);
        assert!(err.starts_with("x.idx: corrupt gzip stream: "), "{err}");
    }

    /// A header claiming 10^12 elements is refused before anything is allocated; so is
    /// one whose dimensions overflow 64 bits.
    #[test]
    fn refuses_huge_headers() {
        let header = idx_bytes(TYPE_U8, &[1_000_000, 1_000_000], &[]);
        assert_eq!(
            parse_err(&header, 2),
            "x.idx: header claims dimensions [1000000, 1000000], \
             more than the limit of 268435456 elements"
        );
        assert!(parse_err(&gzip(&header), 2).contains("more than the limit"));

        let overflow = idx_bytes(TYPE_U8, &[u32::MAX; 3], &[]);
        assert!(parse_err(&overflow, 3).contains("more than the limit"));

        // Just under the cap the claim is accepted, and the missing bytes are reported
        // without having been allocated.
        let just_under = idx_bytes(TYPE_U8, &[1 << 14, 1 << 14], &[]);
        assert_eq!(
            parse_err(&just_under, 2),
            "x.idx: truncated data: expected 268435456 bytes, got 0"
        );
    }

    /// A file of two gzip members is their concatenation (here: two bytes too many); bytes
    /// after the gzip stream are corrupt data, not silently dropped.
    #[test]
    fn gzip_members_and_trailing_garbage() {
        let head = gzip(&idx_bytes(TYPE_U8, &[2], &[1, 2]));
        let two = [head.clone(), gzip(&[3, 4])].concat();
        assert_eq!(
            parse_err(&two, 1),
            "x.idx: 2 trailing bytes after the 2 data bytes the header declares"
        );
        let split = [gzip(&idx_bytes(TYPE_U8, &[2], &[1])), gzip(&[2])].concat();
        assert_eq!(
            parse_idx(&split, Path::new("x"), 1).expect("valid").data(),
            &[1, 2]
        );
        let garbage = [head, b"garbage".to_vec()].concat();
        assert!(parse_err(&garbage, 1).starts_with("x.idx: corrupt gzip stream: "));
    }

    /// A zero dimension is a valid, empty array.
    #[test]
    fn empty_array() {
        let array = parse_idx(&idx_bytes(TYPE_U8, &[0, 28, 28], &[]), Path::new("x"), 3)
            .expect("empty array");
        assert_eq!(array.dims(), &[0, 28, 28]);
        assert!(array.data().is_empty());
    }

    proptest! {
        /// Arbitrary bytes, raw or gzip-wrapped, give Ok or Err and never panic.
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            ndims in 0usize..4,
        ) {
            let _ = parse_idx(&bytes, Path::new("fuzz"), ndims);
            let _ = parse_idx(&gzip(&bytes), Path::new("fuzz"), ndims);
        }

        /// Arbitrary bodies behind a valid magic reach the dimension and size checks.
        #[test]
        fn arbitrary_bodies_never_panic(
            code in prop_oneof![Just(TYPE_U8), any::<u8>()],
            rank in 0u8..4,
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut bytes = vec![0, 0, code, rank];
            bytes.extend_from_slice(&body);
            let result = parse_idx(&bytes, Path::new("fuzz"), usize::from(rank));
            if let Ok(array) = &result {
                let count: usize = array.dims().iter().product();
                prop_assert_eq!(array.data().len(), count);
            }
            let _ = parse_idx(&gzip(&bytes), Path::new("fuzz"), usize::from(rank));
        }
    }
}
