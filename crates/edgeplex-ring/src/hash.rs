//! The payload fingerprint that `edgeplex ring cat --hash`, `edgeplex export` and the reader SDKs
//! print, so that readers in different languages can be checked against each other.

/// FNV-1a, 64-bit, of `bytes`: a cheap, dependency-free fingerprint (not a cryptographic hash).
///
/// ```
/// assert_eq!(edgeplex_ring::fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
/// assert_eq!(edgeplex_ring::fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
/// ```
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
